"""Throughput of several processes on this machine: DDP against one process, and the ZeRO stages.

Each configuration runs the real `tuiwiz --profile` on the demo model, with the same
effective batch; figures are training tokens per second from the run's `run_end`
event and the whole command's wall time. DeepSpeed's ops are compiled once before
timing (a warm-up run), as a user's second run would find them.

    python bench/distributed.py [--steps 60] [--json OUT.json]
    python bench/distributed.py --from-json bench/results/distributed.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = [
    # name, base profile, micro-batch, distributed section
    ("lora 1 process", "quickstart.yaml", 16, {"strategy": "single"}),
    ("lora DDP 2 ranks", "quickstart.yaml", 8, {"strategy": "ddp", "num_processes": 2}),
    ("full 1 process", "demo-full.yaml", 16, {"strategy": "single"}),
    ("full DDP 2 ranks", "demo-full.yaml", 8, {"strategy": "ddp", "num_processes": 2}),
    ("full ZeRO-2", "demo-full.yaml", 8, {"strategy": "zero2", "num_processes": 2}),
    ("full ZeRO-3", "demo-full.yaml", 8, {"strategy": "zero3", "num_processes": 2}),
    ("full ZeRO-3 offload", "demo-full.yaml", 8,
     {"strategy": "zero3", "num_processes": 2, "offload_optimizer": True, "offload_params": True}),
]


def run(work: Path, env: dict, name: str, base: str, batch: int, dist: dict, steps: int) -> dict:
    data = yaml.safe_load((ROOT / "profiles" / base).read_text())
    data["output"] = {"runs_dir": str(work / "runs"), "run_name": name.replace(" ", "-")}
    data["training"].update(max_steps=steps, per_device_train_batch_size=batch, save_steps=100_000,
                            logging_steps=10)
    data["training"].pop("num_train_epochs", None)
    data["distributed"] = dist
    profile = work / f"{name.replace(' ', '-')}.yaml"
    profile.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    folder = sorted((work / "runs").glob(f"{name.replace(' ', '-')}-*"), key=lambda p: p.stat().st_mtime)[-1]
    end = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if '"run_end"' in line][-1]
    return {"config": name, "wall_s": round(wall, 1), "tokens_per_second": end["metrics"]["train_tokens_per_second"],
            "train_loss": round(end["metrics"]["train_loss"], 4)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json")
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-dist-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1"}
    for name, base, batch, dist in CONFIGS[4:]:  # warm-up: compile DeepSpeed's ops once
        run(work, env, "warmup " + name, base, batch, dist, 2)
    rows = []
    for config in CONFIGS:
        rows.append(run(work, env, *config, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    out = {"steps": args.steps, "cpu_count": os.cpu_count(), "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


LABELS = {  # a configuration's name in the results file, as the docs' table shows it
    "lora 1 process": "LoRA, 1 process", "lora DDP 2 ranks": "LoRA, DDP 2 ranks",
    "full 1 process": "full, 1 process", "full DDP 2 ranks": "full, DDP 2 ranks",
    "full ZeRO-2": "full, ZeRO-2", "full ZeRO-3": "full, ZeRO-3",
    "full ZeRO-3 offload": "full, ZeRO-3 + optimizer and parameter offload",
}


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    lines = [
        f"{f['steps']} optimizer steps a configuration, on {f['cpu_count']} CPU cores.",
        "",
        "| configuration | tokens/s | wall (s) | final train loss |",
        "|---|---|---|---|",
    ]
    lines += [f"| {LABELS.get(r['config'], r['config'])} | {r['tokens_per_second']:,.0f} | {r['wall_s']:.1f} "
              f"| {r['train_loss']:.4f} |" for r in f["runs"]]
    by = {r["config"]: r for r in f["runs"]}

    def speed(a: str, b: str) -> str:
        return f"{by[a]['tokens_per_second'] / by[b]['tokens_per_second']:.2f}x"

    several = [r["train_loss"] for r in f["runs"] if r["config"].startswith("full") and r["config"] != "full 1 process"]
    if len(set(several)) == 1:
        losses = f"The {len(several)} full fine-tuning runs of several processes end at the same train loss, " \
                 f"{several[0]:.4f}"
    else:
        losses = "The full fine-tuning runs of several processes end at train losses " + \
                 ", ".join(f"{x:.4f}" for x in several)
    lines += [
        "",
        f"DDP's tokens/s are {speed('lora DDP 2 ranks', 'lora 1 process')} one process's with LoRA, "
        f"{speed('full DDP 2 ranks', 'full 1 process')} with full fine-tuning; against full DDP's, ZeRO-2's are "
        f"{speed('full ZeRO-2', 'full DDP 2 ranks')}, ZeRO-3's {speed('full ZeRO-3', 'full DDP 2 ranks')} "
        f"({speed('full ZeRO-3', 'full ZeRO-2')} ZeRO-2's) and ZeRO-3's with offload "
        f"{speed('full ZeRO-3 offload', 'full DDP 2 ranks')} ({speed('full ZeRO-3 offload', 'full ZeRO-3')} "
        f"ZeRO-3's). {losses}; the single process at {by['full 1 process']['train_loss']:.4f}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
