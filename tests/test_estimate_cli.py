"""`tuiwiz estimate` and the settings flags it shares with `tuiwiz recommend` (issue 15): every setting a
profile holds can be given on the command line, and the command prints what the Python API computes."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest

from tuiwiz.cli.main import main
from tuiwiz.plan.memory import Plan, estimate, trainable_parameters
from tuiwiz.plan.modelinfo import model_from_config
from tuiwiz.profile.io import load_profile
from tuiwiz.units import size

from .support import ROOT
from .support.configs import load_config

LLAMA = "tests/fixtures/configs/llama3-8b.json"
# the issue's example: LoRA r8 on q_proj,v_proj, micro-batch 2, 1304 tokens, pure bf16, one GPU
ISSUE_EXAMPLE = ["--config", LLAMA, "--method", "lora", "--rank", "8", "--target-modules", "q_proj,v_proj",
                 "--micro-batch", "2", "--seq-len", "1304", "--precision", "bf16", "--weights-dtype", "bfloat16",
                 "--gpus", "1"]


def llama():
    return model_from_config(load_config("llama3-8b"), "llama3-8b")


def tuiwiz(*argv, hardware="cpu-only"):
    """The real command in a fresh interpreter: (exit code, stdout, stderr)."""
    env = {**os.environ, "TUIWIZ_HARDWARE": hardware, "COLUMNS": "100"}
    result = subprocess.run([sys.executable, "-m", "tuiwiz", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=env)
    return result.returncode, result.stdout, result.stderr


def run(capsys, *argv):
    """The command in this process (fast): (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(value):
    return json.loads(json.dumps(value))


def assert_reports(report: dict, plan: Plan, n_gpus: int = 1):
    """The JSON report holds exactly what estimate() gives for ``plan``."""
    est = estimate(llama(), plan, n_gpus)
    assert report["plan"] == as_json(asdict(plan))
    assert report["per_device"] == est.per_device.terms()
    assert (report["total"], report["static"], report["peak_dynamic"]) == \
        (est.total, est.per_device.static, est.per_device.peak_dynamic)
    expected = as_json({k: v for k, v in asdict(est).items() if k != "per_device"})
    assert {k: report[k] for k in expected if k != "notes"} == {k: v for k, v in expected.items() if k != "notes"}
    assert set(est.notes) <= set(report["notes"])


def test_the_issue_example_through_the_real_cli_equals_the_api():
    code, out, err = tuiwiz("estimate", *ISSUE_EXAMPLE, "--json")
    assert code == 0, err
    report = json.loads(out)
    plan = Plan(method="lora", device="cuda", precision="bf16", micro_batch=2, seq_len=1304, lora_r=8,
                lora_targets=("q_proj", "v_proj"), weights_dtype="bfloat16")
    assert_reports(report, plan)
    assert report["trainable_parameters"] == 8 * 32 * ((4096 + 4096) + (4096 + 1024)) == 3_407_872
    assert report["machine"]["device"] == "cuda" and report["machine"]["devices"] == 1
    assert report["fits"] is None  # one GPU assumed on a machine without one: nothing to check against


def test_the_text_lists_every_term_the_total_and_the_machine(capsys, monkeypatch):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "h100-80gb")
    code, out, _ = run(capsys, "estimate", *ISSUE_EXAMPLE)
    assert code == 0
    text = " ".join(out.split())
    est = estimate(llama(), Plan(micro_batch=2, seq_len=1304, lora_r=8, lora_targets=("q_proj", "v_proj"),
                                 weights_dtype="bfloat16"))
    for label, term in (("weights", "weights"), ("adapter", "adapter"), ("gradients", "gradients"),
                        ("optimizer states", "optimizer"), ("activations", "activations"), ("logits", "logits"),
                        ("optimizer step", "optimizer_step"), ("buffers", "buffers"),
                        ("allocator overhead", "overhead"), ("CUDA context", "context")):
        assert f"{label} {size(getattr(est.per_device, term))}" in text, label
    assert f"total {size(est.total)}" in text
    assert "LoRA r8 on q_proj, v_proj" in text and "1,304 tokens" in text and "bf16 on bfloat16 weights" in text
    assert "1 GPU: NVIDIA H100 80GB HBM3" in text and "snapshot h100-80gb" in text and "fits:" in text


