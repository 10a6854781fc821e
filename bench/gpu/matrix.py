"""The GPU calibration matrix: measured peak memory of real training steps against tuiwiz's estimate, point by point.

Each point (architecture x method x tokens x micro-batch x gradient checkpointing) builds a randomly initialised
model of a real architecture's shape on the GPU (bench/gpu/models.py: nothing is downloaded), puts the method on
it with the runner's own code (tuiwiz.train.modeling.apply_method, trl's fused LM head as SFTTrainer adds it),
takes a few optimizer steps and reads torch.cuda.max_memory_reserved() and max_memory_allocated(). The estimate
comes from the same settings through the path `tuiwiz estimate --config ... --method ... --seq-len ...` takes:
Settings -> apply_settings -> Plan.from_profile -> estimate. The ratio compares like with like: the estimate less
its CUDA-context term against max_memory_reserved (the context lives outside PyTorch's allocator; the points
measure it apart as `non_torch`).

Points run in priority order in one worker process (imports paid once) under a per-point time guard: a point past
it is killed and recorded as a timeout, and a fresh worker takes the rest; an out-of-memory error is recorded and
the worker restarts clean. Points whose estimate exceeds the card by far are skipped and say so.

    python -m bench.gpu.matrix --out matrix.json [--budget 210]     # on the GPU machine (bench/gpu/run.sh)
    python -m bench.gpu.matrix --dry-run [--out matrix.json]        # here, on the CPU, tiny shapes (~30 s)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu import models

ROOT = Path(__file__).resolve().parent.parent.parent

# (architecture, method, tokens, micro-batch, gradient checkpointing), most informative first: the budget cuts
# the tail. 0.5B gives every term cheaply; 8B is what people rent a GPU for; 3B and 1.5B fill in between.
POINTS = (
    ("qwen2.5-0.5b", "lora", 512, 1, False),
    ("qwen2.5-0.5b", "lora", 2048, 4, False),
    ("qwen2.5-0.5b", "lora", 2048, 4, True),
    ("qwen2.5-0.5b", "full", 512, 4, False),
    ("qwen2.5-0.5b", "full", 2048, 1, True),
    ("qwen2.5-0.5b", "qlora", 512, 1, False),
    ("qwen2.5-0.5b", "qlora", 2048, 4, True),
    ("llama3-8b", "lora", 512, 1, True),
    ("llama3-8b", "lora", 2048, 4, True),
    ("llama3-8b", "qlora", 512, 4, False),
    ("llama3-8b", "qlora", 2048, 1, True),
    ("llama3-8b", "qlora", 2048, 4, True),
    ("llama3-8b", "lora", 2048, 1, False),
    ("llama3-8b", "full", 512, 1, True),  # about 150 GiB estimated: skipped unless the card is that large
    ("qwen2.5-3b", "lora", 2048, 4, True),
    ("qwen2.5-3b", "qlora", 512, 4, False),
    ("qwen2.5-3b", "full", 512, 1, True),
    ("qwen2.5-3b", "lora", 512, 1, False),
    ("qwen2.5-3b", "qlora", 2048, 1, True),
    ("qwen2.5-1.5b", "lora", 512, 4, False),
    ("qwen2.5-1.5b", "full", 2048, 1, True),
    ("qwen2.5-1.5b", "qlora", 2048, 4, False),
    ("qwen2.5-1.5b", "lora", 2048, 1, True),
    ("qwen2.5-1.5b", "full", 512, 4, False),
)
DRY_SEQ_DIVISOR = 8  # the dry run's sequences: 64 and 256 tokens
SKIP_FACTOR = 1.25  # run a point whose estimate is up to this much above the card: the estimate errs high
STEPS = {"cuda": 3, "cpu": 2}
POINT_TIMEOUT = {"cuda": 75.0, "cpu": 40.0}


def point_id(p: dict) -> str:
    return f"{p['arch']}/{p['method']}/{p['seq']}/b{p['mb']}/gc{int(p['gc'])}"


def matrix_points(dry_run: bool) -> list[dict]:
    device = "cpu" if dry_run else "cuda"
    out = []
    for arch, method, seq, mb, gc in POINTS:
        p = {"arch": arch, "method": method, "seq": seq // DRY_SEQ_DIVISOR if dry_run else seq, "mb": mb, "gc": gc,
             "tiny": dry_run, "device": device, "steps": STEPS[device]}
        out.append({"id": point_id(p), **p})
    return out


# ---------------------------------------------------------------- the estimate, as `tuiwiz estimate` makes it


def point_model(point: dict):
    from tuiwiz.plan.modelinfo import model_from_config

    return model_from_config(models.config(point["arch"], point["tiny"]), point["arch"])


def point_profile(point: dict, model=None):
    """The profile `tuiwiz estimate --method M --micro-batch B --seq-len S [--gradient-checkpointing]` describes;
    the worker trains with its settings (LoRA rank and targets, dropout, optimizer, clipping)."""
    from tuiwiz.cli.settings import Settings, apply_settings
    from tuiwiz.profile.schema import Profile

    settings = Settings(method=point["method"], micro_batch=point["mb"], seq_len=point["seq"],
                        gradient_checkpointing=point["gc"])
    return apply_settings(Profile(), settings, model or point_model(point), distributed=False)


def estimate_point(point: dict) -> dict:
    from dataclasses import asdict

    from tuiwiz.plan.memory import Plan, estimate

    model = point_model(point)
    plan = Plan.from_profile(point_profile(point, model), model, device=point["device"], bf16=True)
    est = estimate(model, plan)
    b = est.per_device
    return {"total": est.total, "context": b.context, "comparable": est.total - b.context, "terms": b.terms(),
            "parameters": model.num_parameters, "trainable": est.trainable_parameters, "plan": asdict(plan)}


# ---------------------------------------------------------------- the driver and its time guard


def _read_events(path: Path, seen: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], seen
    text = path.read_text()
    lines = text.splitlines()
    complete = lines if text.endswith("\n") else lines[:-1]  # a line being written waits for the next read
    return [json.loads(line) for line in complete[seen:]], len(complete)


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def run_points(points: list[dict], worker_cmd: list[str], *, point_timeout: float, deadline: float,
               work: Path, log=None, env: dict | None = None) -> dict[str, dict]:
    """Run ``points`` in worker processes (``worker_cmd`` + [points file, events file]); returns each point's
    record by id. A point past ``point_timeout`` seconds, or running at ``deadline`` (time.monotonic()), is
    killed and recorded; a worker that dies is replaced while points remain."""
    results: dict[str, dict] = {}
    pending = list(points)
    attempt = 0
    while pending:
        if time.monotonic() >= deadline:
            break
        attempt += 1
        todo, events, stderr = (work / f"points-{attempt}.json", work / f"events-{attempt}.jsonl",
                                work / f"worker-{attempt}.log")
        todo.write_text(json.dumps(pending))
        with open(stderr, "w") as err:
            proc = subprocess.Popen([*worker_cmd, str(todo), str(events)], stdout=err, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        seen, current, started, killed, begun = 0, None, 0.0, None, False
        while True:
            exited = proc.poll() is not None  # then this read has everything it wrote
            batch, seen = _read_events(events, seen)
            for event in batch:
                if event["event"] == "start":
                    current, started, begun = event["id"], time.monotonic(), True
                elif event["event"] == "done":
                    results[event["id"]] = event["result"]
                    current = None
            if exited:
                break
            now = time.monotonic()
            if current is not None and now - started > point_timeout:
                killed = f"timeout: past the {point_timeout:.0f} s a point may take"
            elif now >= deadline:
                killed = "timeout: the matrix's budget ran out during this point"
            if killed:
                os.killpg(proc.pid, 9)
                proc.wait()
                break
            time.sleep(0.1)
        if current is not None and current not in results:
            reason = killed or f"the worker died (exit {proc.returncode}): {_tail(stderr, 600)}"
            results[current] = {"status": "timeout" if killed else "error", "reason": reason,
                                "seconds": round(time.monotonic() - started, 1)}
        if log:
            log.write(_tail(stderr, 20000))
            log.flush()
        done_now = {p["id"] for p in pending if p["id"] in results}
        if not begun and not done_now:  # the worker never started a point: it cannot, so stop trying
            for p in pending:
                results[p["id"]] = {"status": "error", "reason": f"the worker failed before its first point "
                                    f"(exit {proc.returncode}): {_tail(stderr, 1500)}"}
            break
        pending = [p for p in pending if p["id"] not in results]
    for p in pending:
        results[p["id"]] = {"status": "not_run", "reason": "the matrix's time budget ran out first"}
    return results


def card_bytes(device: str) -> int | None:
    """The GPU's memory, from NVML (the driver imports no torch)."""
    if device != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML: run every point, the out-of-memory ones say so
        return None


