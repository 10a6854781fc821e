"""Time from launching `tuiwiz` to the Hardware screen with the probed hardware on it.

Each trial starts a fresh interpreter in a pseudo-terminal of 80x24 and reads what it
writes: the first frame (the step's title, drawn before probing) and then the screen
with the probe's result (its status line: "1 GPU found", "no GPU: CPU training"), which
is what the target is about; then it ends the process. A Textual hello-world is measured
the same way, trials interleaved, for reference. Writes the medians to
bench/results/ui-startup.json.

    python bench/ui_startup.py [--trials 10]
    python bench/ui_startup.py --from-json bench/results/ui-startup.json   # print the docs block
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = (
    "from textual.app import App\n"
    "from textual.widgets import Static\n"
    "class Hello(App):\n"
    "    def compose(self):\n"
    "        yield Static('Hello, world')\n"
    "Hello().run()\n"
)
# Each case's markers, in the order they appear: "Hardware" is the first screen's title (the
# first frame); the status line after it says what the probe found (the screen is ready).
CASES = {
    "tuiwiz": ([sys.executable, "-m", "tuiwiz"], {"first_frame": rb"Hardware",
                                                   "hardware_probed": rb"GPUs? found|no GPU: CPU training"}),
    "textual-hello-world": ([sys.executable, "-c", HELLO], {"first_frame": rb"Hello"}),
}


def first_frame(argv: list[str], markers: dict[str, bytes], env: dict[str, str],
                timeout: float = 20.0) -> dict[str, float]:
    """Seconds from spawn until each marker (a regular expression) has been written to the terminal."""
    import re
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    seen = b""
    times: dict[str, float] = {}
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            # Styled text is interleaved with escape codes: search the text with them removed.
            seen += chunk
            text = _strip(seen)
            for name, marker in markers.items():
                if name not in times and re.search(marker, text):
                    times[name] = time.perf_counter() - start
            if len(times) == len(markers):
                return times
        raise RuntimeError(f"no first frame within {timeout} s: {_strip(seen)[-400:]!r}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        os.close(master)


def _strip(data: bytes) -> bytes:
    import re

    return re.sub(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]", b"", data)


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    tuiwiz, hello = f["results"]["tuiwiz"], f["results"]["textual-hello-world"]
    probed = tuiwiz["hardware_probed"]

    def row(label: str, r: dict) -> str:
        return f"| {label} | {r['median_s']:.3f} ({r['min_s']:.3f} to {r['max_s']:.3f}) |"

    verdict = "met" if probed["median_s"] <= f["target_s"] else "not met"
    return "\n".join([
        f"Timed: {f['what']}; `TUIWIZ_HARDWARE={f['hardware']}`. Median of {probed['trials']} interleaved trials "
        f"on {f['cpu_count']} CPUs (load average {f['load_average_1m']:.2f}), Python {f['python']}.",
        "",
        "| from spawning the process to | seconds, median (range) |",
        "|---|---|",
        row("tuiwiz: the Hardware screen showing the probed hardware", probed),
        row("tuiwiz: its first frame, drawn before the probe", tuiwiz["first_frame"]),
        row("a Textual hello-world: its first frame", hello["first_frame"]),
        "",
        f"Target for the Hardware screen showing the probed hardware: {f['target_s']:g} s on the median: {verdict}.",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ui-startup.json"))
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text(encoding="utf-8"))), end="")
        return 0
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "TEXTUAL_ANIMATIONS": "none",
               "TUIWIZ_STATE_DIR": os.path.join(home, "state"), "TUIWIZ_CACHE_DIR": os.path.join(home, "cache"),
               "TUIWIZ_HARDWARE": os.environ.get("TUIWIZ_HARDWARE", "rtx4090-24gb"), "HF_HUB_OFFLINE": "1"}
        results = {}
        times_of = {f"{case}/{m}": [] for case, (_, markers) in CASES.items() for m in markers}
        for argv, markers in CASES.values():
            first_frame(argv, markers, env)  # warm the file cache and .pyc files
        for _ in range(args.trials):  # interleaved, so a busy machine weighs on both alike
            for case, (argv, markers) in CASES.items():
                for m, seconds in first_frame(argv, markers, env).items():
                    times_of[f"{case}/{m}"].append(seconds)
        for key, times in times_of.items():
            case, m = key.split("/")
            results.setdefault(case, {})[m] = {
                "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                "max_s": round(max(times), 3), "trials": args.trials}
            r = results[case][m]
            print(f"{key:36s} median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})")
    report = {
        "benchmark": "ui_startup",
        "what": "seconds from spawning the process in an 80x24 pseudo-terminal to its first frame, and (tuiwiz) "
                "to the Hardware screen showing the probed hardware (recorded snapshot TUIWIZ_HARDWARE)",
        "hardware": env["TUIWIZ_HARDWARE"],
        "target_s": 0.45,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if results["tuiwiz"]["hardware_probed"]["median_s"] <= 0.45 else 1


if __name__ == "__main__":
    sys.exit(main())
