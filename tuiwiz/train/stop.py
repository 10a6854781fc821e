"""The stop request: set from a signal handler, read between optimizer steps. Light to import.

A handler only sets the flag (raising from a handler can land inside an import and break it);
the runner reads it before training starts and the trainer callback after every step.
"""

from __future__ import annotations

from pathlib import Path


class StopFlag:
    """A stop request, read between optimizer steps.

    One process: set from the SIGTERM handler. Several: the supervisor writes
    ``request_file``, and the ranks agree (all-reduce) so that all stop at the same step.
    """

    def __init__(self, request_file: Path | None = None) -> None:
        self.requested = False
        self.request_file = request_file

    def poll(self) -> bool:
        local = self.requested or bool(self.request_file and self.request_file.exists())
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            flag = torch.tensor([1.0 if local else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            local = bool(flag.item() > 0)
        self.requested = local
        return local


def end_children(grace: float) -> None:
    """SIGTERM every descendant of this process, then SIGKILL those still there after ``grace`` seconds."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
