"""The supervisor of a multi-process run: launch the ranks, relay a stop, settle the outcome.

It is the process recorded in ``state.json``. It starts `accelerate launch` (which
starts one rank per process) in its own process group, turns SIGTERM into a stop
request that every rank reads at the same step, and when the launcher exits it
reads every rank's result: the run completes only if every rank completed;
otherwise it fails with the first rank that really failed (a rank killed, or the
earliest error), not with the ranks that were ended because of it. Nothing of the
run outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from ..distributed import is_distributed, launch_env, worker_argv, write_launch_files
from ..events import EventWriter
from ..paths import cache_dir
from ..profile import Profile
from ..runs import RunDir
from .failures import Failure, RanksFailed
from .stop import StopFlag, end_children
from .worker import STOP_REQUEST, logs_dir, result_file

GRACE_SECONDS = 30  # after the launcher exits, how long stray ranks get before SIGKILL


def _results(run: RunDir, world: int) -> dict[int, dict | None]:
    found: dict[int, dict | None] = {}
    for rank in range(world):
        try:
            found[rank] = json.loads(result_file(run, rank).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            found[rank] = None
    return found


def _root_cause(results: dict[int, dict | None], exit_code: int) -> Failure:
    """The failure to report: a rank that vanished, else the earliest real error."""
    vanished = [rank for rank, r in results.items() if r is None]
    if vanished:
        rank = vanished[0]
        return Failure(
            "killed", f"rank {rank} ended without a result (killed by a signal, or out of memory)",
            f"see logs/rank{rank}.log in the run folder; the other ranks were stopped",
        )
    failed = sorted((r for r in results.values() if r and r["status"] == "failed"), key=lambda r: r["time"])
    if failed:
        first = failed[0]
        f = first.get("failure") or {}
        return Failure(f.get("kind", "crash"), f"rank {first['rank']}: {f.get('message')}", f.get("hint"),
                       f.get("traceback"))
    return Failure("crash", f"the launcher exited with code {exit_code} and no rank reported why",
                   "see train.log in the run folder")


def _end_stragglers() -> None:
    end_children(GRACE_SECONDS)


def supervise(run: RunDir, profile: Profile, events: EventWriter, finish, *, resume: bool,
              node_rank: int | None, stop: StopFlag) -> int:
    assert is_distributed(profile)
    if stop.requested:  # asked to stop while loading the profile: no rank started yet
        return finish("stopped", 0, message="stopped before training began; nothing to checkpoint")
    rank_of_node = profile.distributed.nodes.rank if node_rank is None else node_rank
    world = profile.distributed.num_processes  # the ranks of this node
    write_launch_files(profile, run.path, rank_of_node)
    logs_dir(run).mkdir(exist_ok=True)
    (run.path / STOP_REQUEST).unlink(missing_ok=True)
    first_rank = rank_of_node * profile.distributed.num_processes
    for rank in range(first_rank, first_rank + world):
        result_file(run, rank).unlink(missing_ok=True)

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
    events.emit("status", status="loading", message=f"launching {world} processes: {' '.join(argv[1:])}")
    launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, cwd=run.path)
    while True:
        try:
            exit_code = launcher.wait()
            break
        except InterruptedError:
            continue
    _end_stragglers()

    results = {rank: r for rank, r in _results(run, first_rank + world).items() if rank >= first_rank}
    statuses = {r["status"] for r in results.values() if r}
    if exit_code == 0 and statuses == {"completed"} and len(results) == world:
        return finish("completed", 0, world_size=profile.distributed.world_size)
    if exit_code == 0 and statuses <= {"completed", "stopped"} and "stopped" in statuses:
        main = results.get(first_rank) or {}
        return finish("stopped", 0, step=main.get("step"), checkpoint=main.get("checkpoint"))
    raise RanksFailed(_root_cause(results, exit_code))  # recorded (or recovered from) by the runner
