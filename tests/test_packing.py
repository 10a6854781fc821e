"""data.packing: packed examples see only themselves (sdpa and eager rows from tuiwiz/train/packing.py, TRL's own
collator on flash), the loss is the examples' loss, and where that cannot be had packing is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from tuiwiz.errors import UserError

from .support.processes import run_cli
from .support.runs import build_trainer, losses, only_run, write_profile

ATOL = 1e-5  # fp32 on the CPU; measured: at most 3e-6


def tiny_llama(attention: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attention, dtype=torch.float32).eval()


def packed_rows(examples: list[list[int]], rows: list[list[int]]) -> list[dict]:
    """Features as TRL's bfd packing leaves them: examples joined per row, and their lengths."""
    return [{"input_ids": [t for i in row for t in examples[i]], "labels": [t for i in row for t in examples[i]],
             "seq_lengths": [len(examples[i]) for i in row]} for row in rows]


def max_difference(model, batch, features) -> float:
    """The largest difference in per-token loss (every next token, trained or not) between each example packed in
    ``batch`` and the same example run alone."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits
        worst = 0.0
        for row, feature in enumerate(features):
            start = 0
            for n in feature["seq_lengths"]:
                ids = torch.tensor(feature["input_ids"][start:start + n])
                alone = model(input_ids=ids[None], use_cache=False).logits[0]
                losses = [F.cross_entropy(logits[:-1], ids[1:], reduction="none")
                          for logits in (alone, packed[row, start:start + n])]
                worst = max(worst, (losses[0] - losses[1]).abs().max().item())
                start += n
    return worst


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_see_only_their_own_example(attention):
    import torch

    from tuiwiz.train.packing import PackedRowsCollator

    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(4, 1000, (n,), generator=generator).tolist() for n in (5, 9, 7, 12, 3)]
    features = packed_rows(examples, [[0, 1, 2], [3, 4]])  # 21 and 15 tokens: the second row is padded
    batch = PackedRowsCollator(pad_token_id=0)(features)

    assert set(batch) == {"input_ids", "labels", "position_ids"}  # an attention_mask would undo the isolation
    assert batch["input_ids"].shape == (2, 21)
    assert batch["position_ids"].tolist()[1] == [*range(12), *range(3), *[0] * 6]
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == -100).all() and (batch["labels"][~starts] != -100).all()

    model = tiny_llama(attention)
    difference = max_difference(model, batch, features)
    print(f"{attention}: packed rows vs alone, max |per-token loss difference| {difference:.1e}")
    assert difference < ATOL
    # the check can fail: the same rows with an attention_mask of ones let the examples see each other
    leaked = max_difference(model, {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}, features)
    assert leaked > 1e-2


def padding_free_collator():
    """TRL's collator as flash attention gets it: every packed row of a batch flattened into one, cu_seq_lens."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)


