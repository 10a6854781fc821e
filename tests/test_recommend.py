"""Recommendations for the recorded machines, profiles built from them, OOM step-down, and the light CLI."""

import json
import subprocess
import sys

import pytest

from tuiwiz.data.stats import DataStats
from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.plan.hardware import probe
from tuiwiz.plan.memory import estimate
from tuiwiz.plan.modelinfo import model_from_config
from tuiwiz.plan.recommend import (
    MIN_STEPS,
    choose_seq_len,
    learning_rate_for,
    recommend,
    step_down,
    to_profile,
)
from tuiwiz.profile.schema import Profile

from .support import ROOT
from .support.configs import load_config

CHAT_2K = DataStats.from_lengths([300 + (i * 37) % 1700 for i in range(999)] + [2000])  # up to 2,000 tokens


def model(name):
    return model_from_config(load_config(name), name)


def test_data_stats_from_lengths():
    stats = DataStats.from_lengths([10] * 90 + [100] * 9 + [1000])
    assert (stats.rows, stats.p50, stats.p95, stats.max) == (100, 10, 100, 1000)
    assert stats.truncated_at(100) == 1 and stats.truncated_at(1000) == 0 and stats.truncated_at(9) == 100
    with pytest.raises(UserError):
        DataStats.from_lengths([])


def test_max_length_follows_the_data():
    llama = model("llama3-8b")
    seq, why, _ = choose_seq_len(CHAT_2K, llama)
    assert seq == 2048 and seq % 64 == 0 and "every example" in why
    long_tail = DataStats.from_lengths([200] * 96 + [5000] * 4)
    seq, why, _ = choose_seq_len(long_tail, llama)
    assert seq == 256 and "4 longer ones are truncated" in why
    seq, _, warnings = choose_seq_len(DataStats.from_lengths([20000]), llama)
    assert seq == 8192 and "context" in warnings[0]
    assert choose_seq_len(None, llama)[0] == 512


def test_a_given_max_length_is_used_as_given():
    """--seq-len 1304 (or the wizard's max length) is planned at 1304, not rounded up to 1344 behind the user's back."""
    llama = model("llama3-8b")
    seq, why, _ = choose_seq_len(DataStats.assumed(1304), llama)
    assert (seq, why) == (1304, "as given")
    rec = recommend(probe(snapshot="h100-80gb"), llama, DataStats.assumed(1304))
    assert rec.seq_len == 1304 and {o.plan.seq_len for o in rec.options} == {1304}
    for option in rec.options:
        assert option.estimate == estimate(llama, option.plan, max(1, len(option.gpu_indices)))
    assert to_profile(rec.best, "llama", "train.jsonl").data.max_length == 1304


def test_llama3_8b_on_rtx4090_gets_lora_or_qlora_never_full():
    rec = recommend(probe(snapshot="rtx4090-24gb"), model("llama3-8b"), CHAT_2K)
    best = rec.best
    assert best.key in ("lora", "qlora")
    assert best.plan.gradient_checkpointing or best.key == "qlora"
    assert best.plan.seq_len == 2048 and best.plan.precision == "bf16"
    assert best.effective_batch == 16
    full = rec.option("full")
    assert not full.fits and "the card has 22.9 GiB free" in full.rejected
    assert all(not o.fits for o in rec.options if o.plan.method == "full")
    qlora = rec.option("qlora")
    assert qlora.plan.optimizer == "paged_adamw_8bit"
    assert qlora.fits and qlora.estimate.per_device.weights < rec.option("lora").estimate.per_device.weights


def test_qwen_small_on_h100_gets_full_fine_tuning():
    rec = recommend(probe(snapshot="h100-80gb"), model("qwen2.5-0.5b"), CHAT_2K)
    assert rec.best.key == "full" and rec.best.plan.strategy == "single"
    # full fine-tuning's 2e-5 for a 4096-wide model, times sqrt(4096/896) for this 896-wide one
    assert rec.best.learning_rate == 4.3e-5 and "√(4096/896)" in rec.best.reason
    # lengths of 300 to 2,000 pack, about 1.75 examples a row: 9 rows a step hold the 16 examples planned for
    assert rec.best.packing and rec.best.effective_batch == 9 and "keeps about the 16 examples" in rec.best.reason


