"""The recommender packs (examples kept apart) where lengths vary enough that padded batches waste
work, and says by how much; not where lengths are even, for classification, or for prompt methods."""

from __future__ import annotations

import random
import re

from tuiwiz.data.stats import DataStats
from tuiwiz.plan.hardware import probe
from tuiwiz.plan.modelinfo import model_from_config
from tuiwiz.plan.recommend import PACKING_MIN_SAVING, recommend, to_profile

from .support.configs import load_config

rng = random.Random(0)
VARIED = DataStats.from_lengths([rng.randint(25, 400) for _ in range(1000)])  # an alpaca-like spread
EVEN = DataStats.from_lengths([400] * 1000)


def qwen():
    return model_from_config(load_config("qwen2.5-0.5b"), "Qwen/Qwen2.5-0.5B")


def test_varied_lengths_turn_isolated_packing_on_with_the_saving_said():
    rec = recommend(probe(snapshot="h100-80gb"), qwen(), VARIED, experts=True)
    best = rec.best
    assert best.packing and to_profile(best, "Qwen/Qwen2.5-0.5B", "train.jsonl").data.packing
    unpacked_batch = int(re.search(r"than shuffled batches of (\d+) padded", best.reason).group(1))
    work = VARIED.work(best.plan.seq_len, unpacked_batch)  # the saving is said against the unpacked batch
    assert work.packing_saves >= PACKING_MIN_SAVING
    assert f"{work.packing_saves:.0%} fewer tokens computed" in best.reason
    prompt = [o for o in rec.options if o.plan.method in ("prompt_tuning", "prefix_tuning", "p_tuning")]
    assert prompt and not any(o.packing for o in prompt)  # they add their tokens once per row


def test_even_lengths_and_classification_stay_unpacked():
    machine = probe(snapshot="h100-80gb")
    assert not any(o.packing for o in recommend(machine, qwen(), EVEN).options)
    assert not any(o.packing for o in recommend(machine, qwen(), VARIED, task="classification").options)
    assert not any(o.packing for o in recommend(machine, qwen(), DataStats.assumed(512)).options)


def test_work_counts_padding_and_packed_rows():
    stats = DataStats.from_lengths([10, 10, 10, 90])
    work = stats.work(max_length=100, micro_batch=4)
    assert (work.real, work.padded) == (120, 360)  # one batch of four, padded to 90
    assert (work.packed_rows, work.packed) == (2, 200)  # 90+10 in one row, 10+10 in another
    assert abs(work.packing_saves - (1 - 200 / 360)) < 1e-9


def test_the_data_step_says_what_packing_saves_for_sft_and_pretraining_only():
    from types import SimpleNamespace

    from tuiwiz.ui.screens.data import PADDING_BATCH, _packing_saves

    stats = SimpleNamespace(lengths=list(VARIED.lengths), max_length=512)
    assert _packing_saves(stats, 512, "sft") == VARIED.work(512, PADDING_BATCH).packing_saves >= 0.2
    assert _packing_saves(stats, None, "pretrain") == _packing_saves(stats, 512, "sft")  # its own max length
    assert _packing_saves(stats, 512, "classification") is None
    assert _packing_saves(SimpleNamespace(lengths=[], max_length=512), 512, "sft") is None


def test_a_packed_step_holds_about_the_examples_an_unpacked_step_would():
    """Packed rows hold several examples each: the same row count a step would take several times the examples
    and make several times fewer steps an epoch (bench/sft_speed.py measured the held-out loss that costs)."""
    rec = recommend(probe(snapshot="h100-80gb"), qwen(), VARIED, target_batch=16)
    best = rec.best
    assert best.packing
    work = VARIED.work(best.plan.seq_len, best.plan.micro_batch)
    per_row = len(VARIED.lengths) / work.packed_rows
    rows = best.plan.micro_batch * best.plan.gradient_accumulation
    assert 1 < per_row and abs(rows * per_row - 16) <= per_row  # about 16 examples a step
    assert f"A row holds {per_row:.1f} examples on average" in best.reason
    unpacked_steps = -(-len(VARIED.lengths) // 16)
    packed_steps = -(-work.packed_rows // rows)
    assert abs(packed_steps - unpacked_steps) / unpacked_steps < 0.25
    profile = to_profile(best, "Qwen/Qwen2.5-0.5B", "train.jsonl")
    assert profile.training.per_device_train_batch_size * profile.training.gradient_accumulation_steps == rows


def test_unpacked_methods_group_by_length_where_padding_would_waste_work():
    rec = recommend(probe(snapshot="h100-80gb"), qwen(), VARIED, experts=True)
    prompt = rec.option("prompt_tuning")
    assert prompt is not None and not prompt.packing and prompt.group_by_length
    assert "Groups examples of like length into batches" in prompt.reason
    profile = to_profile(prompt, "Qwen/Qwen2.5-0.5B", "train.jsonl")
    assert profile.data.group_by_length and not profile.data.packing
    assert not any(o.group_by_length for o in rec.options if o.packing)
    even = recommend(probe(snapshot="h100-80gb"), qwen(), EVEN, experts=True)
    assert not any(o.group_by_length or o.packing for o in even.options)
