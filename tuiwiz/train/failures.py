"""Turning an exception in the runner into a failure kind, a message and a hint.

Libraries wrap the error that matters (transformers re-raises a failed import as a bare
ModuleNotFoundError; safetensors reports a full disk as a SafetensorError), so the whole
chain of causes is read, and what the machine ran out of is told apart from what is broken.
"""

from __future__ import annotations

import errno
import math
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.run.event_types import ErrorEvent


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    hint: str | None = None
    traceback: str | None = None

    def to_event(self) -> ErrorEvent:
        return ErrorEvent(kind=self.kind, message=self.message, hint=self.hint, traceback=self.traceback)


class RanksFailed(RuntimeError):
    """A multi-process run that failed: the supervisor's verdict over its ranks, raised so that the runner
    records it (and recovers from it) as it does a failure of its own."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, loss: float, what: str = "loss", note: str = "") -> None:
        super().__init__(f"the {what} became {loss} at step {step}{note}")
        self.step = step


class LossDiverged(RuntimeError):
    """The loss blew up while staying finite."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(message)
        self.step = step


# Diverged: the logged loss is above both multiples for PATIENCE logs in a row. Overfitting drives the
# lowest loss towards zero, so that ratio alone trips on one hard (or mislabelled) example late in a
# healthy run; no healthy run stays 3x worse than it began (the median of its first logs, so neither an
# easy first batch nor an early blow-up sets the anchor), and a blow-up stays up while a bad batch does not.
DIVERGED_OVER_LOWEST = 5.0
DIVERGED_OVER_START = 3.0
START_LOGS = 3
PATIENCE = 3


class LossWatch:
    """Reads the logged losses (and gradient norms) of one run and says when it has diverged."""

    def __init__(self) -> None:
        self.first: list[float] = []  # the first START_LOGS losses
        self.lowest: float | None = None
        self.above = 0  # consecutive logs above both thresholds

    @property
    def start(self) -> float | None:
        return sorted(self.first)[len(self.first) // 2] if len(self.first) == START_LOGS else None

    def observe(self, loss: float) -> None:
        """Take a finite logged loss into the references (also for the logs before a resume)."""
        if len(self.first) < START_LOGS:
            self.first.append(loss)
        self.lowest = loss if self.lowest is None else min(self.lowest, loss)

    def check(self, step: int, loss: float, grad_norm: float | None, *,
              scaled_fp16: bool) -> NonFiniteLoss | LossDiverged | None:
        """After a finite loss was logged at ``step``: the failure, or None while the run is healthy."""
        # fp16's loss scaler overflows on purpose (an inf norm, that step skipped, the scale lowered);
        # in fp32 and bf16 a non-finite norm has just been fed into the weights.
        if grad_norm is not None and not math.isfinite(grad_norm) and not scaled_fp16:
            return NonFiniteLoss(step, grad_norm, "gradient norm", f" (the loss was still {loss:.4g})")
        start = self.start
        # Ratios mean something only for a loss with a floor above zero: GRPO's policy-gradient loss
        # wanders around zero (and below), where "four times the lowest" says nothing.
        diverging = (start is not None and self.lowest > 0 and start > 0
                     and loss > DIVERGED_OVER_LOWEST * self.lowest and loss > DIVERGED_OVER_START * start)
        self.above = self.above + 1 if diverging else 0
        if self.above >= PATIENCE:
            return LossDiverged(
                step, f"the loss diverged: {loss:.4g} at step {step}, for {PATIENCE} logs in a row more than "
                f"{DIVERGED_OVER_LOWEST:g}x its lowest ({self.lowest:.4g}) and {DIVERGED_OVER_START:g}x where it "
                f"began ({start:.4g})",
            )
        self.observe(loss)
        return None


# Extras that bring a package in, for the hint.
EXTRAS = {"bitsandbytes": "qlora", "deepspeed": "deepspeed"}
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_PIP_INSTALL = re.compile(r"pip install (?:-U |--upgrade )?'?([A-Za-z][\w.-]*)")
_CPU_OOM = ("DefaultCPUAllocator: can't allocate memory", "Cannot allocate memory", "std::bad_alloc")
# What a full disk (ENOSPC), a used-up quota (EDQUOT) or a file-size limit (EFBIG: FAT32's 4 GiB, ulimit -f)
# look like once a library has wrapped the OSError: in text only.
_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EFBIG: "a file grew past the size the file system (or a limit) allows"}
_DISK_TEXT = {"No space left on device": errno.ENOSPC, "(os error 28)": errno.ENOSPC, "StorageFull": errno.ENOSPC,
              "Disk quota exceeded": errno.EDQUOT, "(os error 122)": errno.EDQUOT,
              "File too large": errno.EFBIG, "(os error 27)": errno.EFBIG}
# torch.save's PytorchStreamWriter reports a short write without its errno.
_SHORT_WRITE = ("file write failed", "unexpected pos")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _missing_package(chain: list[BaseException]) -> str | None:
    """The package a failed import names, or None when no import failed."""
    for exc in chain:
        if isinstance(exc, ImportError):
            name = getattr(exc, "name", None)
            match = _NO_MODULE.search(str(exc)) or _PIP_INSTALL.search(str(exc))
            found = name or (match.group(1) if match else None)
            if found and found.split(".")[0] != "tuiwiz":
                return found.split(".")[0]
    return None