def test_llama3_8b_on_8x_a100_can_do_full_with_zero():
    machine = probe(snapshot="8x-a100-80gb")
    rec = recommend(machine, model("llama3-8b"), CHAT_2K)
    assert not rec.option("full").fits  # one 80 GB card is not enough for 16 bytes a parameter
    zero = [o for o in rec.fitting if o.plan.strategy in ("zero2", "zero3")]
    assert zero and rec.best.plan.method == "full" and rec.best.plan.strategy in ("zero2", "zero3")
    assert len(rec.best.gpu_indices) == 8 and rec.best.effective_batch >= 16
    # GPU 3 is busy: every per-GPU fit is checked against its own free memory
    fit3 = next(f for f in rec.best.fit if f.index == 3)
    assert fit3.available < next(f for f in rec.best.fit if f.index == 0).available


def test_t4_has_no_bf16_and_only_qlora_fits_a_7b():
    rec = recommend(probe(snapshot="t4-16gb"), model("mistral-7b"), CHAT_2K)
    assert rec.best.key == "qlora" and rec.best.plan.precision == "fp16"
    assert "GiB free" in rec.option("lora").rejected


def test_cpu_only_machine_gets_a_cpu_plan():
    machine = probe(snapshot="cpu-only")
    rec = recommend(machine, model("qwen2.5-0.5b"), DataStats.from_lengths([100, 150, 200, 230]))
    assert rec.best.key.startswith("cpu-") and rec.best.plan.device == "cpu" and rec.best.plan.precision == "fp32"
    assert rec.best.fit[0].index is None
    assert rec.best.needed <= machine.ram_available_mb * 2**20
    assert "dequantising makes every step slower" in rec.option("cpu-qlora").rejected
    assert any("no GPU" in w for w in rec.warnings)


def test_unknown_architecture_warns_and_errs_high():
    config = dict(load_config("llama3-8b"), model_type="mystery", architectures=["MysteryForCausalLM"])
    unknown = model_from_config(config)
    rec = recommend(probe(snapshot="a100-40gb"), unknown, CHAT_2K)
    assert any("unknown architecture" in w for w in rec.warnings)
    known = recommend(probe(snapshot="a100-40gb"), model("llama3-8b"), CHAT_2K)
    same_plan = known.option("lora").plan
    assert estimate(unknown, same_plan).total > estimate(model("llama3-8b"), same_plan).total
    assert rec.option("lora").plan.micro_batch <= same_plan.micro_batch


def test_experts_add_peft_methods():
    rec = recommend(probe(snapshot="a100-40gb"), model("qwen2.5-7b"), CHAT_2K, experts=True)
    assert {"ia3", "adalora", "prefix_tuning", "p_tuning", "bitfit"} <= {o.key for o in rec.options}
    assert {"ia3", "adalora"}.isdisjoint(o.key for o in recommend(probe(snapshot="a100-40gb"),
                                                                   model("qwen2.5-7b"), CHAT_2K).options)


def test_rejections_are_ranked_after_fits():
    rec = recommend(probe(snapshot="t4-16gb"), model("llama3-8b"), CHAT_2K)
    flags = [o.fits for o in rec.options]
    assert flags == sorted(flags, reverse=True)
    assert all(o.rejected for o in rec.options if not o.fits)


@pytest.mark.parametrize("snapshot, name", [("rtx4090-24gb", "llama3-8b"), ("h100-80gb", "qwen2.5-0.5b"),
                                            ("cpu-only", "qwen2.5-0.5b"), ("a100-40gb", "phi3-mini-4k")])
