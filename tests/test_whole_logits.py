"""training.loss_head: SFT's steps scored from the whole logits equal TRL's fused head's, and where each is chosen."""

from dataclasses import replace

import pytest

from tuiwiz.errors import UserError
from tuiwiz.plan.hardware import probe
from tuiwiz.plan.loss_head import loss_head, settle
from tuiwiz.plan.memory import Plan, estimate
from tuiwiz.plan.modelinfo import model_from_config
from tuiwiz.profile.schema import Profile

from .support.configs import load_config
from .support.runs import build_trainer

GiB = 2**30


def _one_step(trainer, batch: dict, compute_loss, num_items):
    """(loss, each trainable parameter's gradient, the entropy and accuracy it logged) of one training step."""
    model = trainer.model.train()
    model.zero_grad()
    loss = compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = trainer._metrics["train"]
    return loss.item(), grads, metrics["entropy"][-1], metrics["mean_token_accuracy"][-1]


@pytest.mark.parametrize(("base", "packing"), [("quickstart.yaml", True), ("quickstart.yaml", False),
                                               ("demo-prompt-tuning.yaml", False), ("demo-prefix-tuning.yaml", False)])
def test_a_whole_logits_step_equals_the_fused_heads(tmp_path, demo_built, base, packing):
    """The same batch, the same weights: the loss, every gradient, and the logged entropy and token accuracy agree
    between TRL's fused head and the whole logits, with and without gradient accumulation's token count. Packed
    rows restart their examples; prompt tuning's logits carry its virtual tokens first."""
    import torch
    from trl import SFTTrainer

    from tuiwiz.train.whole_logits import WholeLogitsSFTTrainer

    overrides = {"method__lora_dropout": 0.0} if base == "quickstart.yaml" else {}
    trainer, _ = build_trainer(tmp_path, base, data__packing=packing, data__max_length=96,
                               training__loss_head="whole", **overrides)
    assert type(trainer) is WholeLogitsSFTTrainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < trained < batch["labels"].numel() - 2  # some positions are masked (prompts, padding or joins)
    torch.manual_seed(0)
    for num_items in (None, 3 * trained):
        fused = _one_step(trainer, batch, lambda *a, **k: SFTTrainer.compute_loss(trainer, *a, **k), num_items)
        whole = _one_step(trainer, batch, trainer.compute_loss, num_items)
        assert whole[0] == pytest.approx(fused[0], rel=1e-5)
        assert whole[1].keys() == fused[1].keys() and whole[1]
        for name, grad in whole[1].items():
            torch.testing.assert_close(grad, fused[1][name], rtol=1e-4, atol=1e-6, msg=name)
        assert whole[2] == pytest.approx(fused[2], rel=1e-4) and whole[3] == pytest.approx(fused[3])
    assert trainer._metrics["train"]["num_tokens"] == [trainer._total_train_tokens] and trainer._total_train_tokens


def test_evaluation_keeps_the_fused_head(tmp_path, demo_built, monkeypatch):
    """Out of training mode the step's path hands over to TRL's own compute_loss (its evaluation batch is not the
    step the estimate bounds)."""
    from trl import SFTTrainer

    trainer, _ = build_trainer(tmp_path, "quickstart.yaml", training__loss_head="whole")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    calls = []
    original = SFTTrainer.compute_loss
    monkeypatch.setattr(SFTTrainer, "compute_loss", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    trainer.model.eval()
    trainer.compute_loss(trainer.model, dict(batch))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    assert calls == [1]


def test_the_runner_settles_auto_by_the_ram_it_finds(tmp_path, demo_built, monkeypatch, capsys):
    import psutil
    from trl import SFTTrainer

    from tuiwiz.train.whole_logits import WholeLogitsSFTTrainer

    trainer, _ = build_trainer(tmp_path / "roomy", "quickstart.yaml")  # the demo's step needs far less than free
    assert type(trainer) is WholeLogitsSFTTrainer
    assert "scored from the model's whole logits" in capsys.readouterr().err
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=64 * 2**20))
    trainer, _ = build_trainer(tmp_path / "tight", "quickstart.yaml")
    assert type(trainer) is SFTTrainer
    assert "through TRL's fused LM head: with the whole logits the step would need" in capsys.readouterr().err
    trainer, _ = build_trainer(tmp_path / "stated", "quickstart.yaml", training__loss_head="whole")
    assert type(trainer) is WholeLogitsSFTTrainer  # a stated value is kept, whatever the RAM
    assert "(training.loss_head: whole)" in capsys.readouterr().err


