"""AdaLoRA's schedule spans the optimizer steps the Trainer makes, not the count made before the rows existed."""

import pytest
import yaml
from transformers import TrainerControl, TrainerState

from tuiwiz.errors import UserError
from tuiwiz.run.rundir import RunDir

ADALORA = {"type": "adalora", "init_r": 8, "target_r": 4, "tinit": 2, "tfinal": 2, "deltaT": 1}


def _set_up(tmp_path, **sections):
    from tuiwiz.profile.io import load_profile
    from tuiwiz.train.callbacks import AdaLoraCallback
    from tuiwiz.train.recipes import recipe_for

    data = {"version": 1, "model": {"name_or_path": "demo"}, "method": ADALORA,
            "training": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "learning_rate": 1e-3},
            "output": {"runs_dir": str(tmp_path / "runs"), "report_to": []}, **sections}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    profile = load_profile(path).profile
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    trainer = recipe_for(profile.task).set_up(profile, run, []).trainer
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AdaLoraCallback))
    return trainer, callback


def _begin(trainer, callback) -> int:
    """The Trainer's own step count for the run, handed to the callback as train() does."""
    steps = trainer.args.max_steps if trainer.args.max_steps > 0 else len(trainer.get_train_dataloader()) * int(
        trainer.args.num_train_epochs)  # one process, no accumulation
    callback.on_train_begin(trainer.args, TrainerState(max_steps=steps), TrainerControl())
    return steps


@pytest.mark.parametrize("sections", [
    {"task": "kto", "data": {"path": "demo:preference", "max_length": 128}},  # two completions a pair
    {"task": "sft", "data": {"path": "demo:alpaca", "max_length": 256, "packing": True},  # fewer rows than records
     "training": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3}},
], ids=["kto-pairs", "sft-packed"])
def test_the_schedule_spans_the_trainers_steps(tmp_path, demo_built, sections):
    trainer, callback = _set_up(tmp_path, **sections)
    tuner = trainer.model.base_model
    config = tuner.peft_config[tuner.trainable_adapter_name]
    before = config.total_step  # counted from the data's records
    steps = _begin(trainer, callback)
    assert steps != before  # the case this is for: the records' count was wrong
    assert config.total_step == steps and tuner.rankallocator.peft_config.total_step == steps
    # the budget falls to target_r's by total_step - tfinal: the rank allocator's schedule reads it
    assert tuner.rankallocator.budget_schedule(steps - config.tfinal)[0] == tuner.rankallocator.target_bgt


def test_too_few_steps_for_tinit_and_tfinal_is_said_with_the_field(tmp_path, demo_built):
    trainer, callback = _set_up(tmp_path, task="sft", data={"path": "demo:alpaca", "max_length": 256,
                                                            "packing": True})
    callback.model.base_model.peft_config["default"].tfinal = 10_000
    with pytest.raises(UserError) as info:
        callback.on_train_begin(trainer.args, TrainerState(max_steps=50), TrainerControl())
    assert info.value.field == "method.tinit" and "below the run's 50 optimizer steps" in info.value.message
