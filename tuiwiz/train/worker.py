"""One rank of a multi-process run, started by `accelerate launch` under the supervisor.

Each rank writes its output to ``logs/rankN.log`` and its outcome to
``logs/rankN.result.json``; rank 0 alone writes the event log. The supervisor,
not a rank, writes the run's final status: it alone sees every rank's outcome.

A rank can still die after its result, in native teardown (a destructor that aborts), or
die without one (SIGSEGV, SIGKILL). Only a parent learns of a signal, so each rank forks
before it imports torch: the child trains, the parent waits and writes how the child
ended to ``logs/rankN.exit.json``, then exits the same way.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

from tuiwiz.files import write_text_atomic
from tuiwiz.profile.io import load_profile
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.failures import Failure, classify

STOP_REQUEST = "stop.request"


def logs_dir(run: RunDir):
    return run.path / "logs"


def result_file(run: RunDir, rank: int):
    return logs_dir(run) / f"rank{rank}.result.json"


def exit_file(run: RunDir, rank: int):
    return logs_dir(run) / f"rank{rank}.exit.json"


def _write_json(path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data))


def _write_result(run: RunDir, rank: int, status: str, failure: Failure | None = None, **fields) -> None:
    data = {"rank": rank, "status": status, "time": time.time(), "pid": os.getpid(), **fields}
    if failure is not None:
        data["failure"] = failure.to_event().fields()
    _write_json(result_file(run, rank), data)


def _own_log(run: RunDir, rank: int) -> None:
    """Send this rank's stdout and stderr to its own file."""
    logs_dir(run).mkdir(exist_ok=True)
    fd = os.open(logs_dir(run) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)


def _wait_and_record(run: RunDir, rank: int, child: int) -> int:
    """The parent's part: wait for the child, write how it ended, return the code to exit with."""
    from tuiwiz.train.watcher import exit_like, relay_signals

    relay_signals(child, interrupt=False)  # the supervisor decides what Ctrl-C does
    _, status = os.waitpid(child, 0)  # retried by Python when a relayed signal interrupts it
    number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    _write_json(exit_file(run, rank), {
        "rank": rank, "pid": child, "time": time.time(), "code": os.waitstatus_to_exitcode(status),
        "signal": signal.Signals(number).name if number in signal.valid_signals() else number,
    })
    return exit_like(status)


def _leave_process_group() -> None:
    """Once this rank has reported: wait for the others, then close the process group while the
    interpreter is whole. Left to its exit, gloo's threads can free tensors as it is torn down and
    abort a rank that has finished (SIGABRT; pytorch/pytorch#190489)."""
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        gc.collect()  # the DeepSpeed engine and its hooks go while the group still lives
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # another rank is gone: its result (or its absence) tells; ours stands
        traceback.print_exc()


def run_worker(run: RunDir, *, resume: bool) -> int:
    rank = int(os.environ.get("RANK", "0"))
    _own_log(run, rank)
    child = os.fork()
    if child != 0:
        return _wait_and_record(run, rank, child)
    return _run_rank(run, rank, resume=resume)


def _run_rank(run: RunDir, rank: int, *, resume: bool) -> int:
    import faulthandler

    from tuiwiz.train.stop import StopFlag

    faulthandler.enable(all_threads=True)  # a native crash leaves its Python stack in the rank's log
    (logs_dir(run) / f"rank{rank}.pid").write_text(str(os.getpid()))
    events = EventWriter(run.events) if rank == 0 else None
    stop = StopFlag(request_file=run.path / STOP_REQUEST)
    reported = [False]

    def on_terminate(signum, frame):
        # A graceful stop comes through the request file; a signal means the launcher is ending
        # this rank because another one failed. Leave at once: a collective would hang. A result
        # already written stands: the launcher may end a rank that has finished.
        if not reported[0]:
            _write_result(run, rank, "terminated", signal=signum)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C reaches the group
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        profile = load_profile(run.profile).profile
        from tuiwiz.train.imports import import_recipe, leave_out_unused

        leave_out_unused(profile)
        final = import_recipe(profile.task).train(run, profile, resume=resume, events=events, stop=stop)
        _write_result(run, rank, **final.fields())
        reported[0] = True
    except BaseException as exc:
        traceback.print_exc()
        _write_result(run, rank, "failed", classify(exc))
        return 1
    finally:
        if events is not None:
            events.close()
    _leave_process_group()
    return 0