def _plan(task="sft", device="cpu", **fields) -> tuple:
    info = model_from_config(load_config("llama3-8b"), "llama3-8b")
    from tuiwiz.plan.recommend import with_task

    profile = with_task(Profile.model_validate({"method": {"type": "lora"}}), task)
    return info, replace(Plan.from_profile(profile, info, device=device), **fields)


def test_auto_takes_the_whole_logits_on_the_cpu_where_the_step_fits():
    info, plan = _plan(seq_len=256, micro_batch=1)
    whole = estimate(info, replace(plan, fused_loss=False)).total
    fused = estimate(info, plan).total
    assert whole > fused  # 128,256 columns of logits
    assert plan.fused_loss  # Plan.from_profile: auto is the lighter head until settled
    settled, head = settle(plan, "auto", info, whole)
    assert head.whole and not settled.fused_loss and "faster than TRL's fused head" in head.reason
    settled, head = settle(plan, "auto", info, whole - 1)
    assert not head.whole and settled.fused_loss and "would need" in head.reason
    assert not loss_head("auto", info, plan, None).whole  # unknown memory: the lighter head


@pytest.mark.parametrize(("task", "device", "processes", "words"), [
    ("sft", "cuda", 1, "on a GPU"), ("pretrain", "cuda", 1, "on a GPU"), ("sft", "cpu", 2, "2 processes"),
    ("dpo", "cpu", 1, "task dpo scores its own way"), ("grpo", "cpu", 1, "task grpo"),
])
def test_auto_keeps_the_fused_head_elsewhere(task, device, processes, words):
    info, plan = _plan(task, device)
    head = loss_head("auto", info, plan, 10**15, processes)
    assert not head.whole and words in head.reason


def test_a_stated_head_is_kept_and_the_plan_reads_it():
    info, plan = _plan()
    assert loss_head("whole", info, plan, 1).whole and not loss_head("fused", info, plan, 10**15).whole
    assert loss_head("whole", info, replace(plan, device="cuda"), None).whole
    whole = Profile.model_validate({"training": {"loss_head": "whole"}})
    assert not Plan.from_profile(whole, info, device="cuda").fused_loss


def test_the_profile_refuses_a_loss_head_for_a_task_that_scores_its_own_way():
    from tuiwiz.plan.recommend import with_task
    from tuiwiz.profile.io import parse_profile_text

    text = "task: dpo\ntraining:\n  loss_head: whole\n"
    with pytest.raises(UserError) as info:
        parse_profile_text(text, "p.yaml")
    error = info.value
    assert error.field == "training.loss_head" and error.line == 3 and "task sft or pretrain" in error.message
    assert parse_profile_text("task: pretrain\ntraining:\n  loss_head: fused\n").training.loss_head == "fused"
    switched = with_task(Profile.model_validate({"training": {"loss_head": "whole"}}), "dpo")
    assert Profile.model_validate(switched.model_dump()).training.loss_head == "auto"


def test_the_recommender_takes_the_whole_logits_on_a_cpu_where_they_fit_and_says_why():
    from tuiwiz.data.stats import DataStats
    from tuiwiz.plan.recommend import recommend

    machine = probe(snapshot="cpu-only")
    toy = model_from_config(load_config("qwen2.5-0.5b"), "qwen2.5-0.5b")
    stats = DataStats.from_lengths([30 + i % 200 for i in range(500)])
    rec = recommend(machine, toy, stats)
    assert rec.best.plan.device == "cpu"
    lora = rec.option("cpu-lora")
    assert not lora.plan.fused_loss and "whole logits" in lora.reason and lora.fits
    assert lora.estimate.total == estimate(toy, lora.plan).total
    fused = estimate(toy, replace(lora.plan, fused_loss=True)).total
    assert fused < lora.estimate.total
    between = replace(machine, ram_available_mb=(fused + lora.estimate.total) / 2 / 2**20 / 0.85)  # RAM_HEADROOM
    lora = recommend(between, toy, stats).option("cpu-lora")
    assert lora.plan.fused_loss and "whole logits" not in lora.reason and lora.fits
    assert recommend(machine, toy, stats, task="dpo").option("cpu-lora").plan.fused_loss  # scores its own way
