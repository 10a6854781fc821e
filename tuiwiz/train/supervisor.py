"""The supervisor of a multi-process run: launch the ranks, relay a stop, settle the outcome.

It is the process recorded in ``state.json``. It starts `accelerate launch` (which
starts one rank per process) in its own process group, turns SIGTERM into a stop
request that every rank reads at the same step, and when the launcher exits it
reads every rank's result and how its process ended: the run completes only if
every rank completed (a rank dying after its result, in native teardown, is a
warning: all was saved); otherwise it fails with the first rank that really
failed (a rank killed or crashed, or the earliest error), not with the ranks that
were ended because of it. Nothing of the run outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from tuiwiz.paths import cache_dir
from tuiwiz.profile.schema import Profile
from tuiwiz.run.distributed import is_distributed, launch_env, worker_argv, write_launch_files
from tuiwiz.run.event_types import StatusEvent, WarningEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.failures import Failure, RanksFailed
from tuiwiz.train.stop import StopFlag, end_children
from tuiwiz.train.worker import STOP_REQUEST, exit_file, logs_dir, result_file

GRACE_SECONDS = 30  # after the launcher exits, how long stray ranks get before SIGKILL


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


FINAL = ("completed", "stopped")  # a rank that wrote one of these has saved all it had to save


@dataclass(frozen=True)
class Verdict:
    status: str  # completed, stopped or failed
    failure: Failure | None = None
    warning: str | None = None  # a rank that died after it had finished
    main: dict | None = None  # the first rank's result


def _death(rank: int, exit: dict | None) -> str | None:
    """'rank 1 aborted (SIGABRT)' for a rank its parent saw end by a signal, else None. Not SIGTERM: the
    launcher ends the other ranks with it (past a rank's handler, once the interpreter is finalizing)."""
    name = (exit or {}).get("signal")
    if name is None or name == "SIGTERM":
        return None
    how = {"SIGABRT": "aborted", "SIGKILL": "was killed"}.get(name, "crashed")
    return f"rank {rank} {how} ({name})"


def verdict(results: dict[int, dict | None], exits: dict[int, dict | None], exit_code: int) -> Verdict:
    """The run's outcome from every rank's result, how each rank's process ended, and the launcher's code.

    Once every rank has written a final result, the run is what they say, whatever the launcher's code:
    a rank that dies afterwards (a destructor aborting in native teardown) has nothing left to save.
    """
    statuses = {r["status"] if r else None for r in results.values()}
    main = results.get(min(results))
    if statuses <= set(FINAL):
        status = "completed" if statuses == {"completed"} else "stopped"
        warning = None
        if exit_code != 0:
            saved = "the saved model" if status == "completed" else "the checkpoint"
            dead = [d for rank, e in sorted(exits.items()) if (d := _death(rank, e))]
            if dead:
                who = f"{' and '.join(dead)} after {'it' if len(dead) == 1 else 'they'} had finished"
            else:
                who = f"the launcher exited with code {exit_code} after every rank had finished"
            warning = f"{who}; {saved} is complete"
        return Verdict(status, warning=warning, main=main)
    return Verdict("failed", _root_cause(results, exits, exit_code), main=main)


def _root_cause(results: dict[int, dict | None], exits: dict[int, dict | None], exit_code: int) -> Failure:
    """The failure to report: a rank that vanished, else the earliest real error, else a rank that died
    after it had finished while another had not."""
    vanished = [rank for rank, r in results.items() if r is None]
    if vanished:
        # the one its parent saw die first: the others may have been ended because of it
        rank = min(vanished, key=lambda r: (_death(r, exits.get(r)) is None,
                                            (exits.get(r) or {}).get("time", float("inf")), r))
        death = _death(rank, exits.get(rank))
        what = f"{death} before it reported a result" if death else \
            f"rank {rank} ended without a result (killed by a signal, or out of memory)"
        return Failure("killed" if death is None or "SIGKILL" in death else "crash", what,
                       f"see logs/rank{rank}.log in the run folder; the other ranks were stopped")
    failed = sorted((r for r in results.values() if r and r["status"] == "failed"), key=lambda r: r["time"])
    if failed:
        first = failed[0]
        f = first.get("failure") or {}
        return Failure(f.get("kind", "crash"), f"rank {first['rank']}: {f.get('message')}", f.get("hint"),
                       f.get("traceback"))
    unfinished = [rank for rank, r in results.items() if r["status"] not in FINAL]
    dead = [(rank, d) for rank, r in sorted(results.items()) if r["status"] in FINAL
            and (d := _death(rank, exits.get(rank)))]
    if dead:
        rank, death = dead[0]
        others = ", ".join(map(str, unfinished))
        return Failure("crash", f"{death} after it had finished, and the launcher ended the others (rank "
                       f"{others}) before they had",
                       f"see logs/rank{rank}.log in the run folder; `tuiwiz resume` continues from the last "
                       "checkpoint")
    return Failure("crash", f"the launcher exited with code {exit_code} and no rank reported why",
                   "see train.log in the run folder")


def _end_stragglers() -> None:
    end_children(GRACE_SECONDS)


def supervise(run: RunDir, profile: Profile, events: EventWriter, *, resume: bool, node_rank: int | None,
              stop: StopFlag) -> StatusEvent:
    """Run the ranks of this node to their end. Returns the final status to record (completed or stopped);
    raises RanksFailed with the verdict's failure."""
    assert is_distributed(profile)
    if stop.requested:  # asked to stop while loading the profile: no rank started yet
        return StatusEvent(status="stopped", message="stopped before training began; nothing to checkpoint")
    rank_of_node = profile.distributed.nodes.rank if node_rank is None else node_rank
    world = profile.distributed.num_processes  # the ranks of this node
    write_launch_files(profile, run.path, rank_of_node)
    logs_dir(run).mkdir(exist_ok=True)
    (run.path / STOP_REQUEST).unlink(missing_ok=True)
    first_rank = rank_of_node * profile.distributed.num_processes
    ranks = range(first_rank, first_rank + world)
    for rank in ranks:
        result_file(run, rank).unlink(missing_ok=True)
        exit_file(run, rank).unlink(missing_ok=True)

    stops = [0]

    def on_signal(signum, frame):
        stops[0] += 1
        (run.path / STOP_REQUEST).write_text(str(time.time()))
        if stops[0] > 1:  # asked twice: end the ranks now
            _end_stragglers()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    env = {**os.environ, **launch_env(profile),
           # DeepSpeed compiles its ops on first use; keep them between runs.
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))}
    argv = worker_argv(run.path, rank_of_node, resume=resume)
    events.emit(StatusEvent(status="loading", message=f"launching {world} processes: {' '.join(argv[1:])}"))
    launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, cwd=run.path)
    while True:
        try:
            exit_code = launcher.wait()
            break
        except InterruptedError:
            continue
    _end_stragglers()

    outcome = verdict({rank: _read(result_file(run, rank)) for rank in ranks},
                      {rank: _read(exit_file(run, rank)) for rank in ranks}, exit_code)
    if outcome.warning:
        events.emit(WarningEvent(message=outcome.warning), durable=True)
    if outcome.status == "completed":
        return StatusEvent(status="completed", world_size=profile.distributed.world_size)
    if outcome.status == "stopped":
        return StatusEvent(status="stopped", step=outcome.main.get("step"), checkpoint=outcome.main.get("checkpoint"))
    raise RanksFailed(outcome.failure)  # recorded (or recovered from) by the runner
