"""One rank of a multi-process run, started by `accelerate launch` under the supervisor.

Each rank writes its output to ``logs/rankN.log`` and its outcome to
``logs/rankN.result.json``; rank 0 alone writes the event log. The supervisor,
not a rank, writes the run's final status: it alone sees every rank's outcome.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

from ..events import EventWriter
from ..profile_io import load_profile
from ..runs import RunDir
from .failures import Failure, classify

STOP_REQUEST = "stop.request"


def logs_dir(run: RunDir):
    return run.path / "logs"


def result_file(run: RunDir, rank: int):
    return logs_dir(run) / f"rank{rank}.result.json"


def _write_result(run: RunDir, rank: int, status: str, failure: Failure | None = None, **fields) -> None:
    data = {"rank": rank, "status": status, "time": time.time(), "pid": os.getpid(), **fields}
    if failure is not None:
        data["failure"] = failure.to_event()
    path = result_file(run, rank)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _own_log(run: RunDir, rank: int) -> None:
    """Send this rank's stdout and stderr to its own file."""
    logs_dir(run).mkdir(exist_ok=True)
    fd = os.open(logs_dir(run) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)


def run_worker(run: RunDir, *, resume: bool) -> int:
    from .stop import StopFlag
    from .runner import _train

    rank = int(os.environ.get("RANK", "0"))
    _own_log(run, rank)
    (logs_dir(run) / f"rank{rank}.pid").write_text(str(os.getpid()))
    events = EventWriter(run.events) if rank == 0 else None
    stop = StopFlag(request_file=run.path / STOP_REQUEST)

    def on_terminate(signum, frame):
        # A graceful stop comes through the request file; a signal means the launcher is ending
        # this rank because another one failed. Leave at once: a collective would hang.
        _write_result(run, rank, "terminated", signal=signum)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C reaches the group
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        profile = load_profile(run.profile).profile
        status, fields = _train(run, profile, resume=resume, events=events, stop=stop)
        _write_result(run, rank, status, **fields)
        return 0
    except BaseException as exc:
        traceback.print_exc()
        _write_result(run, rank, "failed", classify(exc))
        return 1
    finally:
        if events is not None:
            events.close()
