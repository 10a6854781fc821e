"""tuiwiz's runner against a bare TRL SFTTrainer script: the same LoRA SFT, alternately.

Both train the demo model on demo:alpaca with the quickstart's hyperparameters.
Reports training tokens per second (tokens seen / train_runtime, as both count
them) and whole-command wall time, per run and as medians, and their ratios.

    python bench/vs_trl.py [--repeats 3] [--json OUT.json]
    python bench/vs_trl.py --from-json bench/results/vs-trl.json   # print the docs block
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

BARE = r'''
import json, resource, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

model_dir, data_file, out_dir, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
rows = []
for line in open(data_file):
    r = json.loads(line)
    rows.append({"prompt": [{"role": "user", "content": r["instruction"]}],
                 "completion": [{"role": "assistant", "content": r["output"]}]})
config = SFTConfig(
    output_dir=out_dir, num_train_epochs=settings["epochs"], learning_rate=settings["lr"],
    per_device_train_batch_size=settings["batch"], lr_scheduler_type="cosine", warmup_steps=settings["warmup"],
    logging_steps=5, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, bf16=False,
    max_length=settings["max_length"], completion_only_loss=True, seed=42, data_seed=42,
    include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
    # what tuiwiz resolves, stated: TRL's own defaults differ (gradient checkpointing on, fused AdamW)
    gradient_checkpointing=settings["gradient_checkpointing"], optim=settings["optim"],
    weight_decay=settings["weight_decay"], max_grad_norm=settings["max_grad_norm"],
    packing=settings.get("packing", False),  # TRL's own packing (bfd), as a user would turn it on
)
lora = LoraConfig(task_type="CAUSAL_LM", r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=0.0,
                  target_modules="all-linear")
trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                     peft_config=lora)
open(out_dir + ".args.json", "w").write(trainer.args.to_json_string())  # resolved, to diff with tuiwiz's
from transformers import TrainerCallback
class FirstStepTime(TrainerCallback):
    at = None
    def on_step_end(self, args, state, control, **kw):
        FirstStepTime.at = FirstStepTime.at or time.time()
trainer.add_callback(FirstStepTime())
result = trainer.train()
trainer.save_model(out_dir)
saved_at = time.time()  # what follows is the interpreter's exit
runtime = result.metrics["train_runtime"]
print(json.dumps({"train_runtime": runtime, "tokens_per_second": trainer.state.num_input_tokens_seen / runtime,
                  "train_loss": result.metrics["train_loss"], "steps": trainer.state.global_step,
                  "first_step_at": FirstStepTime.at, "saved_at": saved_at,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_tuiwiz(work: Path, env: dict, profile: Path) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    run = sorted((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime)[-1]
    end = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()
           if '"run_end"' in line][-1]
    return {"wall_s": wall, "tokens_per_second": end["metrics"]["train_tokens_per_second"],
            "train_loss": end["metrics"]["train_loss"], "load": load}


def run_bare(work: Path, env: dict, settings: dict) -> dict:
    from tuiwiz.demo.build import demo_model_dir, ensure_demo_dataset

    script = work / "bare.py"
    script.write_text(BARE)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script), str(demo_model_dir()), str(ensure_demo_dataset("alpaca")),
         str(work / "bare-out"), json.dumps(settings)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    return {"wall_s": wall, "load": load, **json.loads(result.stdout.strip().splitlines()[-1])}


def docs_block(figures: dict) -> str:
    """docs/benchmarks.md's table and summary, from the results file this script writes."""
    runs, median = figures["runs"], figures["median"]
    loads = [r["load"] for rows in runs.values() for r in rows if "load" in r]
    where = f", load average {min(loads):.1f} to {max(loads):.1f} at their starts" if loads else ""
    lines = [f"| run (alternating, {figures['repeats']} pairs{where}) | tuiwiz tokens/s | bare TRL tokens/s | "
             "tuiwiz wall (s) | bare TRL wall (s) | tuiwiz final loss | bare TRL final loss |",
             "|---|---|---|---|---|---|---|"]
    for i, (ours, bare) in enumerate(zip(runs["tuiwiz"], runs["bare_trl"], strict=True), 1):
        lines.append(f"| {i} | {ours['tokens_per_second']:,.0f} | {bare['tokens_per_second']:,.0f} | "
                     f"{ours['wall_s']:.1f} | {bare['wall_s']:.1f} | {ours['train_loss']:.7f} | "
                     f"{bare['train_loss']:.7f} |")
    lines.append(f"| median | {median['tuiwiz']['tokens_per_second']:,.0f} | "
                 f"{median['bare_trl']['tokens_per_second']:,.0f} | {median['tuiwiz']['wall_s']:.1f} | "
                 f"{median['bare_trl']['wall_s']:.1f} | | |")
    ours_tps = [r["tokens_per_second"] for r in runs["tuiwiz"]]
    pairs = [o["tokens_per_second"] / b["tokens_per_second"] for o, b in zip(runs["tuiwiz"], runs["bare_trl"])]
    faster = sum(ratio > 1 for ratio in pairs)
    lines += ["", f"Throughput ratio (median) {median['throughput_ratio']:.3f}, whole-command wall-time ratio "
              f"{median['wall_ratio']:.2f}. Pair by pair the throughput ratio runs from {min(pairs):.2f} to "
              f"{max(pairs):.2f} (tuiwiz faster in {faster} of {len(pairs)}); tuiwiz's own runs spread from "
              f"{min(ours_tps):,.0f} to {max(ours_tps):,.0f} tokens/s."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--from-json", help="print the docs block of a results file and exit")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-vs-trl-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1"}
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])
    from tuiwiz.demo.build import ensure_demo_datasets, ensure_demo_model

    ensure_demo_model(), ensure_demo_datasets()  # built once, outside the timings
    data = yaml.safe_load((ROOT / "profiles/quickstart.yaml").read_text())
    data["output"]["runs_dir"] = str(work / "runs")
    data["output"]["report_to"] = []  # as the bare script: tuiwiz's default TensorBoard log is not its work
    data["training"]["save_steps"] = 10_000
    profile = work / "quickstart.yaml"
    profile.write_text(yaml.safe_dump(data))
    t, m = data["training"], data["method"]
    from tuiwiz.profile.schema import TrainingConfig

    resolved = TrainingConfig(**t)  # the defaults the profile leaves to tuiwiz
    settings = {"epochs": t["num_train_epochs"], "lr": t["learning_rate"], "batch": t["per_device_train_batch_size"],
                "warmup": t["warmup_steps"], "max_length": data["data"]["max_length"], "r": m["r"],
                "alpha": m["lora_alpha"], "gradient_checkpointing": resolved.gradient_checkpointing,
                "optim": resolved.optim, "weight_decay": resolved.weight_decay, "max_grad_norm": resolved.max_grad_norm}
    rows = {"tuiwiz": [], "bare_trl": []}
    for i in range(args.repeats):
        for name in (("tuiwiz", "bare_trl") if i % 2 == 0 else ("bare_trl", "tuiwiz")):
            figures = run_tuiwiz(work, env, profile) if name == "tuiwiz" else run_bare(work, env, settings)
            rows[name].append(figures)
            print(name, json.dumps(figures), flush=True)
    summary = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "tokens_per_second")}
        for name, runs in rows.items()
    }
    summary["throughput_ratio"] = summary["tuiwiz"]["tokens_per_second"] / summary["bare_trl"]["tokens_per_second"]
    summary["wall_ratio"] = summary["tuiwiz"]["wall_s"] / summary["bare_trl"]["wall_s"]
    out = {"runs": rows, "median": summary, "repeats": args.repeats, "cpu_count": os.cpu_count()}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
