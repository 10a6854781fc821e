"""Fused LoRA layers (tuiwiz/train/fused_lora.py): the same step as peft's, and peft's own path wherever the case
is not the plain one."""

import pytest

from .support.runs import build_trainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_model(demo_built, monkeypatch, **config):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuiwiz.demo.build import demo_model_dir

    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(demo_built))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, **config))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: the adapter's share would vanish from every comparison
            param.data.normal_(0, 0.05)
    return model


def _step(model, batch):
    """(loss, logits, each trainable parameter's gradient) of one forward and backward."""
    model.zero_grad()
    out = model(**batch, use_cache=False)
    out.loss.backward()
    return (out.loss.detach(), out.logits.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})


def _unfuse(model) -> None:
    from peft.tuners.lora import Linear

    for module in model.modules():
        if isinstance(module, Linear) and "forward" in vars(module):
            del module.forward  # back to peft's class method


def _assert_same(a, b):
    import torch

    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-5)
    assert a[2].keys() == b[2].keys() and a[2]
    for name, grad in a[2].items():
        torch.testing.assert_close(grad, b[2][name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_runner_fuses_lora_and_its_step_equals_peft(tmp_path, demo_built):
    """The runner's own trainer (packed rows): every LoRA layer fused; one step's loss, logits and every
    adapter gradient equal peft's own forward on the same batch and weights."""
    import torch

    from tuiwiz.train.fused_lora import LoraLinear

    trainer, _ = build_trainer(tmp_path, "quickstart.yaml", data__packing=True, data__max_length=96)
    model = trainer.model.train()
    layers = [m for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")]
    assert layers and all("forward" in vars(m) for m in layers)  # every one fused
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")}
    calls = []
    original = LoraLinear.apply
    LoraLinear.apply = lambda *a: calls.append(1) or original(*a)
    try:
        fused = _step(model, batch)
    finally:
        LoraLinear.apply = original
    assert len(calls) == len(layers)  # the fused function ran for each layer, once
    _unfuse(model)
    _assert_same(fused, _step(model, batch))


def test_what_is_not_the_plain_case_runs_peft(demo_built, monkeypatch):
    """Adapters disabled (DPO's reference pass), merged, or under autocast: the
    same outputs as peft's own forward. DoRA layers are not fused at all."""
    import torch

    from tuiwiz.train.fused_lora import fuse

    ids = torch.randint(5, 1000, (2, 24))
    batch = {"input_ids": ids, "labels": ids}
    model = _peft_model(demo_built, monkeypatch, lora_dropout=0.0)
    plain = _step(model, batch)
    assert fuse(model) == (28, 28)  # 4 layers x 7 targets
    _assert_same(_step(model, batch), plain)
    with torch.no_grad():
        fused_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            base_fused = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_fused = model(input_ids=ids).logits
        _unfuse(model)
        with model.disable_adapter():
            base_peft = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_peft = model(input_ids=ids).logits
    torch.testing.assert_close(base_fused, base_peft)
    assert not torch.allclose(base_fused, fused_logits)  # the adapter really was off
    torch.testing.assert_close(autocast_fused, autocast_peft)
    fuse(model)
    model.merge_adapter()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fused_logits, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()

    assert fuse(_peft_model(demo_built, monkeypatch, lora_dropout=0.0, use_dora=True)) == (0, 28)


def test_a_fused_layer_draws_peft_s_dropout_masks(demo_built, monkeypatch):
    """With LoRA dropout, the fused layer draws its mask as torch's dropout does: under the same seed a training
    step gives peft's loss and gradients exactly (the same masks), and in evaluation there is no dropout."""
    import torch

    from tuiwiz.train.fused_lora import fuse

    ids = torch.randint(5, 1000, (2, 24))
    batch = {"input_ids": ids, "labels": ids}
    model = _peft_model(demo_built, monkeypatch, lora_dropout=0.3).train()
    assert fuse(model) == (28, 28)
    torch.manual_seed(7)
    fused = _step(model, batch)
    torch.manual_seed(8)
    other_masks = _step(model, batch)
    assert not torch.allclose(fused[0], other_masks[0])  # the masks do change the step
    _unfuse(model)
    torch.manual_seed(7)
    _assert_same(fused, _step(model, batch))
    with torch.no_grad():
        model.eval()
        plain = model(input_ids=ids).logits
        fuse(model)
        torch.testing.assert_close(model(input_ids=ids).logits, plain)


@pytest.mark.parametrize("strategy,fused", [("single", True), ("zero3", False)])
def test_fuse_lora_leaves_zero3_to_peft(demo_built, monkeypatch, capsys, strategy, fused):
    """ZeRO-3 gathers each base layer's sharded weight in that layer's hooks, which the fused function would
    skip: there peft's forward stays. Elsewhere the run's log says how many layers were fused."""
    from tuiwiz.profile.schema import Profile
    from tuiwiz.train.modeling import fuse_lora

    model = _peft_model(demo_built, monkeypatch, lora_dropout=0.0)
    processes = 1 if strategy == "single" else 2
    profile = Profile.model_validate({"model": {"name_or_path": "demo"}, "method": {"type": "lora"},
                                      "distributed": {"strategy": strategy, "num_processes": processes}})
    fuse_lora(model, profile)
    said = capsys.readouterr().out
    assert any("forward" in vars(m) for m in model.modules()) is fused
    assert ("28 of 28 LoRA layers run as one fused function each" in said) is fused


def _stage_alone(tmp_path, base: str):
    """The runner's trainer for a shipped pipeline's last stage, run on its own from the demo model."""
    import yaml

    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.rundir import RunDir
    from tuiwiz.train.recipes import recipe_for

    from .support.runs import PROFILES

    data = yaml.safe_load((PROFILES / base).read_text())
    stage = data.pop("stages")[-1]
    stage.pop("name")
    data.update(stage)
    data["output"] = {"runs_dir": str(tmp_path / "runs")}
    path = tmp_path / "alone.yaml"
    path.write_text(yaml.safe_dump(data))
    profile = load_profile(path).profile
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    setup = recipe_for(profile.task).set_up(profile, run, [])
    return setup.trainer, setup


@pytest.mark.parametrize("base", ["demo-kto.yaml", "demo-orpo.yaml", "demo-reward.yaml", "demo-grpo.yaml",
                                  "demo-seq2seq.yaml"])
def test_every_task_trains_its_plain_lora_layers_fused(tmp_path, demo_built, base):
    """The tasks past SFT: where TRL puts the adapter on (KTO, through DPO's set-up) and where the runner does
    (the others), every LoRA layer of the model the trainer trains is fused."""
    pipeline = base in ("demo-kto.yaml", "demo-grpo.yaml")
    trainer, setup = _stage_alone(tmp_path, base) if pipeline else build_trainer(tmp_path, base)
    layers = [m for m in trainer.model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")]
    assert layers and all("forward" in vars(m) for m in layers)
    assert setup.model.params_trainable > 0
