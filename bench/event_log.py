"""A long run's event log: summarising a million logged steps, and following a fast writer.

1. Writes an events.jsonl of a million `log` events (about 300 MB) and times
   `tuiwiz.run.rundir.summarize` (what `tuiwiz runs` and the runs screen do) on it,
   and a full parse with `EventTail.read` in 4 MB chunks for comparison.
2. Follows a writer that appends several thousand events a second for a few
   seconds with `EventTail`, keeping only the last N events as a follower
   does, and records the reader's peak RSS growth (bounded memory).

    python bench/event_log.py [--steps 1000000] [--json OUT.json]
    python bench/event_log.py --from-json bench/results/event-log.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuiwiz.run.event_types import LogEvent  # noqa: E402
from tuiwiz.run.events import EventTail, EventWriter  # noqa: E402
from tuiwiz.run.rundir import RunDir, RunState, summarize, write_state  # noqa: E402


def _log_line(step: int, total: int) -> str:
    return json.dumps({
        "type": "log", "time": 1_800_000_000 + step * 0.01, "step": step, "max_steps": total,
        "epoch": round(step / 1000, 4), "loss": 2.0 + 1.0 / step, "learning_rate": 2e-4, "grad_norm": 0.5,
        "tokens_seen": step * 4096, "tokens_per_second": 12345.6, "memory": {"rss_mb": 1234.5, "peak_rss_mb": 1300.0},
    }) + "\n"


def write_long_log(run: RunDir, steps: int) -> int:
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "profile.yaml").write_text("model:\n  name_or_path: demo\nmethod:\n  type: lora\n")
    write_state(run, RunState(run_id=run.run_id, status="completed"))
    with open(run.events, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "run_start", "time": 1_800_000_000}) + "\n")
        chunk = []
        for step in range(1, steps + 1):
            chunk.append(_log_line(step, steps))
            if len(chunk) == 10_000:
                handle.write("".join(chunk))
                chunk.clear()
        handle.write("".join(chunk))
    return run.events.stat().st_size


def _writer(path: str, seconds: float, rate: int) -> None:
    writer = EventWriter(path)
    start = time.perf_counter()
    step = 0
    while time.perf_counter() - start < seconds:
        for _ in range(rate // 100):
            step += 1
            writer.emit(LogEvent(step=step, loss=1.0 / step, tokens_per_second=1000.0))
        time.sleep(0.01)
    writer.close()


def follow_fast_writer(folder: Path, seconds: float = 5.0, rate: int = 5000, keep: int = 2000) -> dict:
    path = folder / "fast.jsonl"
    path.touch()
    proc = multiprocessing.Process(target=_writer, args=(str(path), seconds, rate))
    me = psutil.Process()
    base = me.memory_info().rss
    peak = base
    proc.start()
    tail = EventTail(path)
    recent: deque = deque(maxlen=keep)
    seen = 0
    while proc.is_alive() or tail.offset < path.stat().st_size:
        events = tail.read(max_bytes=4 << 20)
        seen += len(events)
        recent.extend(events)
        peak = max(peak, me.memory_info().rss)
        time.sleep(0.05)
    proc.join()
    return {"events": seen, "events_per_second": round(seen / seconds),
            "rss_growth_mb": round((peak - base) / 2**20, 1)}


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    follow = f["follow_fast_writer"]
    return (
        f"A log of {f['steps']:,} logged steps ({f['log_mb']:.0f} MiB of `events.jsonl`), on {f['cpu_count']} CPUs: "
        f"`tuiwiz runs` summarises the run in {f['summarize_s_median'] * 1000:.0f} ms (median); a full parse of its "
        f"{f['events_parsed']:,} events takes {f['full_parse_s']:.0f} s. Following a writer at about "
        f"{follow['events_per_second']:,} events a second ({follow['events']:,} events), the reader's resident "
        f"memory grew by {follow['rss_growth_mb']:.1f} MiB.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--json")
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    folder = Path(tempfile.mkdtemp(prefix="tuiwiz-events-"))
    run = RunDir(folder / "long-run")
    size = write_long_log(run, args.steps)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        summary = summarize(run)
        timings.append(time.perf_counter() - start)
    assert summary.step == args.steps, summary
    start = time.perf_counter()
    tail, count = EventTail(run.events), 0
    while True:
        batch = tail.read(max_bytes=4 << 20)
        if not batch:
            break
        count += len(batch)
    full_parse = time.perf_counter() - start
    figures = {
        "steps": args.steps, "log_mb": round(size / 2**20, 1),
        "summarize_s_median": round(sorted(timings)[len(timings) // 2], 4),
        "full_parse_s": round(full_parse, 2), "events_parsed": count,
        "follow_fast_writer": follow_fast_writer(folder),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
