"""The runner process: everything around a recipe.

fork the watcher -> take the run dir's lock -> signals -> state "loading" -> profile -> the recipe (one
process), or the supervisor of the ranks -> the final status. A failure is recorded, and out of memory
is recovered from (a lighter profile, this process replaced by a resuming runner) when the profile asks.
Its only outputs are files in the run dir; stdout and stderr go to train.log.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import psutil

from tuiwiz.files import write_text_atomic
from tuiwiz.profile.io import load_profile
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import RunEndEvent, StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir, RunnerLock, update_state
from tuiwiz.train.failures import Failure, RanksFailed, classify
from tuiwiz.train.stop import StopFlag

OOM_KINDS = ("oom_gpu", "oom_cpu")


def run_training(run_dir: str, *, resume: bool = False, worker: bool = False, node_rank: int | None = None,
                 recovered: int = 0, watched: bool = False) -> int:
    """The runner's entry point: one process, a rank under accelerate, or the supervisor of the ranks.

    Unless ``watched`` (a process already under its watcher, as after a recovery's exec), it first
    forks the small parent that records a signal's end of the run (see watcher.py).
    """
    run = RunDir(Path(run_dir).resolve())
    if worker:
        from tuiwiz.train.worker import run_worker

        return run_worker(run, resume=resume)
    if not watched:
        from tuiwiz.train.watcher import fork_watcher

        code = fork_watcher(run)
        if code is not None:
            return code
    lock = RunnerLock(run)
    if not lock.acquire():
        print(f"another runner already holds {run.path}", file=sys.stderr)
        return 3
    events = EventWriter(run.events)

    def finish(status: StatusEvent, exit_code: int, failure: Failure | None = None) -> int:
        if failure is not None:
            events.emit(failure.to_event(), durable=True)
            events.emit(RunEndEvent(status="failed", error_kind=failure.kind))
        events.emit(status, durable=True)
        update_state(run, status=status.status, exit_code=exit_code, error=failure.message if failure else None)
        return exit_code

    stop = StopFlag()

    def on_signal(signum, frame):
        stop.requested = True  # only a flag: raising here could land inside an import

    # The state says "loading" only once this handler is in place: stop_run waits for that.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    profile = None
    try:
        me = psutil.Process()
        watcher = me.parent()  # the waiting parent forked above (or before a recovery's exec)
        update_state(run, status="loading", pid=me.pid, pgid=os.getpgid(0), create_time=me.create_time(),
                     watcher_pid=watcher.pid if watcher else None,
                     watcher_create_time=watcher.create_time() if watcher else None, exit_code=None, error=None)
        events.emit(StatusEvent(status="loading", resume=resume))
        profile = load_profile(run.profile).profile
        from tuiwiz.run.distributed import is_distributed
        from tuiwiz.train.imports import import_recipe, leave_out_unused

        left_out = leave_out_unused(profile)
        if left_out:
            print(f"tuiwiz: not importing {', '.join(left_out)}: this run does not use "
                  f"{'them' if len(left_out) > 1 else 'it'}", flush=True)

        if is_distributed(profile):
            from tuiwiz.train.supervisor import supervise

            final = supervise(run, profile, events, resume=resume, node_rank=node_rank, stop=stop)
        else:
            final = import_recipe(profile.task).train(run, profile, resume=resume, events=events, stop=stop)
        return finish(final, 0)
    except BaseException as exc:  # every failure is recorded, then the process ends
        if not isinstance(exc, RanksFailed):  # the ranks' own logs hold theirs
            traceback.print_exc()
        failure = classify(exc)
        if profile is not None and failure.kind in OOM_KINDS and recovered < profile.training.auto_recover:
            # The failed step's tensors live on in the traceback's frames; the recovery runs under the same
            # limit that step ran out of (an address-space limit, or a nearly full RAM): let them go first.
            traceback.clear_frames(exc.__traceback__)
            lock.release()
            _recover(run, profile, events, failure, recovered)  # replaces this process when it can
            lock.acquire()
        if profile is not None and failure.kind in OOM_KINDS and profile.training.auto_recover:
            failure = _recovery_exhausted(failure, recovered, profile.training.auto_recover)
        return finish(StatusEvent(status="failed"), 1, failure)
    finally:
        events.close()
        lock.release()


def _recover(run: RunDir, profile: Profile, events: EventWriter, failure: Failure, recovered: int) -> None:
    """After an out-of-memory failure: a lighter profile, then this process replaced by a resuming runner.

    Returns only when there is nothing to recover to.
    """
    from tuiwiz.plan.hardware import probe as probe_hardware
    from tuiwiz.plan.modelinfo import inspect_model
    from tuiwiz.plan.recommend import step_down
    from tuiwiz.profile.io import dump_profile

    step = step_down(profile, inspect_model(profile.model.name_or_path, profile.model.revision, build_demo=True),
                     probe_hardware(run.path), allow_truncation=False)
    if step is None:
        return
    lighter, reason = step
    attempt = recovered + 1
    # Keep the old profile beside, then swap the new one in whole: profile.yaml is never missing or half.
    shutil.copy2(run.profile, run.path / f"profile.before-recovery-{attempt}.yaml")
    header = f"# tuiwiz run {run.run_id}, after out-of-memory recovery {attempt}: {reason}\n"
    write_text_atomic(run.profile, header + dump_profile(lighter))
    checkpoint = run.last_checkpoint()
    kept = None
    if step.kind == "method" and run.checkpoints.is_dir():
        # Another method's checkpoint (full weights and their optimizer, or another optimizer) cannot be
        # resumed as this one: it is kept beside, untouched, and the lighter method starts at step 0.
        kept = run.path / f"checkpoints.before-recovery-{attempt}"
        os.replace(run.checkpoints, kept)
        if checkpoint is not None:
            reason += (f"; the {profile.method.type} checkpoint at step {checkpoint.name.removeprefix('checkpoint-')} "
                       f"cannot be resumed as {lighter.method.type}, so it starts at step 0 "
                       f"(the old checkpoints are kept in {kept.name})")
        checkpoint = None
    events.emit(failure.to_event(), durable=True)
    events.emit(StatusEvent(status="recovering", message=reason, recovery=attempt,
                            checkpoint=str(checkpoint) if checkpoint else None, kept=str(kept) if kept else None),
                durable=True)
    events.close()
    sys.stdout.flush(), sys.stderr.flush()
    # A fresh process: the failed one's memory (and a CUDA context after an OOM) is best let go whole.
    os.execv(sys.executable, [sys.executable, "-m", "tuiwiz.train", str(run.path), "--resume",
                              "--recovered", str(attempt), "--watched"])


def _recovery_exhausted(failure: Failure, recovered: int, limit: int) -> Failure:
    """Out of memory again after the recoveries allowed (or with nothing lighter left): say which."""
    if recovered >= limit:
        why = f"after {recovered} automatic recover{'y' if recovered == 1 else 'ies'}, " \
              f"the most training.auto_recover: {limit} allows"
    else:
        why = "and no lighter setting is left to recover with"
    tried = "the settings tried before are in profile.before-recovery-*.yaml" if recovered else None
    return dataclasses.replace(failure, message=f"{failure.message} ({why})",
                               hint="; ".join(filter(None, [tried, failure.hint])))