def test_to_profile_is_valid_and_matches_the_option(snapshot, name):
    rec = recommend(probe(snapshot=snapshot), model(name), CHAT_2K, experts=True)
    for option in rec.fitting:
        profile = to_profile(option, name, "train.jsonl", "sft")
        assert Profile.model_validate(profile.model_dump()) == profile
        t = profile.training
        assert profile.method.type == option.plan.method
        assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (
            option.plan.micro_batch, option.plan.gradient_accumulation)
        assert profile.data.max_length == rec.seq_len and t.precision == option.plan.precision
        assert profile.learning_rate == option.learning_rate == learning_rate_for(option.plan.method, model(name))[0]
        assert t.num_train_epochs == option.epochs and option.optimizer_steps >= MIN_STEPS
        if option.plan.method in ("lora", "qlora"):
            assert profile.method.target_modules == list(model(name).linear_modules)
            assert profile.method.lora_alpha == 2 * profile.method.r


def test_adapters_learn_faster_than_full_fine_tuning_and_wide_models_slower():
    """The published rates at 7-8B (full 2e-5, LoRA 2e-4: axolotl's Llama 3 8B examples), scaled by the square
    root of the width: larger for narrow models, smaller for 70B (the QLoRA paper's 65B: 1e-4)."""
    rates = {name: {m: learning_rate_for(m, model(name))[0] for m in ("full", "lora", "qlora")}
             for name in ("qwen2.5-0.5b", "llama3.2-1b", "llama3-8b", "llama3-70b", "bert-base-uncased")}
    assert rates["llama3-8b"] == {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4}
    for name, rate in rates.items():
        assert rate["lora"] == rate["qlora"] == pytest.approx(10 * rate["full"]), name
    order = [rates[n]["full"] for n in ("qwen2.5-0.5b", "llama3.2-1b", "llama3-8b", "llama3-70b")]
    assert order == sorted(order, reverse=True) and order[0] > order[-1] * 2
    assert 1e-4 < rates["llama3-70b"]["lora"] < 2e-4
    assert 2e-5 <= rates["bert-base-uncased"]["full"] <= 5e-5  # BERT's own fine-tuning grid
    for method in METHODS:  # every adapter method still above full fine-tuning on a 7-8B model
        assert method == "full" or learning_rate_for(method, model("llama3-8b"))[0] > rates["llama3-8b"]["full"]


def test_a_tiny_model_learns_at_from_scratch_rates_whatever_its_name():
    """Under 10M parameters a model is a toy or randomly initialised (the demo has 1M): it is told by its size, not
    its name, and learns at rates like those of training from scratch, far above a pretrained model's."""
    from .support.configs import tiny

    toy = model_from_config(tiny(load_config("llama3-8b")), "my-llama")
    assert toy.num_parameters < 10_000_000 and toy.architecture == model("llama3-8b").architecture
    rate, why = learning_rate_for("full", toy)
    assert rate == METHODS["full"].tiny_learning_rate == 1e-3 and "randomly initialised" in why
    assert rate >= 50 * learning_rate_for("full", model("llama3-8b"))[0]
    assert learning_rate_for("lora", toy)[0] == 2e-3
    rec = recommend(probe(snapshot="cpu-only"), toy, DataStats.from_lengths([30] * 153))
    assert rec.best.learning_rate == 1e-3 and "Learning rate 0.001" in rec.best.reason


def test_preference_and_rl_tasks_take_smaller_steps():
    llama = model("llama3-8b")
    assert learning_rate_for("lora", llama, "dpo")[0] == 1e-5  # LLaMA-Factory's DPO 5e-6 against its SFT 1e-4
    assert learning_rate_for("lora", llama, "grpo")[0] == 1e-5
    assert learning_rate_for("lora", llama, "reward")[0] == 2e-4  # a reward model trains like a classifier
    assert "a twentieth of it for DPO" in learning_rate_for("lora", llama, "dpo")[1]