class LeakyCollator:
    """A collator whose batches let packed examples meet (an attention_mask of ones turns the packed-sequence
    detection off): what a flash kernel that ignored cu_seq_lens would give."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        import torch

        batch = self.inner(features)
        return {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}


@pytest.mark.parametrize("layout", ["rows", "flattened"])
def test_the_run_time_check_passes_apart_examples_and_catches_a_leak(layout):
    """The check flash attention gets at setup (it has no mask to read) runs the trainer's collator's batches."""
    from tuiwiz.train.packing import LEAK_SHARE, PackedRowsCollator, packed_difference

    model = tiny_llama("sdpa")
    collator = PackedRowsCollator(pad_token_id=0) if layout == "rows" else padding_free_collator()
    packed, leaked = packed_difference(model, collator)
    print(f"{layout}: packed vs alone {packed:.1e}, read as one sequence {leaked:.1e}")
    assert packed < ATOL and leaked > 1e-2
    packed, leaked = packed_difference(model, LeakyCollator(collator))
    assert packed > LEAK_SHARE * leaked and leaked > 1e-2


def test_flash_packing_is_refused_when_the_batches_leak(monkeypatch):
    from types import SimpleNamespace

    import transformers.integrations

    from tuiwiz.train.packing import check_packed_batches

    model = tiny_llama("sdpa").train()
    trainer = SimpleNamespace(model=model, data_collator=padding_free_collator(), accelerator=None)
    assert check_packed_batches(trainer, "sdpa") is None  # the mask was read at check_isolation
    line = check_packed_batches(trainer, "flash_attention_2")
    assert line.startswith("packing: flash_attention_2 keeps packed examples apart: checked on this model")
    assert model.training  # left as it was found

    with pytest.raises(UserError, match="attend to each other") as info:
        check_packed_batches(SimpleNamespace(model=model, data_collator=LeakyCollator(padding_free_collator()),
                                             accelerator=None), "flash_attention_2")
    assert info.value.field == "data.packing" and "data.packing: false" in info.value.hint

    # ZeRO-3's weights are sharded until training starts: the line says the check did not run
    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    assert "not run-checked under DeepSpeed ZeRO-3" in check_packed_batches(trainer, "flash_attention_2")


GPU_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


@pytest.mark.parametrize("attention", GPU_IMPLEMENTATIONS)
def test_packed_examples_stay_apart_on_a_gpu(attention):
    """Every implementation tuiwiz packs with, on CUDA in bf16, with the collator the runner gives it. Skipped
    without a GPU (or, for flash, without flash-attn); the GPU runbook runs it (bench/gpu/runbook.py)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from transformers.utils import is_flash_attn_2_available

    if attention == "flash_attention_2" and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    from transformers import LlamaForCausalLM

    from tuiwiz.train.packing import FLASH, LEAK_SHARE, PackedRowsCollator, packed_difference

    config = tiny_llama("sdpa").config
    model = LlamaForCausalLM._from_config(config, attn_implementation=attention, dtype=torch.bfloat16).cuda()
    collator = padding_free_collator() if attention in FLASH else PackedRowsCollator(pad_token_id=0)
    packed, leaked = packed_difference(model, collator)
    print(f"{attention} on {torch.cuda.get_device_name()}: packed vs alone {packed:.2e}, leaked {leaked:.2e}")
    assert leaked > 0.1 and packed <= LEAK_SHARE * leaked


def first_batch(trainer, rows: int):
    features = [trainer.train_dataset[i] for i in range(rows)]
    return features, trainer.data_collator(features)