def _text(chain: list[BaseException]) -> str:
    return "\n".join(f"{type(e).__name__}: {e}" for e in chain)


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, RanksFailed):
        return exc.failure
    tail = "".join(traceback.format_exception(exc)[-6:])
    chain = list(_chain(exc))
    text = _text(chain)
    names = {type(e).__name__ for e in chain}
    if isinstance(exc, UserError):
        where = f"{exc.where}: " if exc.where else ""
        return Failure(exc.kind, where + exc.message, exc.hint)
    loss = next((e for e in chain if isinstance(e, (NonFiniteLoss, LossDiverged))), None)
    if loss is not None:
        return Failure(
            "nan_loss" if isinstance(loss, NonFiniteLoss) else "diverged", str(loss),
            "lower training.learning_rate (try a third of it), keep max_grad_norm at 1.0, "
            "or use precision bf16 instead of fp16", tail,
        )
    if "OutOfMemoryError" in names or "CUDA out of memory" in text:
        return Failure(
            "oom_gpu", "the GPU ran out of memory",
            "lower training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
            "effective batch), set training.gradient_checkpointing: true, lower data.max_length, or use qlora",
            tail,
        )
    if (any(isinstance(e, MemoryError) for e in chain) or any(s in text for s in _CPU_OOM)
            or any(isinstance(e, OSError) and e.errno == errno.ENOMEM for e in chain)):
        return Failure(
            "oom_cpu", "the machine ran out of RAM",
            "lower the micro-batch or data.max_length, or close other programs", tail,
        )
    code = next((e.errno for e in chain if isinstance(e, OSError) and e.errno in _DISK_ERRNOS), None)
    code = code or next((c for t, c in _DISK_TEXT.items() if t in text), None)
    if code is not None:
        return Failure("disk_full", f"{_DISK_ERRNOS[code]}: {exc}",
                       "free space, lower training.save_total_limit, or set output.runs_dir to a bigger disk", tail)
    if "inline_container" in text and any(s in text for s in _SHORT_WRITE):
        return Failure("disk_full", f"writing a checkpoint failed (the disk is probably full): {exc}",
                       "check the free space of output.runs_dir's disk; free space or lower "
                       "training.save_total_limit", tail)
    package = _missing_package(chain)
    if package is not None:
        extra = f"  (or pip install 'tuiwiz[{EXTRAS[package]}]')" if package in EXTRAS else ""
        return Failure(
            "dependency_missing", f"a package this run needs is not installed or cannot be imported: {package}",
            f"pip install {package}{extra}", tail,
        )
    if any("safetensor" in name.lower() for name in names) or "HeaderTooLarge" in text \
            or "invalid header" in text.lower():
        return Failure("model_corrupt", f"the model's weights cannot be read: {exc}",
                       "download the model again; the file may be truncated", tail)
    if any(isinstance(e, OSError) for e in chain) and ("Error no file named" in text or "no file named" in text):
        return Failure("model_missing", f"the model's weights are missing: {exc}",
                       "the model folder needs model.safetensors (or its shards and index): download it again", tail)
    if any(isinstance(e, OSError) for e in chain) and (
            "does not appear to have" in text or "is not a local folder" in text
            or "couldn't connect" in text.lower() or "offline" in text.lower()):
        return Failure("model_missing", f"the model could not be found: {exc}",
                       "check model.name_or_path; hub models must be in the local cache when offline", tail)
    return Failure("crash", f"{type(exc).__name__}: {exc}", "this looks like a bug; see train.log in the run folder",
                   tail)


def oom_kills(pid: int | str = "self") -> int | None:
    """How many processes the kernel's out-of-memory killer has ended in the memory cgroup of process ``pid``
    (cgroup v2's memory.events, v1's memory.oom_control: the kernel counts a kill in its victim's cgroup, at
    that cgroup's limit or for want of the machine's RAM), or None where neither can be read.

    A SIGKILL is the same signal from the kernel and from a user (`kill -9`, a forced stop): only this count,
    risen while the killed process lived in that cgroup, tells that memory ran out.
    """
    try:
        mounts = cgroup_mounts()
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and "cgroup2" in mounts:
            file = "memory.events"
            root, mount = mounts["cgroup2"]
        elif "memory" in controllers.split(",") and "memory" in mounts:
            file = "memory.oom_control"
            root, mount = mounts["memory"]
        else:
            continue
        # Without its own cgroup namespace, a container's mount shows only its part of the tree.
        relative = path[len(root):] if root != "/" and path.startswith(root) else path
        try:
            text = (mount / relative.lstrip("/") / file).read_text()
        except OSError:
            continue  # cgroup v2 without the memory controller here: try v1's
        found = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        if found:
            return int(found.group(1))
    return None


def cgroup_mounts() -> dict[str, tuple[str, Path]]:
    """'cgroup2' and v1's 'memory' hierarchy: (the cgroup the mount shows as its root, the mount point)."""
    mounts: dict[str, tuple[str, Path]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, source = left.split(), right.split()
        if len(fields) < 5 or len(source) < 3:
            continue
        if source[0] == "cgroup2":
            mounts.setdefault("cgroup2", (fields[3], Path(fields[4])))
        elif source[0] == "cgroup" and "memory" in source[2].split(","):
            mounts.setdefault("memory", (fields[3], Path(fields[4])))
    return mounts
