"""JSON lines on stdout: how the post-training commands talk to the app (``--jsonl``).

The app never imports torch, so merge, export and chat run as ``tuiwiz`` subprocesses and
report through one JSON object a line (``{"event": ..., ...}``) on the stdout they were given.
Libraries print too (warnings, progress bars), so the protocol keeps the real stdout to itself
and points file descriptor 1 at stderr: a stray print can never break a line of the protocol.
See docs/post-training.md for the events.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from tuiwiz.errors import UserError


class Channel:
    """The protocol's end of stdout: ``emit`` writes one event a line, from any thread."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)  # what anything else prints goes to stderr
        sys.stdout = sys.stderr
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, default=str, ensure_ascii=False)
        with self._lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):  # the app went away: nobody is listening
                pass

    def error(self, exc: BaseException, **fields: Any) -> None:
        if isinstance(exc, UserError):
            self.emit("error", **exc.to_dict(), **fields)
        else:
            traceback.print_exception(exc, file=sys.stderr)
            self.emit("error", kind="internal", message=f"{type(exc).__name__}: {exc}",
                      hint="this is a bug in tuiwiz; the traceback is in the command's stderr", **fields)

    def progress(self, stage: str, done: int, total: int) -> None:
        self.emit("progress", stage=stage, done=done, total=total)


def read_requests(channel: Channel, ops: tuple[str, ...]) -> Iterator[dict]:
    """The requests on stdin (one JSON object a line with an "op"), until ``quit`` or the end of input. A line
    that is not a request, or names an op not in ``ops``, is answered with an input error and skipped."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            channel.emit("error", kind="input", message=f"not a request: {line.strip()[:200]}",
                         hint='one JSON object a line with an "op"')
            continue
        if op == "quit":
            return
        if op not in ops:
            channel.emit("error", kind="input", message=f"unknown op {op!r}", hint=f"ops: {', '.join(ops)}, quit")
            continue
        yield request


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_job(job: Callable[[Channel], dict]) -> int:
    """Run a one-shot job (merge, export): ``result`` with what it returns, or ``error``; the exit code.

    SIGTERM (the app's Cancel) interrupts it like Ctrl-C, so its staging folder is removed.
    """
    channel = Channel()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        channel.emit("result", **job(channel))
        return 0
    except KeyboardInterrupt:
        channel.emit("error", kind="cancelled", message="cancelled; nothing was written", hint=None)
        return 130
    except BaseException as exc:
        channel.error(exc)
        return exc.exit_code if isinstance(exc, UserError) else 1