def alone_loss(model, features) -> float:
    """The token-mean loss of the packed examples, each run alone (its first token is never predicted)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for feature in features:
            start = 0
            for n in feature["seq_lengths"]:
                ids = torch.tensor(feature["input_ids"][start:start + n])[None]
                labels = torch.tensor(feature["labels"][start:start + n])
                logits = model(input_ids=ids, use_cache=False).logits[0]
                loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
                total, count = total + loss.item(), count + int((labels[1:] != -100).sum())
                start += n
    return total / count


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_runner_trainer_packs_isolated_rows(tmp_path, demo_built, attention):
    from tuiwiz.train.packing import PackedRowsCollator

    trainer, setup = build_trainer(tmp_path, "quickstart.yaml", data__packing=True, data__max_length=96,
                                   model__attn_implementation=attention)
    assert isinstance(trainer.data_collator, PackedRowsCollator) and setup.precision.name == "fp32"
    features, batch = first_batch(trainer, 2)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 2
    assert batch["input_ids"].shape[1] <= 96 and all(len(f["seq_lengths"]) > 1 for f in features)
    model = trainer.model.eval()

    difference = max_difference(model, batch, features)
    print(f"{attention}: the recipe's packed batch vs alone, max |per-token loss difference| {difference:.1e}")
    assert difference < ATOL
    # the trainer's own loss (TRL's compute_loss) on the packed batch is the examples' loss
    assert trainer.compute_loss(model, batch).item() == pytest.approx(alone_loss(model, features), abs=ATOL)
    # the run-time check flash attention gets passes on the trainer's own collator and autocast
    from tuiwiz.train.packing import check_packed_batches

    assert "checked on this model" in check_packed_batches(trainer, "flash_attention_2")


def test_packing_on_or_off_gives_one_example_the_same_loss(tmp_path, demo_built):
    loss = {}
    for packing in (False, True):
        trainer, _ = build_trainer(tmp_path / str(packing), "quickstart.yaml", data__packing=packing, data__limit=1)
        model = trainer.model.eval()
        _, batch = first_batch(trainer, 1)
        assert ("attention_mask" in batch) is not packing
        loss[packing] = trainer.compute_loss(model, batch).item()
    assert loss[True] == pytest.approx(loss[False], abs=ATOL)


def test_packed_pretraining_keeps_every_token_of_a_long_text(tmp_path, demo_built):
    def tokens(trainer) -> int:
        return sum(len(ids) for ids in trainer.train_dataset["input_ids"])

    whole, _ = build_trainer(tmp_path / "whole", "demo-pretrain-lora.yaml", data__packing=False)
    split, _ = build_trainer(tmp_path / "split", "demo-pretrain-lora.yaml", data__max_length=16)  # texts: ~23 tokens
    assert max(len(ids) for ids in split.train_dataset["input_ids"]) <= 16
    assert tokens(split) == tokens(whole)  # pieces of max_length, not texts cut at it


def test_examples_left_with_nothing_to_train_are_dropped():
    from datasets import Dataset

    from tuiwiz.train.packing import drop_untrained

    masked = [-100] * 4
    data = Dataset.from_list([
        {"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [*masked, 5, 6, 7], "seq_lengths": [4, 3]},  # 2nd trains
        {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, 9, 10, -100, -100], "seq_lengths": [3, 2]},
        {"input_ids": [13, 14], "labels": [13, -100], "seq_lengths": [2]},  # its first label is never predicted
    ])
    kept, dropped = drop_untrained(data)
    assert dropped == 3
    assert kept.to_list() == [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "seq_lengths": [3]},
        {"input_ids": [8, 9, 10], "labels": [-100, 9, 10], "seq_lengths": [3]},
    ]
    assert drop_untrained(kept) == (kept, 0)


def test_no_example_fitting_max_length_is_still_refused_with_packing(tmp_path, demo_built):
    data = tmp_path / "long.jsonl"
    rows = [{"instruction": "word " * 200, "output": "short"}, {"instruction": "word " * 300, "output": "answer"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"no example of .* fits in data\.max_length=64") as info:
        build_trainer(tmp_path / "build", "quickstart.yaml", data__path=str(data), data__packing=True,
                      data__max_length=64)
    assert info.value.field == "data.max_length"


def test_a_model_that_lets_packed_examples_meet_is_refused_at_setup():
    """What preflight cannot tell: OPT builds its mask without position_ids; a class outside transformers."""
    import torch
    from transformers import LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from tuiwiz.train.packing import check_isolation

    assert check_isolation(tiny_llama("sdpa")) == "sdpa"
    config = OPTConfig(vocab_size=1000, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                       word_embed_proj_dim=64, max_position_embeddings=64)
    for attention in ("sdpa", "eager"):
        opt = OPTForCausalLM._from_config(config, attn_implementation=attention, dtype=torch.float32)
        with pytest.raises(UserError, match="attend to each other") as info:
            check_isolation(opt)
        assert info.value.field == "data.packing" and "data.packing: false" in info.value.hint

    class RemoteLlama(LlamaForCausalLM):  # as a model's own code (trust_remote_code) would be
        pass

    remote = RemoteLlama._from_config(tiny_llama("sdpa").config)
    with pytest.raises(UserError, match="trust_remote_code") as info:
        check_isolation(remote)
    assert info.value.field == "data.packing"


PROFILE = """\
model:
  name_or_path: {model}
  trust_remote_code: {remote}
