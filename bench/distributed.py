"""Throughput of several processes on this machine: DDP against one process, and the ZeRO stages.

Each configuration runs the real `tuiwiz --profile` on the demo model, with the same
effective batch; figures are training tokens per second from the run's `run_end`
event and the whole command's wall time. DeepSpeed's ops are compiled once before
timing (a warm-up run), as a user's second run would find them.

    python bench/distributed.py [--steps 60] [--json OUT.json]
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