@pytest.mark.parametrize("rows, batch, epochs, steps", [
    (50, 8, 15, 105),  # small: batch 8, passes enough for 100 steps
    (153, 8, 5, 100),  # the demo's alpaca data
    (200, 8, 4, 100),  # the demo's classification data
    (1000, 16, 3, 189),  # the usual 3 epochs
    (20_000, 16, 2, 2500),  # 3 passes would take 3,750 steps
    (100_000, 16, 1, 6250),  # large: one pass
])
def test_epochs_follow_the_data_never_a_handful_of_steps(rows, batch, epochs, steps):
    option = recommend(probe(snapshot="h100-80gb"), model("qwen2.5-0.5b"),
                       DataStats.from_lengths([100] * rows)).option("lora")
    assert (option.effective_batch, option.epochs, option.optimizer_steps) == (batch, epochs, steps)
    assert f"{epochs} epoch" in option.reason and f"{steps:,} optimizer steps" in option.reason
    assert to_profile(option, "qwen", "train.jsonl").training.num_train_epochs == epochs


def test_the_schedule_counts_every_row_when_the_lengths_are_a_sample():
    """Large data's token lengths are measured on a sample (data/rendering.py: 2,000 rows): the schedule counts the
    rows there are, packed rows included."""
    from dataclasses import replace

    qwen, h100 = model("qwen2.5-0.5b"), probe(snapshot="h100-80gb")
    sample = DataStats.from_lengths([100] * 2000)
    option = recommend(h100, qwen, replace(sample, rows=100_000)).option("lora")
    assert (option.epochs, option.optimizer_steps) == (1, 6250) and "100,000 examples" in option.reason
    varied = DataStats.from_lengths([40 + (i * 97) % 900 for i in range(2000)])
    packed = [recommend(h100, qwen, stats).option("lora") for stats in (varied, replace(varied, rows=20_000))]
    assert all(o.packing for o in packed)
    rows = [int(o.schedule_reason.split(" of ")[1].split(" packed rows")[0].replace(",", "")) for o in packed]
    assert rows[1] == pytest.approx(10 * rows[0], abs=5)


def test_a_schedule_says_what_it_assumes():
    option = recommend(probe(snapshot="h100-80gb"), model("qwen2.5-0.5b"), DataStats.assumed(512)).option("lora")
    assert option.epochs == 3 and option.optimizer_steps is None and "the data's size is unknown" in option.reason
    few = recommend(probe(snapshot="h100-80gb"), model("qwen2.5-0.5b"), DataStats.from_lengths([100] * 12))
    lora = few.option("lora")
    assert lora.epochs == 20 and lora.optimizer_steps == 40  # 12 examples: 2 steps a pass at batch 8
    assert any("only 40 optimizer steps" in w and "more data" in w for w in lora.warnings)


def rates_table() -> str:
    """docs/settings.md's table of learning rates, made from learning_rate_for."""
    from tuiwiz.units import count

    from .support.configs import tiny

    shapes = [(name, model(name)) for name in ("bert-base-uncased", "qwen2.5-0.5b", "llama3.2-1b", "phi3-mini-4k",
                                               "llama3-8b", "llama3-70b")]
    shapes.append(("llama3-8b at toy size", model_from_config(tiny(load_config("llama3-8b")), "toy")))
    lines = ["<!-- settings-rates: start -->", "| model | parameters | hidden size | full | LoRA | LoRA, DPO |",
             "|---|---|---|---|---|---|"]
    for name, info in shapes:
        rates = [learning_rate_for(m, info, task)[0] for m, task in (("full", "sft"), ("lora", "sft"), ("lora", "dpo"))]
        lines.append(f"| {name} | {count(info.num_parameters)} | {info.hidden_size} | "
                     + " | ".join(f"{r:g}" for r in rates) + " |")
    return "\n".join(lines + ["<!-- settings-rates: end -->"])


def test_the_settings_page_quotes_the_rates():
    assert rates_table() in (ROOT / "docs" / "settings.md").read_text(encoding="utf-8"), rates_table()


