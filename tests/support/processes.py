"""The real `tuiwiz` command in a fresh interpreter, and waiting on what it starts."""

from __future__ import annotations

import os
import sys


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run the real `tuiwiz` entry point in a fresh interpreter."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "tuiwiz", *map(str, args)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def wait_for(predicate, timeout=180, poll=0.05):
    """Poll until ``predicate()`` is truthy and return its value; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out")


def process_gone(pid: int) -> bool:
    """The process has ended (a zombie awaiting its parent counts as ended)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def as_foreground() -> None:
    """preexec_fn for a command the test then interrupts as a terminal's Ctrl-C would: Ctrl-C's SIGINT back to
    its default, so that Python raises KeyboardInterrupt. A shell starts background jobs (the suite itself, when
    launched with `&`) with SIGINT ignored, and an ignored signal stays ignored across exec: the command would
    then never see the Ctrl-C its test sends, although a terminal's foreground command always does."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
