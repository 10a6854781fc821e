"""Ending a process that has imported the training stack, without the interpreter's teardown.

When a run ends its final status is already durable, yet CPython's finalization (tearing down the modules of
torch, transformers, TRL and peft and collecting their objects) took over a second more, and whoever waits for
the process (the command following a run, the app closing a chat) waits for nothing (bench/sft_speed.py,
"after the model is saved"). ``exit_now`` first does what that finalization does that matters, in its order, then
ends the process.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Wait for the threads (threading's shutdown, which also ends thread pools' queued work), run the exit
    handlers (logging's flush, wandb's finish, datasets' temporary folders), flush stdout and stderr, and end
    with ``code``. ``threading._shutdown`` and ``atexit._run_exitfuncs`` are CPython's own finalization steps:
    underscored, but stable since Python 3.4 (thread pools joined there since 3.9)."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its pipe gone: nothing more can be written anyway
            pass
    os._exit(code)


def end_process(code: int) -> NoReturn:
    """The end of an entry point: quickly once torch is loaded (its teardown is the slow one), else as usual."""
    if "torch" in sys.modules:
        exit_now(code)
    sys.exit(code)
