"""tuiwiz's GRPO beside a bare TRL GRPO script with the same settings, alternating: steps per second as the
Trainer counts them (train_steps_per_second), medians and ranges, on the demo model.

Both sample the same prompts (demo:arithmetic, as chat messages), generate with transformers, score with the
same reward function (tuiwiz's exact_answer, imported by the bare script too) and train LoRA on every linear
layer with the same settings. tuiwiz runs through `tuiwiz --profile` (its runner, callbacks and live samples
included); the bare script is TRL alone. Only the Trainer's own time is compared, not start-up.

    python bench/grpo_vs_trl.py [--repeats 5] [--steps 40] [--json bench/results/grpo-vs-trl.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LAST_WORD = r"(\w+)\W*$"
SETTINGS = {"r": 16, "alpha": 32, "learning_rate": 3e-4, "batch": 16, "generations": 8, "completion": 16,
            "temperature": 1.0, "max_length": 64}

BARE = r'''
import json, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import GRPOConfig, GRPOTrainer

from tuiwiz.profile.schema import ExactAnswerReward
from tuiwiz.train.rewards import exact_answer_reward

model_dir, data_file, out_dir, s = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": str(r["answer"])}
        for r in map(json.loads, open(data_file))]
config = GRPOConfig(
    output_dir=out_dir, max_steps=s["steps"], learning_rate=s["learning_rate"], per_device_train_batch_size=s["batch"],
    lr_scheduler_type="cosine", logging_steps=5, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
    bf16=False, seed=42, data_seed=42, dataloader_num_workers=0, num_generations=s["generations"],
    max_completion_length=s["completion"], temperature=s["temperature"], beta=0.0, log_completions=False,
    # what tuiwiz resolves, stated: TRL's own defaults differ (gradient checkpointing on)
    gradient_checkpointing=False, optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
)
lora = LoraConfig(task_type="CAUSAL_LM", r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.0, target_modules="all-linear")
reward = exact_answer_reward(ExactAnswerReward(pattern=s["pattern"]))
trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer, peft_config=lora)
result = trainer.train()
print(json.dumps({"steps_per_second": result.metrics["train_steps_per_second"],
                  "train_runtime": result.metrics["train_runtime"]}))
'''


def tuiwiz_profile(steps: int, work: Path, name: str) -> dict:
    s = SETTINGS
    return {"version": 1, "task": "grpo", "model": {"name_or_path": "demo"},
            "data": {"path": "demo:arithmetic", "max_length": s["max_length"]},
            "method": {"type": "lora", "r": s["r"], "lora_alpha": s["alpha"], "lora_dropout": 0.0},
            "grpo": {"num_generations": s["generations"], "max_completion_length": s["completion"],
                     "temperature": s["temperature"], "rewards": [{"type": "exact_answer", "pattern": LAST_WORD}]},
            "training": {"max_steps": steps, "learning_rate": s["learning_rate"], "warmup_steps": 0,
                         "per_device_train_batch_size": s["batch"], "logging_steps": 5, "save_steps": 10_000},
            "output": {"runs_dir": str(work / "runs"), "run_name": name, "report_to": []}}


def run_tuiwiz(work: Path, env: dict, name: str, steps: int) -> dict:
    profile = work / f"{name}.yaml"
    profile.write_text(yaml.safe_dump(tuiwiz_profile(steps, work, name)))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    run = max((work / "runs").glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    metrics = [e for e in events if e["type"] == "run_end"][-1]["metrics"]
    return {"steps_per_second": metrics["train_steps_per_second"], "train_runtime": metrics["train_runtime"],
            "wall_s": round(time.perf_counter() - start, 2)}


def run_bare(work: Path, env: dict, steps: int) -> dict:
    from tuiwiz.demo.build import demo_model_dir, resolve_demo_uri

    script = work / "bare_grpo.py"
    script.write_text(BARE)
    start = time.perf_counter()
    data = resolve_demo_uri("demo:arithmetic")
    result = subprocess.run([sys.executable, str(script), str(demo_model_dir()), str(data), str(work / "bare-out"),
                             json.dumps({**SETTINGS, "steps": steps, "pattern": LAST_WORD})],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "wall_s": round(time.perf_counter() - start, 2)}


def docs_block(f: dict) -> str:
    """The line docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    rates, s = f["steps_per_second"], f["settings"]
    return (f"GRPO steps/s ({f['repeats']} alternating runs of {f['steps']} steps, {s['generations']} "
            f"completions of up to {s['completion']} tokens for each of {s['batch'] // s['generations']}"
            f" prompts a step): tuiwiz {rates['tuiwiz']['median']:.3f} ({rates['tuiwiz']['range'][0]:.3f}-"
            f"{rates['tuiwiz']['range'][1]:.3f}), bare TRL {rates['bare_trl']['median']:.3f} "
            f"({rates['bare_trl']['range'][0]:.3f}-{rates['bare_trl']['range'][1]:.3f}): "
            f"{f['tuiwiz_over_bare']:.2f}x.\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-grpo-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])
    from tuiwiz.demo.build import ensure_demo_dataset, ensure_demo_model

    ensure_demo_model()  # built once, outside the timings
    ensure_demo_dataset("arithmetic")
    runs: dict[str, list[dict]] = {"tuiwiz": [], "bare_trl": []}
    for i in range(args.repeats):
        for name in (("tuiwiz", "bare_trl") if i % 2 == 0 else ("bare_trl", "tuiwiz")):
            figures = run_tuiwiz(work, env, f"speed-{i}", args.steps) if name == "tuiwiz" else \
                run_bare(work, env, args.steps)
            runs[name].append(figures)
            print(name, json.dumps(figures), flush=True)
    summary = {name: {"median": statistics.median(r["steps_per_second"] for r in rows),
                      "range": [min(r["steps_per_second"] for r in rows), max(r["steps_per_second"] for r in rows)]}
               for name, rows in runs.items()}
    import trl

    out = {"trl": trl.__version__, "cpu_count": os.cpu_count(), "settings": SETTINGS, "steps": args.steps,
           "repeats": args.repeats, "runs": runs, "steps_per_second": summary,
           "tuiwiz_over_bare": round(summary["tuiwiz"]["median"] / summary["bare_trl"]["median"], 3)}
    print(docs_block(out), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