def test_step_down_sequence():
    machine, info = probe(snapshot="rtx4090-24gb"), model("llama3-8b")
    option = recommend(probe(snapshot="h100-80gb"), model("qwen2.5-0.5b"), CHAT_2K).best
    profile = to_profile(option, "llama", "train.jsonl").model_copy(deep=True)
    profile.training.per_device_train_batch_size = 8
    profile.training.gradient_accumulation_steps = 2
    profile.training.gradient_checkpointing = False
    kinds = []
    while True:
        step = step_down(profile, info, machine)
        if step is None:
            break
        new, reason = step  # unpacks as (profile, reason)
        kinds.append(step.kind)
        t = new.training
        if step.kind == "micro_batch":
            assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 16
        assert step.needs_consent == (step.kind == "max_length") and reason
        profile = new
    assert kinds == ["micro_batch"] * 3 + ["checkpointing"] + ["max_length"] * 4 + ["method", "method"]
    assert profile.method.type == "qlora" and profile.training.optim == "paged_adamw_8bit"
    assert profile.learning_rate == learning_rate_for("qlora", info)[0]  # the lighter method's rate for this model
    assert profile.data.max_length == 128 and profile.training.per_device_train_batch_size == 1


def test_step_down_without_consent_and_on_cpu():
    info = model("qwen2.5-0.5b")
    profile = Profile.model_validate({"method": {"type": "lora"}, "data": {"max_length": 1024},
                                      "training": {"per_device_train_batch_size": 1,
                                                   "gradient_checkpointing": True}})
    assert step_down(profile, info, probe(snapshot="cpu-only"), allow_truncation=False) is None
    step = step_down(profile, info, probe(snapshot="a100-40gb"), allow_truncation=False)
    assert step.kind == "method" and step.profile.method.type == "qlora"


def test_step_down_offers_qlora_only_where_it_needs_less_than_lora():
    """QLoRA keeps its unquantized weights in 16-bit (method.upcast_non_quantized false): lighter than LoRA at any
    length, so a step down offers it at 2k tokens and at 32k. (With peft's fp32 upcast its activations at 32k
    outweigh its 4-bit weights: tests/test_memory.py.)"""
    info, machine = model("llama3-8b"), probe(snapshot="h100-80gb")
    profile = Profile.model_validate({"method": {"type": "lora"}, "data": {"max_length": 32768},
                                      "training": {"per_device_train_batch_size": 1,
                                                   "gradient_checkpointing": True}})
    for length in (32768, 2048):
        at = profile.model_copy(update={"data": profile.data.model_copy(update={"max_length": length})})
        step = step_down(at, info, machine, allow_truncation=False)
        assert step.profile.method.type == "qlora" and not step.profile.method.upcast_non_quantized


HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "deepspeed", "datasets", "textual")
CHECK = """
import json, sys
from tuiwiz.cli import plan as fit_cli
code = fit_cli.main({argv!r})
print(json.dumps([code, sorted(m for m in {heavy!r} if m in sys.modules)]), file=sys.stderr)
"""


