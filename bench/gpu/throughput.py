"""Training throughput on the GPU: tuiwiz's runner against a bare TRL SFTTrainer script doing the same LoRA SFT,
and the bare script again with Liger kernels on (use_liger_kernel) where liger-kernel imports and a GPU is there.

bench/vs_trl.py makes the same comparison on the CPU with the demo model; here the model is a Qwen2.5-0.5B body
(random weights, the demo's tokenizer and vocabulary, saved locally: nothing is downloaded) and the rows are
demo:alpaca rows joined sixteen at a time, a few hundred tokens each. Both sides count tokens per second as
vs_trl.py does: tokens seen (padding not counted) over the Trainer's train_runtime.

    python -m bench.gpu.throughput --work DIR --out throughput.json [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.gpu import models
from bench.gpu.runner_check import ROOT, latest_run, tuiwiz_env

JOIN = 16  # demo rows per training row
ARCH = "qwen2.5-0.5b"

BARE = r'''
import json, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

model_dir, data_file, out_dir, s = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
cuda = torch.cuda.is_available()
set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                             device_map={"": 0} if cuda else None)
rows = []
for line in open(data_file):
    r = json.loads(line)
    rows.append({"prompt": [{"role": "user", "content": r["instruction"]}],
                 "completion": [{"role": "assistant", "content": r["output"]}]})
config = SFTConfig(
    output_dir=out_dir, max_steps=s["max_steps"], learning_rate=s["lr"], per_device_train_batch_size=s["batch"],
    lr_scheduler_type=s["scheduler"], warmup_steps=s["warmup"], logging_steps=s["logging_steps"],
    save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=not cuda, bf16=cuda,
    max_length=s["max_length"], completion_only_loss=True, seed=42, include_num_input_tokens_seen="non_padding",
    dataloader_num_workers=0, gradient_checkpointing=s["gradient_checkpointing"], optim=s["optim"],
    weight_decay=s["weight_decay"], max_grad_norm=s["max_grad_norm"], use_liger_kernel=s["liger"],
)
lora = LoraConfig(task_type="CAUSAL_LM", r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.0, target_modules="all-linear")
trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                     peft_config=lora)
result = trainer.train()
runtime = result.metrics["train_runtime"]
peak = torch.cuda.max_memory_reserved() if cuda else None
print(json.dumps({"tokens_per_second": trainer.state.num_input_tokens_seen / runtime, "train_runtime": runtime,
                  "train_loss": result.metrics["train_loss"], "gpu_reserved_peak": peak}))
'''


def build_model(work: Path, tiny: bool) -> Path:
    """A Qwen2.5-0.5B-shaped model with random weights and the demo's tokenizer, saved where both sides load it."""
    import torch
    import transformers

    from tuiwiz.demo.build import ensure_demo_model

    demo = ensure_demo_model()
    target = work / "model"
    if (target / "config.json").exists():
        return target
    tokenizer = transformers.AutoTokenizer.from_pretrained(demo)
    values = dict(models.config(ARCH, tiny))
    values.pop("architectures", None)
    values.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is quicker there
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    for name in ("generation_config.json",):
        if (demo / name).exists():
            shutil.copy(demo / name, target / name)
    return target


def build_rows(work: Path) -> Path:
    from tuiwiz.demo.build import ensure_demo_dataset

    rows = [json.loads(line) for line in ensure_demo_dataset("alpaca").read_text().splitlines() if line.strip()]
    joined = []
    for i in range(len(rows)):
        group = [rows[(i + k) % len(rows)] for k in range(JOIN)]
        joined.append({"instruction": " ".join(r["instruction"] for r in group), "input": "",
                       "output": " ".join(r["output"] for r in group)})
    path = work / "long-alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in joined))
    return path


def settings(dry_run: bool) -> dict:
    from tuiwiz.profile.schema import TrainingConfig

    resolved = TrainingConfig(max_steps=3 if dry_run else 40)  # the defaults tuiwiz leaves in place
    return {"max_steps": resolved.max_steps, "lr": 2e-4, "batch": 8, "scheduler": resolved.lr_scheduler_type,
            "warmup": resolved.warmup_steps, "logging_steps": 1 if dry_run else 10, "max_length": 512, "r": 16,
            "alpha": 32, "gradient_checkpointing": resolved.gradient_checkpointing, "optim": resolved.optim,
            "weight_decay": resolved.weight_decay, "max_grad_norm": resolved.max_grad_norm}


