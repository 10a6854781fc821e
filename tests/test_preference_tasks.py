"""DPO, KTO, ORPO and SimPO on the demo model: the real CLI and runner, real TRL.

DPO after an SFT run (model.start_from) moves the greedy answers to held-out questions toward the chosen
style; under LoRA its reference is the same weights with the adapter disabled (one model load), under full
fine-tuning a second, frozen copy. KTO, ORPO and SimPO train from their shipped profiles' stages and log their
own metrics; ORPO and SimPO count the tokens they see, across a resume. Bad preference data is
tests/test_preference_data.py's.
"""

import json
from pathlib import Path

import pytest
import yaml

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, read_state
from tuiwiz.tasks import TASKS

from .support import PROFILES
from .support.processes import run_cli
from .support.runs import generate, only_run

pytestmark = pytest.mark.slow

STYLE = "Sure!"  # how every chosen reply of the demo's preference data begins (tuiwiz/demo/preference.py)


def held_out_questions() -> list[str]:
    from tuiwiz.demo.preference import records

    return [r["prompt"] for r in records("preference-heldout")]


def styled_share(output, questions: list[str]) -> tuple[int, list[str]]:
    """How many greedy answers of a run's output (an adapter on its base) begin with the chosen style."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoPeftModelForCausalLM.from_pretrained(output).eval()
    answers = []
    for question in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return sum(a.startswith(STYLE) for a in answers), answers


def events_of(run: RunDir, kind: str) -> list[dict]:
    return [e for e in read_events(run.events) if e["type"] == kind]


def test_dpo_after_sft_moves_held_out_answers_to_the_chosen_style(tmp_path, trained_run):
    sft = trained_run("lora")  # LoRA SFT of the demo on demo:alpaca (tests/support/trained_runs.py)
    profile = tmp_path / "dpo.yaml"
    profile.write_text(yaml.safe_dump({
        "task": "dpo", "model": {"name_or_path": "demo", "start_from": str(sft.path)},
        "data": {"path": "demo:preference", "validation_path": "demo:preference-heldout", "max_length": 128},
        "method": {"type": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0},
        "preference": {"beta": 0.02},
        "training": {"num_train_epochs": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                     "logging_steps": 5, "eval_steps": 10, "save_steps": 1000},
        "output": {"runs_dir": str(tmp_path / "runs"), "report_to": []},
    }))
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert read_state(run).status == "completed"

    # the reward margin on held-out pairs grows over the run, and the rewards reach the event log
    margins = [e["eval_rewards/margins"] for e in events_of(run, "eval")]
    assert len(margins) >= 4 and margins[0] < margins[-1], margins
    logged = [e["task_metrics"] for e in events_of(run, "log")]
    assert all(set(TASKS["dpo"].metrics) <= set(m) for m in logged), logged[0]
    # step 1: the policy is its reference (scored before training, in other batches: equal within float error)
    assert logged[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert "the reference scores the data once before training" in run.log.read_text()  # 2 epochs: auto on

    # the output is an adapter on the run's start-model (the SFT adapter merged in), and it generates
    start_model = run.path / "start-model"
    assert json.loads((run.output / "tuiwiz.json").read_text())["base_model"] == str(start_model)
    adapter = json.loads((run.output / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(start_model)
    generate(run.output)

    questions = held_out_questions()
    before, answers_before = styled_share(sft.output, questions)
    after, answers_after = styled_share(run.output, questions)
    print(f"held-out answers beginning {STYLE!r}: after SFT {before}/{len(questions)}, after DPO "
          f"{after}/{len(questions)}")
    assert after >= len(questions) // 2 and after > before, (answers_before, answers_after)


def set_up_in_process(tmp_path, method: dict, **preference):
    """The DPO recipe's setup for a small profile, counting every model loaded from disk meanwhile."""
    from transformers import PreTrainedModel

    from tuiwiz.profile.schema import Profile
    from tuiwiz.train.recipes import recipe_for

    profile = Profile(task="dpo", data={"path": "demo:preference", "max_length": 64, "limit": 8}, method=method,
                      preference=preference, training={"max_steps": 1}, output={"report_to": []})
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    loads = []
    original = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return original(cls, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
        setup = recipe_for("dpo").set_up(profile, run, [])
    return setup.trainer, loads


def test_dpo_reference_under_lora_is_the_base_with_the_adapter_disabled(tmp_path, demo_built):
    from peft import PeftModel

    trainer, loads = set_up_in_process(tmp_path, {"type": "lora", "lora_dropout": 0.0})
    assert loads == ["LlamaForCausalLM"]  # one model in memory
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"]  # no copy of the adapter as a "ref" adapter either

    # the reference TRL computes (adapter disabled) is the base's own output, while the policy has moved
    import torch

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad(), trainer.model.disable_adapter():
        disabled = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = trainer.model.get_base_model()(input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).logits
    assert torch.equal(disabled, base)
    ref_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    trainer.train()
    assert torch.allclose(trainer.compute_ref_log_probs(trainer.model, batch)[0], ref_chosen)
    with torch.no_grad():
        moved = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(moved, base)


def test_dpo_reference_under_full_fine_tuning_is_a_second_frozen_copy(tmp_path, demo_built):
    import torch

    trainer, loads = set_up_in_process(tmp_path / "plain", {"type": "full"}, precompute_ref_log_probs=False)
    assert loads == ["LlamaForCausalLM", "LlamaForCausalLM"]
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in trainer.model.parameters())
    shared = {id(p) for p in trainer.model.parameters()} & {id(p) for p in reference.parameters()}
    assert not shared
    for (name, mine), theirs in zip(trainer.model.named_parameters(), reference.parameters()):
        assert torch.equal(mine, theirs), name  # loaded from the same folder

    # scored once before training instead: no reference stays in memory
    import trl.trainer.dpo_trainer

    from tuiwiz.train.recipes.dpo import unused_weight_hash

    scored_on = []
    precompute = trl.trainer.dpo_trainer.DPOTrainer._precompute_ref_logps

    def spying(self, dataset, name, batch_size):
        scored_on.append(dataset.cache_files)
        return precompute(self, dataset, name, batch_size)

    import trl.trainer.kto_trainer
    import trl.trainer.utils

    for folder, setting in (("precomputed", {"precompute_ref_log_probs": True}), ("auto", {})):
        with pytest.MonkeyPatch.context() as patch:
            for module in (trl.trainer.dpo_trainer, trl.trainer.kto_trainer):  # TRL's own, each time
                patch.setattr(module, "hash_module", trl.trainer.utils.hash_module)
            patch.setattr(trl.trainer.dpo_trainer.DPOTrainer, "_precompute_ref_logps", spying)
            trainer, loads = set_up_in_process(tmp_path / folder, {"type": "full"}, **setting)
            hashed_with = trl.trainer.dpo_trainer.hash_module
        assert loads == ["LlamaForCausalLM"] and trainer.ref_model is None, folder
        assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
        # TRL's weight hash would name a cache file only for data on disk: tuiwiz's is in memory, so it is skipped
        assert hashed_with is unused_weight_hash
        assert scored_on and all(files == [] for files in scored_on), scored_on
        scored_on.clear()


