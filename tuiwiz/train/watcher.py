"""The runner's small waiting parent: it outlives a trainer killed by a signal and says so.

Only a parent learns how a child ended. A detached runner has no parent of its own
once its launcher is gone, so a SIGKILL from the kernel's out-of-memory killer used
to leave a run that read "gone without a final status". The runner therefore forks
before it imports anything heavy: the child trains (and records itself in
state.json), the parent waits. When the child ends by a signal before writing a
final status, the parent records the signal, ends whatever of the run the child
left behind (it is their subreaper), and exits the same way the child did, so a
launcher that follows it reads the same return code.

The parent holds no lock and no event writer while the child lives; it ignores
hangups and passes a stop request (SIGTERM, SIGINT) on to the child.
"""

from __future__ import annotations

import os
import signal
import sys

from tuiwiz.run.event_types import ErrorEvent, RunEndEvent, StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import ACTIVE, RunDir, killed_by_signal, update_state
from tuiwiz.train.failures import oom_kills

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# Signals whose default action dumps core: for these the parent exits 128+N instead of raising them.
CORE_SIGNALS = {signal.SIGQUIT, signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE,
                signal.SIGSEGV, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGSYS}
GRACE_SECONDS = 10  # what the child's leftovers get between SIGTERM and SIGKILL


def _become_subreaper() -> None:
    """Orphans of the child (a launcher and its ranks) become ours, to end and reap."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # without it the leftovers go to init; the child still ends its own


def _end_leftovers() -> None:
    from tuiwiz.train.stop import end_children

    end_children(GRACE_SECONDS)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wait_for(child: int) -> int:
    """The child's wait status; reaps the orphans handed to us meanwhile."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:  # cannot happen while the child is ours; read as a crash
            return 1 << 8
        if pid == child:
            return status


def relay_signals(child: int, *, interrupt: bool) -> None:
    """A waiting parent passes SIGTERM (and SIGINT if ``interrupt``, else ignores it) on to ``child``,
    and ignores a hang-up: the terminal going away is no reason to stop."""
    def relay(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay if interrupt else signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def fork_watcher(run: RunDir) -> int | None:
    """In the child: returns None, and the caller trains. In the parent: waits, returns the exit code."""
    _become_subreaper()
    kills = oom_kills()  # the child shares our memory cgroup: a kernel kill for want of RAM raises this count
    child = os.fork()
    if child == 0:
        return None

    relay_signals(child, interrupt=True)
    status = _wait_for(child)
    if os.WIFSIGNALED(status):
        after = oom_kills() if os.WTERMSIG(status) == signal.SIGKILL else None
        out_of_memory = kills is not None and after is not None and after > kills
        # a no-op when the child wrote its end (a forced stop)
        record_exit(run, -os.WTERMSIG(status), out_of_memory=out_of_memory)
    _end_leftovers()
    _reap_all()
    return exit_like(status)


def record_exit(run: RunDir, returncode: int | None, *, out_of_memory: bool = False) -> bool:
    """Record that the trainer, our child, ended by signal ``-returncode``: a ``killed`` failure, or
    ``oom_cpu`` when the kernel's out-of-memory killer sent it (its cgroup counted the kill: a user's
    ``kill -9`` or a forced stop is never called out of memory).

    Nothing changes when it had written its final status (a forced stop marks the run stopped first).
    Returns whether it recorded the end.
    """
    if returncode is None or returncode >= 0:
        return False
    error = killed_by_signal(run, returncode)
    if out_of_memory:
        error = ErrorEvent(kind="oom_cpu", message="the kernel's out-of-memory killer ended the trainer (SIGKILL): "
                           "the machine, or its memory cgroup, ran out of RAM",
                           hint=f"lower the micro-batch or data.max_length, or close other programs; `tuiwiz resume "
                           f"{run.run_id}` continues from the last checkpoint", traceback=None)
    if update_state(run, only_from=ACTIVE, status="failed", exit_code=returncode, error=error.message) is None:
        return False
    writer = EventWriter(run.events)  # the trainer, its only other writer, is gone
    try:
        writer.emit(error, durable=True)
        writer.emit(RunEndEvent(status="failed", error_kind=error.kind))
        writer.emit(StatusEvent(status="failed"), durable=True)
    finally:
        writer.close()
    return True


def exit_like(status: int) -> int:
    """End as a child with this wait status did, for a launcher that follows us: raise its signal again,
    or return the code to exit with (128+N for a signal that would dump core into the run folder)."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in CORE_SIGNALS:
            if number not in (signal.SIGKILL, signal.SIGSTOP):  # always their default: setting one is an error
                signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        return 128 + number
    return os.waitstatus_to_exitcode(status)
