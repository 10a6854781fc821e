import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own registry; the demo cache is shared per session (it is deterministic)."""
    monkeypatch.setenv("TUIWIZ_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(_shared_cache(tmp_path_factory)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One thread a process: the suite runs two workers on two cores, each often with a runner beside it;
    # more threads than cores makes OpenMP spin (measured: the run-lifecycle tests took 327 s at 2, 109 s at 1).
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


_CACHE: list[Path] = []


def _shared_cache(factory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("cache"))
    return _CACHE[0]


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


class LoopbackServer:
    """An HTTP server on 127.0.0.1 standing in for a remote service (the Hub); a subclass answers in
    ``handle(request, method)``. Use it as a context manager."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PUT(self) -> None:
                fake.handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request, method: str) -> None:
        raise NotImplementedError