def stage_profile(tmp_path, task: str, **training) -> Path:
    """The shipped demo-TASK.yaml's TASK stage as a profile of its own, straight from the demo model (the
    pipeline's SFT stage left out: tests/test_pipeline.py chains stages), with some training settings changed."""
    data = yaml.safe_load((PROFILES / f"demo-{task}.yaml").read_text())
    stages = data.pop("stages", None)
    if stages:
        stage = next(s for s in stages if s["task"] == task)
        data.update({key: value for key, value in stage.items() if key != "name"})
    data["training"] = {**data["training"], **training}
    data["output"] = {"runs_dir": str(tmp_path / "runs"), "report_to": []}
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("task", ["kto", "orpo", "simpo"])
def test_kto_orpo_simpo_train_from_their_profiles_log_their_metrics_and_reload(tmp_path, task):
    profile = stage_profile(tmp_path, task, max_steps=8, eval_steps=4, logging_steps=2)
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    log = run.log.read_text()
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert read_state(run).status == "completed"
    start = events_of(run, "run_start")[0]
    assert start["task"] == task and start["method"] == "lora"
    metrics = TASKS[task].metrics
    logs = events_of(run, "log")
    logged = [e["task_metrics"] for e in logs]
    assert len(logged) >= 4 and all(set(metrics) <= set(m) for m in logged), logged
    evals = events_of(run, "eval")
    assert evals and all({f"eval_{name}" for name in metrics} <= set(e) for e in evals), evals[-1]
    end = events_of(run, "run_end")[-1]
    assert end["status"] == "completed" and end["metrics"]["tokens_seen"] > 0
    tokens = [e["tokens_seen"] for e in logs]
    assert tokens == sorted(tokens) and tokens[-1] == end["metrics"]["tokens_seen"], tokens
    assert "Tried to track the number of tokens seen" not in log  # the Trainer's own count, at every step
    generate(run.output)


@pytest.mark.parametrize("task", ["orpo", "simpo"])
def test_orpo_and_simpo_count_every_chosen_and_rejected_token_seen_across_a_resume(tmp_path, demo_built, task):
    """Their batches have no input_ids, which is what the Trainer counts: tuiwiz counts the chosen and
    rejected sequences (prompt included, padding not). One epoch sees every row once, in any order."""
    from tuiwiz.profile.schema import Profile
    from tuiwiz.train.recipes import recipe_for

    def set_up(name: str):
        profile = Profile(task=task, data={"path": "demo:preference", "max_length": 64, "limit": 8},
                          method={"type": "lora", "lora_dropout": 0.0},
                          training={"num_train_epochs": 1, "per_device_train_batch_size": 4, "save_steps": 1,
                                    "logging_steps": 1},
                          output={"report_to": []})
        run = RunDir(tmp_path / name)
        run.path.mkdir(parents=True)
        return recipe_for(task).set_up(profile, run, []).trainer, run

    trainer, run = set_up("whole")
    rows = trainer.train_dataset
    every_token = sum(len(row["chosen_input_ids"]) + len(row["rejected_input_ids"]) for row in rows)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.state.num_input_tokens_seen == every_token
    logged = [e["num_input_tokens_seen"] for e in trainer.state.log_history if "loss" in e]
    assert logged[-1] == every_token and 0 < logged[0] < every_token, logged  # every log carries the count

    # resumed after the first step: the count goes on from the checkpoint's, to the same total
    resumed, _ = set_up("resumed")
    resumed.train(resume_from_checkpoint=str(run.checkpoints / "checkpoint-1"))
    assert resumed.state.num_input_tokens_seen == every_token
