"""How the train monitor copes with long and fast event logs.

1. Open: a run dir with a million logged steps (about 250 MB of events.jsonl).
   Times ``RunReader``'s first snapshot (head, strided middle, full tail) and the
   monitor screen's first frame in a headless app; median of --trials.
2. Flood: a writer process appends log events as fast as it can for --flood-seconds
   while the monitor is open; counts chart redraws (at most 2 a second is the design)
   and the log widget's lines (capped); measures how late the event loop wakes
   (what a key press waits for) and how long a dialog takes to open over the monitor.

Writes bench/results/ui-events.json.

    python bench/ui_events.py [--steps 1000000] [--trials 5]
    python bench/ui_events.py --from-json bench/results/ui-events.json   # print the docs block
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.testing import write_fixture_run  # noqa: E402  (test support, from the repository)


def log_line(step: int, max_steps: int, t: float) -> str:
    return json.dumps({"type": "log", "time": round(t, 3), "step": step, "max_steps": max_steps,
                       "epoch": round(step / 1000, 4), "loss": 2.0 + 1.0 / (1 + step / 1000),
                       "learning_rate": 2e-4 * (1 - step / max_steps), "grad_norm": 1.23456789,
                       "tokens_seen": step * 4096, "tokens_per_second": 12345.6,
                       "memory": {"rss_mb": 2048.5, "gpu_allocated_mb": 30000.1, "gpu_reserved_mb": 32000.2}})


def big_run(folder: Path, steps: int) -> Path:
    path = write_fixture_run(folder, "million-steps", status="stopped", steps=10, max_steps=steps, register=False)
    t0 = time.time() - steps * 0.1
    with open(path / "events.jsonl", "a", encoding="utf-8") as handle:
        chunk = []
        for step in range(11, steps + 1):
            chunk.append(log_line(step, steps, t0 + step * 0.1))
            if step % 100 == 0:
                chunk.append(json.dumps({"type": "eval", "time": t0 + step * 0.1, "step": step,
                                         "eval_loss": 2.1 + 1.0 / (1 + step / 1000)}))
            if len(chunk) >= 10000:
                handle.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            handle.write("\n".join(chunk) + "\n")
        handle.write(json.dumps({"type": "status", "time": t0 + steps * 0.1, "status": "stopped",
                                 "step": steps}) + "\n")
    return path


async def monitor_first_frame(path: Path) -> float:
    from tuiwiz.ui.app import TuiwizApp

    app = TuiwizApp(offer_attach=False, blink=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        start = time.perf_counter()
        app.action_attach(str(path))
        while True:
            screen = app.screen
            if type(screen).__name__ == "MonitorScreen" and screen.snapshot is not None and screen.redraws:
                break
            await pilot.pause(0.005)
        return time.perf_counter() - start


WRITER = """
import json, sys, time
sys.path.insert(0, {root!r})
from bench.ui_events import log_line
path, step = sys.argv[1], 1000
with open(path + "/events.jsonl", "a") as events, open(path + "/train.log", "a") as log:
    while True:
        lines = []
        for _ in range(500):
            step += 1
            lines.append(log_line(step, 10_000_000, time.time()))
        events.write("\\n".join(lines) + "\\n")
        events.flush()
        log.write("".join("step %d log line\\n" % (step - i) for i in range(50)))
        log.flush()
        time.sleep(0.001)