def test_a_profile_with_flags_that_override_it(capsys, monkeypatch):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "h100-80gb")
    path = ROOT / "profiles" / "llama3-8b-lora-80gb.yaml"
    code, out, _ = run(capsys, "estimate", str(path), "--config", LLAMA, "--rank", "8", "--micro-batch", "1",
                       "--no-gradient-checkpointing", "--optimizer", "adamw_8bit", "--json")
    assert code == 0
    profile = load_profile(path).profile
    profile.method.r = 8
    profile.training.per_device_train_batch_size = 1
    profile.training.gradient_checkpointing = False
    profile.training.optim = "adamw_8bit"
    plan = Plan.from_profile(profile, llama())
    assert (plan.lora_r, plan.micro_batch, plan.seq_len, plan.gradient_accumulation) == (8, 1, 4096, 4)
    assert_reports(json.loads(out), plan)
    # and without flags, the profile as it is
    code, out, _ = run(capsys, "estimate", str(path), "--config", LLAMA, "--json")
    assert_reports(json.loads(out), Plan.from_profile(load_profile(path).profile, llama()))


def test_flags_alone_several_gpus_and_zero(capsys):
    code, out, _ = run(capsys, "estimate", "--config", LLAMA, "--method", "full", "--gpus", "8", "--zero", "3",
                       "--offload", "optimizer", "--seq-len", "2048", "--gradient-checkpointing",
                       "--attn", "flash_attention_2", "--grad-accum", "4", "--json")
    assert code == 0
    plan = Plan(method="full", precision="bf16", micro_batch=4, seq_len=2048, gradient_accumulation=4,
                gradient_checkpointing=True, attn_implementation="flash_attention_2",
                strategy="zero3_offload_optimizer")
    assert_reports(json.loads(out), plan, n_gpus=8)
    code, out, _ = run(capsys, "estimate", "--config", LLAMA, "--gpus", "0", "--method", "qlora", "--json")
    report = json.loads(out)
    assert code == 0 and report["plan"]["device"] == "cpu" and report["plan"]["precision"] == "fp32"


def test_qlora_estimates_the_16_bit_path_unless_told_to_upcast(capsys):
    base = ["estimate", "--config", LLAMA, "--method", "qlora", "--seq-len", "2048", "--micro-batch", "1",
            "--gpus", "1", "--json"]  # on a GPU: on the CPU QLoRA computes in fp32 either way
    reports = [json.loads(run(capsys, *base, *extra)[1]) for extra in ([], ["--upcast-non-quantized"])]
    assert [r["plan"]["kbit_upcast"] for r in reports] == [False, True]
    for report in reports:
        assert_reports(report, Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in report["plan"].items()}))
    assert reports[1]["total"] > reports[0]["total"]


