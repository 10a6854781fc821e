"""Time from launching `tuiwiz` to its first frame on the terminal.

Each trial starts a fresh interpreter in a pseudo-terminal of 80x24, reads what
it writes until a marker of the first screen appears, then ends it. A Textual
hello-world is measured the same way, trials interleaved, for reference. Writes
the medians to bench/results/ui-startup.json.

    python bench/ui_startup.py [--trials 10]
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
# "Hardware" is in the first screen's title; it is drawn in the first frame.
CASES = {
    "tuiwiz": ([sys.executable, "-m", "tuiwiz"], b"Hardware"),
    "textual-hello-world": ([sys.executable, "-c", HELLO], b"Hello"),
}


def first_frame(argv: list[str], marker: bytes, env: dict[str, str], timeout: float = 20.0) -> float:
    """Seconds from spawn until ``marker`` has been written to the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    seen = b""
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
            if marker in _strip(seen):
                return time.perf_counter() - start
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ui-startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "TEXTUAL_ANIMATIONS": "none",
               "TUIWIZ_STATE_DIR": os.path.join(home, "state"), "TUIWIZ_CACHE_DIR": os.path.join(home, "cache"),
               "TUIWIZ_HARDWARE": os.environ.get("TUIWIZ_HARDWARE", "rtx4090-24gb"), "HF_HUB_OFFLINE": "1"}
        results = {}
        times_of = {name: [] for name in CASES}
        for argv, marker in CASES.values():
            first_frame(argv, marker, env)  # warm the file cache and .pyc files
        for _ in range(args.trials):  # interleaved, so a busy machine weighs on both alike
            for name, (argv, marker) in CASES.items():
                times_of[name].append(first_frame(argv, marker, env))
        for name, times in times_of.items():
            results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                             "max_s": round(max(times), 3), "trials": args.trials}
            print(f"{name:22s} median {results[name]['median_s']:.3f} s  "
                  f"(min {results[name]['min_s']:.3f}, max {results[name]['max_s']:.3f})")
    report = {
        "benchmark": "ui_startup",
        "what": "seconds from spawning the process in an 80x24 pseudo-terminal to its first screen on it",
        "target_s": 0.45,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if results["tuiwiz"]["median_s"] <= 0.45 else 1


if __name__ == "__main__":
    sys.exit(main())
