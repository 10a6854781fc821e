"""What this machine has: GPUs (through NVML), CPU cores, RAM and free disk.

``probe()`` never raises for missing hardware: without an NVIDIA driver it
returns a CPU-only ``Machine`` whose ``notice`` says why. The backend is
pluggable: ``TUIWIZ_HARDWARE=NAME`` (a snapshot shipped in ``tuiwiz/plan/snapshots``)
or ``TUIWIZ_HARDWARE=FILE.json`` (one written by ``tuiwiz hw --save``) replaces
NVML and psutil with a recorded machine, for tests, screenshots and planning
for a machine you are not on. No torch here: NVML only.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import threading
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Protocol

from tuiwiz.errors import UserError

ENV_VAR = "TUIWIZ_HARDWARE"
SNAPSHOT_FORMAT = 1
MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_mb: int | None  # None where the driver does not say (e.g. under some containers)


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index, which is PCI bus order; see launch_env()
    name: str
    uuid: str
    pci_bus_id: str
    memory_total_mb: int  # MiB, as NVML reports them
    memory_free_mb: int
    memory_used_mb: int
    compute_capability: tuple[int, int]
    bf16: bool
    utilization_pct: int | None = None
    temperature_c: int | None = None
    processes: tuple[GpuProcess, ...] = ()

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_free_mb * MIB

    @property
    def memory_total_bytes(self) -> int:
        return self.memory_total_mb * MIB


@dataclass(frozen=True)
class Machine:
    gpus: tuple[Gpu, ...]
    driver_version: str | None
    cuda_version: str | None
    cpu_model: str
    cpu_count_logical: int
    cpu_count_physical: int | None
    ram_total_mb: int
    ram_available_mb: int
    disk_free_mb: int | None
    disk_path: str
    source: str  # "nvml", "cpu" (no NVIDIA driver) or "snapshot:NAME"
    notice: str | None = None  # why there are no GPUs, or where the snapshot came from

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def all_bf16(self) -> bool:
        return bool(self.gpus) and all(g.bf16 for g in self.gpus)

    def to_dict(self) -> dict:
        data = {"format": SNAPSHOT_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "gpus":
                value = [_gpu_to_dict(g) for g in value]
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Machine:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["gpus"] = tuple(_gpu_from_dict(g) for g in data.get("gpus", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class GpuReading:
    """One cheap sample for a live VRAM panel."""

    index: int
    memory_used_mb: int
    memory_total_mb: int
    utilization_pct: int | None
    temperature_c: int | None


def _gpu_to_dict(gpu: Gpu) -> dict:
    data = {f.name: getattr(gpu, f.name) for f in fields(gpu)}
    data["compute_capability"] = list(gpu.compute_capability)
    data["processes"] = [{f.name: getattr(p, f.name) for f in fields(p)} for p in gpu.processes]
    return data


def _gpu_from_dict(data: dict) -> Gpu:
    cc = tuple(int(x) for x in data["compute_capability"])
    known = {f.name for f in fields(Gpu)}
    kwargs = {k: v for k, v in data.items() if k in known}
    kwargs["compute_capability"] = cc
    kwargs.setdefault("bf16", cc >= (8, 0))
    kwargs["processes"] = tuple(GpuProcess(**p) for p in data.get("processes", ()))
    return Gpu(**kwargs)


# ---------------------------------------------------------------- host (psutil)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _host(disk_path: str) -> dict:
    import psutil

    memory = psutil.virtual_memory()
    try:
        disk_free = shutil.disk_usage(_existing_parent(Path(disk_path))).free // MIB
    except OSError:
        disk_free = None
    return dict(
        cpu_model=_cpu_model(),
        cpu_count_logical=psutil.cpu_count(logical=True) or 1,
        cpu_count_physical=psutil.cpu_count(logical=False),
        ram_total_mb=memory.total // MIB,
        ram_available_mb=memory.available // MIB,
        disk_free_mb=disk_free,
        disk_path=str(disk_path),
    )


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ---------------------------------------------------------------- backends


class HardwareBackend(Protocol):
    def machine(self, disk_path: str) -> Machine: ...

    def poll(self) -> tuple[GpuReading, ...]: ...


class NvmlUnavailable(Exception):
    """NVML could not start; the message says why (carried into Machine.notice)."""


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """NVML through nvidia-ml-py. Initialised once and kept so 1 Hz polling stays cheap."""

    def __init__(self, nvml=None) -> None:
        self._nvml = nvml
        self._handles: list | None = None
        self._lock = threading.Lock()

    def _start(self):
        with self._lock:
            if self._handles is not None:
                return self._nvml
            if self._nvml is None:
                try:
                    import pynvml
                except ImportError as exc:  # nvidia-ml-py is a dependency, but be kind
                    raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
                self._nvml = pynvml
            nv = self._nvml
            try:
                nv.nvmlInit()
                count = nv.nvmlDeviceGetCount()
                self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except nv.NVMLError as exc:
                raise NvmlUnavailable(f"NVML: {exc}") from None
            except OSError as exc:  # a broken libnvidia-ml can fail in ctypes itself
                raise NvmlUnavailable(f"NVML: {exc}") from None
            return nv

    def close(self) -> None:
        with self._lock:
            if self._handles is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    pass
                self._handles = None

    def _optional(self, fn, *args, default=None):
        """Fields a GPU may not support (NotSupported, NoPermission, ...) read as ``default``."""
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return default

    def _processes(self, handle) -> tuple[GpuProcess, ...]:
        nv = self._nvml
        seen: dict[int, GpuProcess] = {}
        for getter in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
            for proc in self._optional(getter, handle, default=()) or ():
                used = getattr(proc, "usedGpuMemory", None)
                # NVML reports "not available" as a huge sentinel or None
                used_mb = int(used) // MIB if isinstance(used, int) and used < 2**63 else None
                name = _text(self._optional(nv.nvmlSystemGetProcessName, proc.pid, default="") or "")
                if proc.pid not in seen:
                    seen[proc.pid] = GpuProcess(pid=int(proc.pid), name=os.path.basename(name), used_mb=used_mb)
        return tuple(seen.values())

    def _gpu(self, index: int, handle) -> Gpu:
        nv = self._nvml
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        cc = self._optional(nv.nvmlDeviceGetCudaComputeCapability, handle, default=(0, 0))
        cc = (int(cc[0]), int(cc[1]))
        pci = self._optional(nv.nvmlDeviceGetPciInfo, handle)
        util = self._optional(nv.nvmlDeviceGetUtilizationRates, handle)
        return Gpu(
            index=index,
            name=_text(self._optional(nv.nvmlDeviceGetName, handle, default="NVIDIA GPU")),
            uuid=_text(self._optional(nv.nvmlDeviceGetUUID, handle, default="")),
            pci_bus_id=_text(pci.busId) if pci is not None else "",
            memory_total_mb=int(memory.total) // MIB,
            memory_free_mb=int(memory.free) // MIB,
            memory_used_mb=int(memory.used) // MIB,
            compute_capability=cc,
            bf16=cc >= (8, 0),
            utilization_pct=int(util.gpu) if util is not None else None,
            temperature_c=self._optional(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
            processes=self._processes(handle),
        )

    def machine(self, disk_path: str) -> Machine:
        nv = self._start()
        gpus = tuple(self._gpu(i, h) for i, h in enumerate(self._handles))
        driver = self._optional(nv.nvmlSystemGetDriverVersion)
        cuda = self._optional(nv.nvmlSystemGetCudaDriverVersion)
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) and cuda > 0 else None
        notice = None if gpus else "the NVIDIA driver is loaded but reports no GPU"
        return Machine(gpus=gpus, driver_version=_text(driver) if driver else None, cuda_version=cuda_text,
                       source="nvml", notice=notice, **_host(disk_path))

    def poll(self) -> tuple[GpuReading, ...]:
        try:
            nv = self._start()
        except NvmlUnavailable:
            return ()
        readings = []
        for index, handle in enumerate(self._handles):
            memory = self._optional(nv.nvmlDeviceGetMemoryInfo, handle)
            if memory is None:
                continue
            util = self._optional(nv.nvmlDeviceGetUtilizationRates, handle)
            readings.append(GpuReading(
                index=index,
                memory_used_mb=int(memory.used) // MIB,
                memory_total_mb=int(memory.total) // MIB,
                utilization_pct=int(util.gpu) if util is not None else None,
                temperature_c=self._optional(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
            ))
        return tuple(readings)


class SnapshotBackend:
    """A machine recorded as JSON (``tuiwiz hw --save``), by shipped name or by path."""

    def __init__(self, ref: str | Path) -> None:
        self.path, self.label = _find_snapshot(str(ref))
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            recorded = Machine.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"cannot read the hardware snapshot: {exc}", file=self.path,
                hint="record one with `tuiwiz hw --save FILE` on the machine you mean", kind="hardware",
            ) from None
        self._machine = replace(recorded, source=f"snapshot:{self.label}",
                                notice=recorded.notice or f"recorded hardware ({self.label}), not this machine")

    def machine(self, disk_path: str) -> Machine:
        return self._machine

    def poll(self) -> tuple[GpuReading, ...]:
        return tuple(
            GpuReading(g.index, g.memory_used_mb, g.memory_total_mb, g.utilization_pct, g.temperature_c)
            for g in self._machine.gpus
        )

    def close(self) -> None:
        pass


def snapshot_names() -> tuple[str, ...]:
    """Names of the snapshots shipped with tuiwiz (usable as TUIWIZ_HARDWARE=NAME)."""
    folder = resources.files("tuiwiz.plan") / "snapshots"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


def _find_snapshot(ref: str) -> tuple[Path, str]:
    path = Path(ref).expanduser()
    if path.is_file():
        return path, path.stem
    name = ref[:-5] if ref.endswith(".json") else ref
    shipped = resources.files("tuiwiz.plan") / "snapshots" / f"{name}.json"
    if "/" not in name and shipped.is_file():
        return Path(str(shipped)), name
    raise UserError(
        f"no hardware snapshot '{ref}'", field=ENV_VAR, kind="hardware",
        hint="a JSON file from `tuiwiz hw --save`, or one of: " + ", ".join(snapshot_names()),
    )


# ---------------------------------------------------------------- public entry points

_cached: dict[str, HardwareBackend] = {}
_cache_lock = threading.Lock()


def backend(snapshot: str | None = None) -> HardwareBackend:
    """The backend in force: ``snapshot``, else $TUIWIZ_HARDWARE, else NVML (one shared instance)."""
    ref = snapshot if snapshot is not None else os.environ.get(ENV_VAR) or ""
    with _cache_lock:
        found = _cached.get(ref)
        if found is None:
            found = SnapshotBackend(ref) if ref else NvmlBackend()
            _cached[ref] = found
        return found


def cpu_only_machine(disk_path: str, notice: str) -> Machine:
    return Machine(gpus=(), driver_version=None, cuda_version=None, source="cpu", notice=notice, **_host(disk_path))


def probe(disk_path: str | os.PathLike = ".", *, snapshot: str | None = None) -> Machine:
    """This machine (or the snapshot in force). Never raises for missing GPUs or drivers."""
    chosen = backend(snapshot)
    try:
        return chosen.machine(str(disk_path))
    except NvmlUnavailable as exc:
        return cpu_only_machine(str(disk_path), f"no NVIDIA GPU found ({exc}): training runs on the CPU")


def poll_gpus(*, snapshot: str | None = None) -> tuple[GpuReading, ...]:
    """Live memory/utilisation/temperature per GPU; () without GPUs. Cheap enough for 1 Hz."""
    return backend(snapshot).poll()


def save_snapshot(machine: Machine, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.write_text(json.dumps(machine.to_dict(), indent=2) + "\n", encoding="utf-8")
    return target


def launch_env(gpu_indices) -> dict[str, str]:
    """Environment for a runner on these NVML GPUs: CUDA numbers GPUs as NVML does (PCI bus order)."""
    indices = [int(i) for i in gpu_indices]
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise UserError(f"bad GPU list {indices}", hint="distinct GPU indices from `tuiwiz hw`", kind="hardware")
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, indices))}


__all__ = [
    "ENV_VAR", "Gpu", "GpuProcess", "GpuReading", "HardwareBackend", "Machine", "NvmlBackend",
    "NvmlUnavailable", "SnapshotBackend", "backend", "cpu_only_machine", "launch_env", "poll_gpus", "probe",
    "save_snapshot", "snapshot_names",
]