@pytest.mark.parametrize("argv, flag, shown", [
    (["--precision", "bf61"], "--precision", "did you mean 'bf16'?"),
    (["--weights-dtype", "bf16"], "--weights-dtype", "bfloat16"),
    (["--optimizer", "adam"], "--optimizer", "adamw_torch"),
    (["--attn", "flash"], "--attn", "flash_attention_2"),
    (["--method", "lorra"], "--method", "did you mean 'lora'?"),
    (["--rank", "0"], "--rank", "whole number of at least 1"),
    (["--micro-batch", "two"], "--micro-batch", "whole number"),
    (["--target-modules", "q_proj,query"], "--target-modules", "q_proj, k_proj, v_proj"),
    (["--method", "prompt_tuning", "--rank", "8"], "--rank", "lora, qlora, adalora"),
    (["--seq-len", "4"], "--seq-len", "at least 8"),
    (["--zero", "4"], "--zero", "2, 3"),
    (["--offload", "all"], "--offload", "--zero 3"),
    (["--zero", "2", "--offload", "all"], "--offload", "--zero 3"),
    (["--method", "full", "--gpus", "2", "--zero", "3", "--optimizer", "adamw_8bit"], "--optimizer", "own AdamW"),
    (["--method", "lora", "--upcast-non-quantized"], "--upcast-non-quantized", "applies to --method qlora"),
])
def test_a_bad_value_exits_2_naming_the_flag(capsys, argv, flag, shown):
    code, out, err = run(capsys, "estimate", "--config", LLAMA, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {flag}: ") and shown in err, err


def test_the_real_cli_refuses_a_bad_value_with_exit_2():
    code, _, err = tuiwiz("estimate", "--config", LLAMA, "--precision", "float16")
    assert code == 2 and "--precision" in err and "fp32, fp16, bf16" in err and "Traceback" not in err


def test_estimate_needs_a_model(capsys, tmp_path):
    code, _, err = run(capsys, "estimate", "--rank", "8")
    assert code == 2 and "--model" in err
    (tmp_path / "broken.json").write_text("{}")
    code, _, err = run(capsys, "estimate", "--config", str(tmp_path / "broken.json"))
    assert code == 2 and "--config" in err


# ---------------------------------------------------------------- recommend, constrained by the same flags


@pytest.fixture
def llama_folder(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(load_config("llama3-8b")))
    return str(tmp_path / "llama")


def recommend_json(capsys, *argv):
    code, out, err = run(capsys, "recommend", *argv, "--json")
    assert code == 0, err
    return json.loads(out)["options"]


def test_recommend_applies_the_lora_flags(capsys, llama_folder):
    options = recommend_json(capsys, "--model", llama_folder, "--hardware", "rtx4090-24gb", "--seq-len", "1304",
                             "--rank", "8", "--target-modules", "q_proj,v_proj", "--weights-dtype", "bfloat16")
    assert {o["plan"]["method"] for o in options} == {"lora", "qlora"}  # the methods that have a rank
    for o in options:
        plan = Plan(**{**o["plan"], "lora_targets": tuple(o["plan"]["lora_targets"])})
        assert (plan.lora_r, plan.lora_targets, plan.weights_dtype) == (8, ("q_proj", "v_proj"), "bfloat16")
        assert o["trainable_parameters"] == trainable_parameters(llama(), plan) == 3_407_872
        assert o["needed_bytes"] == estimate(llama(), plan).total and o["lora_alpha"] == 16
        assert "(3.4M trainable, 0.04%)" in o["reason"]
    assert options[0]["fits"]


def test_recommend_keeps_what_the_flags_fix_and_searches_the_rest(capsys, llama_folder):
    options = recommend_json(capsys, "--model", llama_folder, "--hardware", "rtx4090-24gb", "--seq-len", "1304",
                             "--method", "lora", "--micro-batch", "2", "--no-gradient-checkpointing")
    assert [o["key"] for o in options] == ["lora"]
    plan = options[0]["plan"]
    assert (plan["micro_batch"], plan["gradient_accumulation"], plan["gradient_checkpointing"]) == (2, 8, False)
    searched = recommend_json(capsys, "--model", llama_folder, "--hardware", "rtx4090-24gb", "--seq-len", "2560",
                              "--method", "lora", "--rank", "64")
    # at 2,560 tokens r64 on every linear layer no longer fits at micro-batch 2 (r16 does): the search halves it, the
    # effective batch kept
    assert searched[0]["fits"] and searched[0]["plan"]["lora_r"] == 64
    assert (searched[0]["plan"]["micro_batch"], searched[0]["plan"]["gradient_accumulation"]) == (1, 16)


def test_recommend_restricted_to_a_strategy_or_a_gpu_count(capsys, llama_folder):
    zero = recommend_json(capsys, "--model", llama_folder, "--hardware", "8x-a100-80gb", "--seq-len", "2048",
                          "--zero", "3")
    assert [o["plan"]["strategy"] for o in zero] == ["zero3"]
    offload = recommend_json(capsys, "--model", llama_folder, "--hardware", "8x-a100-80gb", "--seq-len", "2048",
                             "--zero", "3", "--offload", "all")
    assert [o["plan"]["strategy"] for o in offload] == ["zero3_offload_all"]
    one = recommend_json(capsys, "--model", llama_folder, "--hardware", "8x-a100-80gb", "--seq-len", "2048",
                         "--gpus", "1")
    assert {len(o["gpus"]) for o in one} == {1}
    cpu = recommend_json(capsys, "--model", llama_folder, "--hardware", "8x-a100-80gb", "--seq-len", "512",
                         "--gpus", "0")
    assert {o["plan"]["device"] for o in cpu} == {"cpu"}
    code, _, err = run(capsys, "recommend", "--model", llama_folder, "--hardware", "rtx4090-24gb", "--gpus", "2")
    assert code == 2 and "--gpus" in err
    code, _, err = run(capsys, "recommend", "--model", llama_folder, "--hardware", "rtx4090-24gb",
                       "--method", "lora", "--zero", "3")
    assert code == 2 and "no option" in err and "tuiwiz estimate" in err


def test_recommend_writes_the_flags_into_the_profile(capsys, llama_folder, tmp_path):
    target = tmp_path / "p.yaml"
    code, _, err = run(capsys, "recommend", "--model", llama_folder, "--hardware", "rtx4090-24gb", "--seq-len", "1304",
                       "--method", "lora", "--rank", "8", "--weights-dtype", "bfloat16", "--attn", "eager",
                       "--packing", "--data", "d.jsonl", "--write", str(target))
    assert code == 0, err
    profile = load_profile(target).profile
    assert (profile.method.r, profile.method.lora_alpha, profile.model.dtype, profile.model.attn_implementation,
            profile.data.packing, profile.data.max_length) == (8, 16, "bfloat16", "eager", True, 1304)