def run_fit_cli(*argv, env=None):
    import os

    result = subprocess.run([sys.executable, "-c", CHECK.format(argv=list(argv), heavy=HEAVY)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    code, loaded = json.loads(result.stderr.strip().splitlines()[-1])
    return code, loaded, result.stdout


@pytest.mark.parametrize("argv", [
    ["hw"], ["hw", "--json"], ["inspect", "minilm", "--json"],
    ["recommend", "--model", "minilm", "--seq-len", "128", "--hardware", "rtx4090-24gb", "--json"],
    ["recommend", "--model", "minilm", "--seq-len", "200"],
])
def test_fit_commands_stay_light(argv):
    code, loaded, _ = run_fit_cli(*argv)
    assert code == 0 and loaded == []


def test_fit_commands_output(tmp_path):
    code, _, out = run_fit_cli("hw", "--json", "--save", str(tmp_path / "m.json"),
                               env={"TUIWIZ_HARDWARE": "h100-80gb"})
    assert code == 0 and json.loads(out)["gpus"][0]["memory_total_mb"] == 81559
    assert json.loads((tmp_path / "m.json").read_text())["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    code, _, out = run_fit_cli("recommend", "--model", "minilm", "--seq-len", "128", "--hardware",
                               str(tmp_path / "m.json"), "--json", "--data", "d.jsonl",
                               "--write", str(tmp_path / "p.yaml"))
    report = json.loads(out)
    assert code == 0 and report["options"][0]["fits"] and report["seq_len"] == 128
    from tuiwiz.profile.io import load_profile

    written = load_profile(tmp_path / "p.yaml").profile
    assert written.method.type == report["options"][0]["plan"]["method"] and written.model.name_or_path == "minilm"
    code, _, _ = run_fit_cli("inspect", str(tmp_path / "missing") + "/")
    assert code == 2


def test_recommend_without_a_tokenizer_skips_token_statistics(tmp_path):
    """A model folder with config.json alone: the lengths of --data cannot be counted, the plan goes on."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(load_config("llama3-8b")))
    (tmp_path / "d.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    argv = ("recommend", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.jsonl"),
            "--hardware", "h100-80gb")
    code, loaded, out = run_fit_cli(*argv, "--json")
    report = json.loads(out)
    assert code == 0 and loaded == [] and report["seq_len"] == 512
    assert any(w.startswith("token statistics are skipped") and "no tokenizer" in w for w in report["warnings"])
    code, _, out = run_fit_cli(*argv, "--seq-len", "1304")
    assert code == 0 and "max length 1304 tokens" in out and "token statistics are skipped" not in out
    code, _, out = run_fit_cli(*argv)
    assert code == 0 and "max length 512 tokens" in out and "token statistics are skipped" in " ".join(out.split())


@pytest.mark.parametrize("module", ["tuiwiz.plan.hardware", "tuiwiz.plan.modelinfo", "tuiwiz.plan.memory",
                                    "tuiwiz.plan.recommend", "tuiwiz.cli.plan"])
def test_modules_import_light(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_to_profile_carries_the_distributed_strategy():
    rec = recommend(probe(snapshot="8x-a100-80gb"), model("llama3-8b"), CHAT_2K, "sft")
    zero = next(o for o in rec.fitting if o.plan.strategy in ("zero2", "zero3"))
    profile = to_profile(zero, "meta-llama/Llama-3.1-8B", "data.jsonl")
    assert profile.distributed.strategy == zero.plan.strategy
    assert profile.distributed.num_processes == len(zero.gpu_indices) > 1


def test_token_stats_of_the_demo_data():
    from tuiwiz.data.rendering import token_stats
    from tuiwiz.plan.modelinfo import inspect_model

    stats = token_stats("demo:alpaca", inspect_model("demo", build_demo=True))
    assert stats.rows == 153 and 10 < stats.p50 <= stats.p95 <= stats.max < 64


# ---------------------------------------------------------------- several GPUs: DDP, ZeRO, offload


def machine_from(snapshot: str, *, gpus: int | None = None, ram_gib: float | None = None):
    """A recorded machine with its first GPU repeated ``gpus`` times and/or ``ram_gib`` of RAM available."""
    from dataclasses import replace

    machine = probe(snapshot=snapshot)
    if gpus is not None:
        first = machine.gpus[0]
        machine = replace(machine, gpus=tuple(replace(first, index=i, uuid=f"{first.uuid}-{i}",
                                                      pci_bus_id=f"00000000:{i + 1:02X}:00.0") for i in range(gpus)))
    if ram_gib is not None:
        machine = replace(machine, ram_total_mb=int(ram_gib * 1024) + 4096, ram_available_mb=int(ram_gib * 1024))
    return machine


def states(option) -> int:
    """Weights, gradients and optimizer states of one full copy (what DDP keeps on every GPU)."""
    b = option.estimate.per_device
    return b.weights + b.gradients + b.optimizer


def test_ddp_when_a_full_copy_fits_one_gpu_of_several():
    machine = probe(snapshot="8x-a100-80gb")
    rec = recommend(machine, model("qwen2.5-0.5b"), CHAT_2K)
    assert rec.option("full").fits  # the premise: one GPU holds the model and its states
    best = rec.best
    assert best.key == "full-ddp" and best.plan.strategy == "ddp" and best.plan.method == "full"
    assert best.gpu_indices == tuple(range(8))  # GPU 3 is busy, but has more than half the free memory
    assert "fastest where it fits" in best.reason
    # ZeRO fits too, but shards what need not be sharded: ranked after DDP
    keys = [o.key for o in rec.fitting]
    assert keys.index("full-ddp") < keys.index("full-zero2") < keys.index("full-zero3")
    profile = to_profile(best, "Qwen/Qwen2.5-0.5B", "data.jsonl")
    d = profile.distributed
    assert (d.strategy, d.num_processes, d.gpus, d.offload_optimizer, d.offload_params) == (
        "ddp", 8, list(range(8)), False, False)


def test_zero3_with_cpu_offload_when_the_states_exceed_every_gpu_together():
    machine = machine_from("a100-40gb", gpus=2, ram_gib=256)
    rec = recommend(machine, model("llama3-8b"), CHAT_2K, experts=True)
    assert states(rec.option("full")) > sum(g.memory_total_bytes for g in machine.gpus)  # the premise
    full = [o for o in rec.fitting if o.plan.method == "full"]
    # optimizer offload first: parameters stay on the GPUs, so it is the faster of the two
    assert [o.key for o in full] == ["full-zero3-offload", "full-zero3-offload-all"]
    chosen = full[0]
    assert chosen.gpu_indices == (0, 1)
    assert chosen.estimate.cpu_ram <= machine.ram_available_mb * 2**20  # host RAM takes the offloaded states
    for key in ("full", "full-ddp", "full-zero2", "full-zero3"):
        assert "GiB per GPU" in rec.option(key).rejected, key
    d = to_profile(chosen, "meta-llama/Llama-3.1-8B", "data.jsonl").distributed
    assert (d.strategy, d.num_processes, d.offload_optimizer, d.offload_params) == ("zero3", 2, True, False)
    d = to_profile(full[1], "meta-llama/Llama-3.1-8B", "data.jsonl").distributed
    assert (d.strategy, d.offload_optimizer, d.offload_params) == ("zero3", True, True)


def test_parameters_are_offloaded_too_when_the_optimizer_alone_does_not_free_enough():
    machine = machine_from("t4-16gb", ram_gib=256)
    rec = recommend(machine, model("llama3-8b"), CHAT_2K, experts=True)
    assert "GiB per GPU" in rec.option("full-zero3-offload").rejected
    offload_all = rec.option("full-zero3-offload-all")
    assert offload_all.fits and offload_all in rec.fitting


def test_offload_without_the_cpu_ram_for_it_is_rejected_with_why():
    machine = machine_from("a100-40gb", gpus=2, ram_gib=128)
    rec = recommend(machine, model("llama3-8b"), CHAT_2K, experts=True)
    for key in ("full-zero3-offload", "full-zero3-offload-all"):
        option = rec.option(key)
        assert not option.fits and option.estimate.cpu_ram > 128 * 2**30
        assert "of CPU RAM for the offloaded states" in option.rejected, option.rejected
        assert "128 GiB available" in option.rejected
    assert not any(o.plan.method == "full" for o in rec.fitting)
    assert rec.best.plan.method in ("lora", "qlora")  # still something that fits
    # within the RAM but not its headroom: the message says why what looks enough is not
    tight = recommend(machine_from("a100-40gb", gpus=2, ram_gib=200), model("llama3-8b"), CHAT_2K)
    assert "200 GiB available (170 GiB usable: the estimate keeps 15% spare)" in tight.option(
        "full-zero3-offload").rejected


def test_low_rank_options_recommend_dropout_zero_and_say_why():
    rec = recommend(probe(snapshot="rtx4090-24gb"), model("llama3-8b"), CHAT_2K)
    for key in ("lora", "qlora"):
        option = rec.option(key)
        assert option.plan.lora_dropout == 0.0 and "LoRA dropout 0" in option.reason
        assert to_profile(option, "llama", "train.jsonl").method.lora_dropout == 0.0
        assert option.estimate == estimate(model("llama3-8b"), option.plan)  # the estimate is of dropout 0
    assert "dropout" not in rec.option("full").reason