def compare(point: dict, estimate: dict, result: dict) -> dict:
    row = {"id": point["id"], "point": {k: point[k] for k in ("arch", "method", "seq", "mb", "gc", "steps")},
           "estimate": estimate, **result}
    peak = (result.get("measured") or {}).get("peak")
    if result.get("status") == "ok" and peak:
        row["ratio"] = round(estimate["comparable"] / peak, 4)
        allocated = result["measured"].get("max_allocated")
        if allocated:
            row["ratio_allocated"] = round(estimate["comparable"] / allocated, 4)
    return row


def summarize(rows: list[dict]) -> dict:
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    ratios = [r["ratio"] for r in rows if "ratio" in r and math.isfinite(r["ratio"])]
    out: dict = {"points": len(rows), "statuses": statuses, "measured": len(ratios)}
    if ratios:
        out.update(median_ratio=round(statistics.median(ratios), 4), min_ratio=min(ratios), max_ratio=max(ratios),
                   within_10pct=sum(abs(x - 1) <= 0.10 + 1e-9 for x in ratios),  # 1.10 is within 10%
                   within_25pct=sum(abs(x - 1) <= 0.25 + 1e-9 for x in ratios),
                   underestimates=sum(x < 1 for x in ratios))
    return out


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the code path here")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: matrix.json in a temporary folder)")
    parser.add_argument("--budget", type=float, default=210.0, help="seconds for the whole matrix (default 210)")
    parser.add_argument("--point-timeout", type=float, help="seconds one point may take (cuda 75, cpu 40)")
    parser.add_argument("--only", help="comma list of point ids or id prefixes (e.g. qwen2.5-0.5b/lora)")
    parser.add_argument("--log", type=Path, help="append the workers' output here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget
    out = args.out or Path(tempfile.mkdtemp(prefix="tuiwiz-gpu-matrix-")) / "matrix.json"
    device = "cpu" if args.dry_run else "cuda"
    points = matrix_points(args.dry_run)
    if args.only:
        prefixes = [s.strip() for s in args.only.split(",") if s.strip()]
        points = [p for p in points if any(p["id"].startswith(x) for x in prefixes)]
    estimates = {p["id"]: estimate_point(p) for p in points}
    card = card_bytes(device)
    results: dict[str, dict] = {}
    runnable = []
    for p in points:
        if card and estimates[p["id"]]["total"] > SKIP_FACTOR * card:
            results[p["id"]] = {"status": "skipped", "reason": f"estimated {estimates[p['id']]['total'] / 2**30:.1f}"
                                f" GiB, over {SKIP_FACTOR} x the card's {card / 2**30:.1f} GiB"}
        else:
            runnable.append(p)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    if device == "cpu":  # glibc hands tensors' memory back when freed: each point's RSS high-water mark is its own
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    log = open(args.log, "a") if args.log else None
    with tempfile.TemporaryDirectory(prefix="tuiwiz-matrix-work-") as work:
        results.update(run_points(runnable, [sys.executable, "-m", "bench.gpu.measure"],
                                  point_timeout=args.point_timeout or POINT_TIMEOUT[device], deadline=deadline,
                                  work=Path(work), log=log, env=env))
    if log:
        log.close()
    rows = [compare(p, estimates[p["id"]], results[p["id"]]) for p in points]
    from dataclasses import asdict

    from tuiwiz.plan.memory import CONSTANTS

    report = {"device": device, "dry_run": args.dry_run, "card_bytes": card, "versions": _versions(),
              "constants": asdict(CONSTANTS), "budget_s": args.budget,
              "seconds": round(time.monotonic() - started, 1), "summary": summarize(rows), "points": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