data:
  path: demo:alpaca
  packing: true
method:
  type: {method}
training:
  max_steps: 1
output:
  runs_dir: runs
"""


@pytest.mark.parametrize("case", ["remote code", "prompt tuning"])
def test_packing_that_cannot_isolate_is_refused_before_a_run_exists(tmp_path, demo_built, case):
    from tuiwiz.demo.builtin import resolve_builtin

    model = "demo"
    if case == "remote code":  # a model folder whose config.json sends AutoModelForCausalLM to its own code
        model = tmp_path / "remote-model"
        shutil.copytree(resolve_builtin("demo", build=False), model)
        config = json.loads((model / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
        (model / "config.json").write_text(json.dumps(config))
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE.format(model=model, remote=case == "remote code",
                                      method="prompt_tuning" if case == "prompt tuning" else "lora"))
    env = {"TUIWIZ_CACHE_DIR": str(demo_built), "TUIWIZ_STATE_DIR": str(tmp_path / "state"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("--profile", profile, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "data.packing" in result.stderr and "set data.packing: false" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_packed_run_trains(tmp_path, demo_built):
    from tuiwiz.demo.build import resolve_demo_uri
    from tuiwiz.run.events import read_events

    profile = write_profile(tmp_path, "quickstart.yaml", data__packing=True)
    result = run_cli("--profile", profile, cwd=tmp_path)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    curve = losses(run)
    first, last = curve[min(curve)], curve[max(curve)]
    assert last < 0.7 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    start = next(e for e in read_events(run.events) if e["type"] == "run_start")
    examples = resolve_demo_uri("demo:alpaca").read_text().count("\n")
    assert start["train_examples"] < examples / 2  # rows of several examples each


def test_group_by_length_is_for_unpacked_runs_of_tasks_that_pack():
    from tuiwiz.profile.io import parse_profile_text

    for text, words in [("data:\n  packing: true\n  group_by_length: true\n", "applies to unpacked runs"),
                        ("task: dpo\ndata:\n  group_by_length: true\n", "does not apply to task dpo")]:
        with pytest.raises(UserError) as info:
            parse_profile_text(text, "p.yaml")
        assert words in info.value.message and info.value.field == "data.group_by_length", info.value
        assert info.value.line == text.splitlines().index("  group_by_length: true") + 1


def _padding_share(trainer, batches: int) -> float:
    """The share of the first ``batches`` batches' tokens that are padding."""
    padded = real = 0
    for n, batch in enumerate(trainer.get_train_dataloader()):
        if n == batches:
            break
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return 1 - real / padded


def test_group_by_length_batches_examples_of_similar_length(tmp_path, demo_built):
    import random

    words = "the cat sat on a mat and saw one red fox run by".split()
    rng = random.Random(0)
    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps({"instruction": " ".join(rng.choices(words, k=rng.randint(2, 8))),
                                        "output": " ".join(rng.choices(words, k=rng.randint(1, 50)))}) + "\n"
                            for _ in range(400)))
    settings = dict(data__path=str(data), data__max_length=128)
    shuffled, _ = build_trainer(tmp_path / "shuffled", "quickstart.yaml", **settings)
    grouped, _ = build_trainer(tmp_path / "grouped", "quickstart.yaml", data__group_by_length=True, **settings)
    assert grouped.args.train_sampling_strategy == "group_by_length"
    lengths = [len(row["input_ids"]) for row in grouped.train_dataset]
    first = next(iter(grouped.get_train_dataloader()))
    assert first["input_ids"].shape[1] == max(lengths)  # the longest batch first: a too-long one fails at once
    waste = _padding_share(shuffled, 10), _padding_share(grouped, 10)
    print(f"padding share of the first 10 batches: shuffled {waste[0]:.2f}, grouped by length {waste[1]:.2f}")
    assert waste[1] < waste[0] / 2, waste