"""


async def flood(path: Path, seconds: float) -> dict:
    """A trainer gone wild, in its own process (as a real one is), while the monitor is open."""
    import subprocess

    from tuiwiz.ui.app import TuiwizApp
    from tuiwiz.ui.screens.help import HelpScreen

    app = TuiwizApp(offer_attach=False, blink=False, watch_interval=0.1)
    async with app.run_test(size=(120, 40)) as pilot:
        app.action_attach(str(path))
        while type(app.screen).__name__ != "MonitorScreen" or app.screen.snapshot is None:
            await pilot.pause(0.01)
        screen = app.screen
        before = screen.redraws
        size_before = (path / "events.jsonl").stat().st_size
        writer = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT)), str(path)])
        start = time.perf_counter()
        lags, pushes = [], []
        try:
            while time.perf_counter() - start < seconds:
                t = time.perf_counter()
                await asyncio.sleep(0.05)  # how late the event loop wakes: what a key press waits
                lags.append(time.perf_counter() - t - 0.05)
                t = time.perf_counter()
                await app.push_screen(HelpScreen(screen))  # a dialog over the monitor, mounted
                pushes.append(time.perf_counter() - t)
                app.pop_screen()
                await asyncio.sleep(0.2)
        finally:
            writer.kill()
            writer.wait()
        elapsed = time.perf_counter() - start
        await pilot.pause(1.0)
        redraws = screen.redraws - before
        log_lines = screen.query_one("#mon-log").line_count
        last_step = screen.snapshot.step
    written = ((path / "events.jsonl").stat().st_size - size_before) // len(log_line(1, 10_000_000, 0.0))
    return {"seconds": round(elapsed, 2), "events_written_approx": written,
            "events_per_second_approx": round(written / elapsed), "chart_redraws": redraws,
            "redraws_per_second": round(redraws / (elapsed + 1.0), 2), "log_widget_lines": log_lines,
            "event_loop_lag_median_s": round(statistics.median(lags), 3),
            "event_loop_lag_max_s": round(max(lags), 3),
            "dialog_push_median_s": round(statistics.median(pushes), 3), "last_step_shown": last_step}


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    flood = f["flood"]
    verdict = "met" if f["monitor_first_frame_median_s"] < f["target_open_s"] else "not met"
    return (
        f"A run with {f['steps']:,} logged steps ({f['events_jsonl_mib']:,} MiB of `events.jsonl`), on "
        f"{f['cpu_count']} CPUs: "
        f"the monitor's reader opens it in {f['reader_open_median_s']:.3f} s median ({f['reader_open_max_s']:.3f} "
        f"worst), and the monitor's first frame comes in {f['monitor_first_frame_median_s']:.3f} s median "
        f"({f['monitor_first_frame_max_s']:.3f} worst; target: under {f['target_open_s']:g} s: {verdict}). "
        f"A writer flooding the open monitor for {flood['seconds']:.1f} s at about "
        f"{flood['events_per_second_approx']:,} events a second: the charts redraw {flood['redraws_per_second']:.2f} "
        f"times a second ({flood['chart_redraws']} redraws), the log widget holds {flood['log_widget_lines']:,} lines, "
        f"the event loop wakes {flood['event_loop_lag_median_s'] * 1000:.0f} ms late median "
        f"({flood['event_loop_lag_max_s'] * 1000:.0f} ms worst), and a dialog opens over the monitor in "
        f"{flood['dialog_push_median_s'] * 1000:.0f} ms median.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ui-events.json"))
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text(encoding="utf-8"))), end="")
        return 0
    with tempfile.TemporaryDirectory() as home:
        os.environ.update(TUIWIZ_STATE_DIR=os.path.join(home, "state"), TUIWIZ_CACHE_DIR=os.path.join(home, "cache"),
                          TUIWIZ_HARDWARE=os.environ.get("TUIWIZ_HARDWARE", "cpu-only"), TEXTUAL_ANIMATIONS="none")
        from tuiwiz.ui.runview import open_time

        t = time.perf_counter()
        path = big_run(Path(home) / "runs", args.steps)
        size = (path / "events.jsonl").stat().st_size
        print(f"wrote {args.steps:,} steps ({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
        reader = [open_time(path) for _ in range(args.trials)]
        print(f"reader open: median {statistics.median(reader):.3f} s")
        frames = [asyncio.run(monitor_first_frame(path)) for _ in range(args.trials)]
        print(f"monitor first frame: median {statistics.median(frames):.3f} s")
        flooded = asyncio.run(flood(path, args.flood_seconds))
        print(f"flood: {flooded}")
    report = {
        "benchmark": "ui_events",
        "steps": args.steps,
        "events_jsonl_mib": round(size / 2**20),
        "reader_open_median_s": round(statistics.median(reader), 3),
        "reader_open_max_s": round(max(reader), 3),
        "monitor_first_frame_median_s": round(statistics.median(frames), 3),
        "monitor_first_frame_max_s": round(max(frames), 3),
        "target_open_s": 1.0,
        "flood": flooded,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["monitor_first_frame_median_s"] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