def write_profile(work: Path, model: Path, data: Path, s: dict) -> Path:
    profile = {"version": 1, "task": "sft", "model": {"name_or_path": str(model)},
               "data": {"path": str(data), "max_length": s["max_length"]},
               "method": {"type": "lora", "r": s["r"], "lora_alpha": s["alpha"], "lora_dropout": 0.0},
               "training": {"max_steps": s["max_steps"], "learning_rate": s["lr"],
                            "per_device_train_batch_size": s["batch"], "logging_steps": s["logging_steps"],
                            "save_steps": 10_000},
               "output": {"runs_dir": str(work / "runs")}}
    path = work / "throughput.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def _timed(cmd: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess | None, float, str]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, f"timeout after {timeout:.0f} s"
    return proc, time.perf_counter() - start, (proc.stdout + proc.stderr)[-2500:]


def run_tuiwiz(profile: Path, work: Path, env: dict, timeout: float) -> dict:
    proc, wall, tail = _timed([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env, timeout)
    run = latest_run(work)
    if proc is None or proc.returncode != 0 or run is None:
        return {"status": "failed", "wall_s": round(wall, 1), "tail": tail}
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    end = next(e for e in reversed(events) if e.get("type") == "run_end")
    memory = [e["memory"] for e in events if e.get("type") == "log" and e.get("memory")]
    return {"status": "ok", "wall_s": round(wall, 1), "tokens_per_second": end["metrics"]["train_tokens_per_second"],
            "train_runtime": end["metrics"].get("train_runtime"), "train_loss": end["metrics"].get("train_loss"),
            "gpu_reserved_peak_mb": max((m.get("gpu_reserved_mb", 0) for m in memory), default=None)}


def run_bare(model: Path, data: Path, work: Path, env: dict, s: dict, liger: bool, timeout: float) -> dict:
    script = work / "bare_trl.py"
    script.write_text(BARE)
    out_dir = work / ("bare-liger" if liger else "bare")
    proc, wall, tail = _timed([sys.executable, str(script), str(model), str(data), str(out_dir),
                               json.dumps({**s, "liger": liger})], env, timeout)
    if proc is None or proc.returncode != 0:
        return {"status": "failed", "wall_s": round(wall, 1), "tail": tail}
    return {"status": "ok", "wall_s": round(wall, 1), **json.loads(proc.stdout.strip().splitlines()[-1])}


def liger_available() -> str | None:
    """Why Liger is not tried here, or None when it is."""
    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.cuda.is_available():
        return "Liger's Triton kernels need a GPU"
    try:
        import liger_kernel  # noqa: F401
    except ImportError as exc:
        return f"liger-kernel does not import: {exc}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, three steps, on the CPU")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for each of the (up to) three runs")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    env = tuiwiz_env(args.work)
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])  # the demo this process builds is the runs' too
    started = time.perf_counter()
    model, data = build_model(args.work, args.dry_run), build_rows(args.work)
    s = settings(args.dry_run)
    profile = write_profile(args.work, model, data, s)
    result: dict = {"model": f"{ARCH} body{' (tiny)' if args.dry_run else ''}, demo tokenizer",
                    "settings": s, "rows_joined": JOIN, "prepare_s": round(time.perf_counter() - started, 1)}
    result["tuiwiz"] = run_tuiwiz(profile, args.work, env, args.timeout)
    result["bare_trl"] = run_bare(model, data, args.work, env, s, False, args.timeout)
    why_not = liger_available()
    result["bare_trl_liger"] = ({"status": "skipped", "reason": why_not} if why_not else
                                run_bare(model, data, args.work, env, s, True, args.timeout))
    t, b, lg = result["tuiwiz"], result["bare_trl"], result["bare_trl_liger"]
    if t["status"] == b["status"] == "ok":
        result["throughput_ratio"] = round(t["tokens_per_second"] / b["tokens_per_second"], 4)
        result["wall_ratio"] = round(t["wall_s"] / b["wall_s"], 4)
    if lg["status"] == "ok" and b["status"] == "ok":
        result["liger_speedup"] = round(lg["tokens_per_second"] / b["tokens_per_second"], 4)
    result["status"] = "ok" if t["status"] == b["status"] == "ok" else "failed"
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result.get(k) for k in ("status", "throughput_ratio", "wall_ratio", "liger_speedup")}))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
