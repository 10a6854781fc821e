"""The app's end of ``--jsonl``: start a ``tuiwiz`` command, read its events, send it requests.

Light at import (no torch): the UI process uses it to drive merge, export and chat in a
subprocess. Both pipes are always drained (stdout into events, stderr into a bounded tail kept
for error messages), so a chatty library can never fill a pipe and hang the command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable

Handler = Callable[[dict], None]


def tuiwiz_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuiwiz", *args]


class JsonlProcess:
    """One command with ``--jsonl``. ``on_event`` is called from a reader thread with each event,
    then once with ``{"event": "exit", "code": N, "stderr": tail}`` when the process has ended."""

    def __init__(self, args: list[str], on_event: Handler, *, cwd: str | None = None,
                 env: dict[str, str] | None = None, stderr_lines: int = 200) -> None:
        self.argv = tuiwiz_argv(*args, "--jsonl")
        self.on_event = on_event
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self.returncode: int | None = None
        self._write_lock = threading.Lock()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, text=True, encoding="utf-8",
            errors="replace", bufsize=1, start_new_session=True,  # Ctrl-C in the app is not theirs
        )
        self._stderr = threading.Thread(target=self._drain_stderr, name="tuiwiz-jsonl-stderr", daemon=True)
        self._stderr.start()
        self._reader = threading.Thread(target=self._read, name="tuiwiz-jsonl-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line}
            self.on_event(event if isinstance(event, dict) else {"event": "output", "text": line})
        self.returncode = self.proc.wait()
        self._stderr.join(timeout=5)
        self.on_event({"event": "exit", "code": self.returncode, "stderr": "\n".join(self.stderr_tail)})

    def send(self, op: str, **fields) -> bool:
        """Write one request; False when the process no longer reads."""
        line = json.dumps({"op": op, **fields}, ensure_ascii=False)
        with self._write_lock:
            try:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
                return True
            except (BrokenPipeError, ValueError, OSError):
                return False

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def cancel(self) -> None:
        """SIGTERM: a merge or export removes its staging folder and exits."""
        if self.running:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self, timeout: float = 5.0) -> int | None:
        """Ask politely (``quit`` and end of input), then SIGTERM, then SIGKILL; wait for the reader."""
        if self.running:
            self.send("quit")
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.cancel()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        self._reader.join(timeout=timeout)
        return self.proc.returncode
