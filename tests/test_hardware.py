"""The hardware probe: NVML when there is a GPU, a CPU-only machine otherwise, and recorded snapshots."""

import json
from types import SimpleNamespace

import psutil
import pynvml
import pytest

from tuiwiz.errors import UserError
from tuiwiz.plan import hardware
from tuiwiz.plan.hardware import Machine, NvmlBackend, launch_env, poll_gpus, probe, save_snapshot


def _nvml_error():
    """pynvml's own error when NVML cannot start here, else None."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return exc
    pynvml.nvmlShutdown()
    return None


def test_nvml_path_on_a_gpu_machine():
    error = _nvml_error()
    if error is not None:
        pytest.skip(f"no NVML on this machine: {error}")
    backend = NvmlBackend()
    machine = backend.machine(".")
    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        first = pynvml.nvmlDeviceGetHandleByIndex(0)
        total_mb = pynvml.nvmlDeviceGetMemoryInfo(first).total // 2**20
    finally:
        pynvml.nvmlShutdown()
    assert machine.source == "nvml"
    assert len(machine.gpus) == count
    assert machine.gpus[0].memory_total_mb == total_mb
    assert machine.gpus[0].compute_capability >= (3, 0)
    assert machine.gpus[0].bf16 == (machine.gpus[0].compute_capability >= (8, 0))
    assert machine.driver_version
    readings = backend.poll()
    assert [r.index for r in readings] == list(range(count))
    assert readings[0].memory_total_mb == total_mb
    backend.close()


def test_cpu_fallback_on_this_machine_without_nvml():
    error = _nvml_error()
    if error is None:
        pytest.skip("this machine has NVML; the fallback is covered by the simulated test below")
    with pytest.raises(hardware.NvmlUnavailable):
        NvmlBackend().machine(".")
    machine = probe(".", snapshot="")
    assert machine.gpus == ()
    assert machine.source == "cpu"
    assert str(error) in machine.notice
    assert machine.cpu_count_logical == psutil.cpu_count()
    assert abs(machine.ram_total_mb - psutil.virtual_memory().total // 2**20) <= 1
    assert machine.disk_free_mb > 0
    assert poll_gpus(snapshot="") == ()


class FakeNvml:
    """pynvml's surface for one GPU, with some fields unsupported, using pynvml's real error classes."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, fail_init=None, unsupported=()):
        self.fail_init = fail_init
        self.unsupported = set(unsupported)
        self.inits = 0

    def _maybe(self, name, value):
        if name in self.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlInit(self):
        self.inits += 1
        if self.fail_init is not None:
            raise pynvml.NVMLError(self.fail_init)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle{i}"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=24564 * 2**20, free=23000 * 2**20, used=1564 * 2**20)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self._maybe("cc", (8, 9))

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-0000"

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=b"00000000:01:00.0")

    def nvmlDeviceGetUtilizationRates(self, h):
        return self._maybe("util", SimpleNamespace(gpu=37))

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._maybe("temp", 55)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return self._maybe("procs", [SimpleNamespace(pid=10, usedGpuMemory=1024 * 2**20)])

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return self._maybe("procs", [SimpleNamespace(pid=11, usedGpuMemory=None),
                                     SimpleNamespace(pid=10, usedGpuMemory=1024 * 2**20)])

    def nvmlSystemGetProcessName(self, pid):
        return {10: b"/usr/bin/python3", 11: "Xorg"}[pid]

    def nvmlSystemGetDriverVersion(self):
        return "550.107.02"

    def nvmlSystemGetCudaDriverVersion(self):
        return self._maybe("cuda", 12040)


def test_nvml_fields_read_through_the_backend():
    machine = NvmlBackend(FakeNvml()).machine(".")
    gpu = machine.gpus[0]
    assert (gpu.name, gpu.pci_bus_id, gpu.memory_total_mb, gpu.memory_free_mb) == (
        "NVIDIA GeForce RTX 4090", "00000000:01:00.0", 24564, 23000)
    assert gpu.compute_capability == (8, 9) and gpu.bf16
    assert (gpu.utilization_pct, gpu.temperature_c) == (37, 55)
    # compute and graphics lists merged, one entry per pid, names without their folder
    assert [(p.pid, p.name, p.used_mb) for p in gpu.processes] == [(10, "python3", 1024), (11, "Xorg", None)]
    assert (machine.driver_version, machine.cuda_version) == ("550.107.02", "12.4")


def test_unsupported_nvml_fields_do_not_crash():
    nvml = FakeNvml(unsupported={"cc", "util", "temp", "procs", "cuda"})
    backend = NvmlBackend(nvml)
    gpu = backend.machine(".").gpus[0]
    assert gpu.utilization_pct is None and gpu.temperature_c is None and gpu.processes == ()
    assert gpu.compute_capability == (0, 0) and not gpu.bf16
    assert backend.machine(".").cuda_version is None
    assert backend.poll()[0].utilization_pct is None


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                                  pynvml.NVML_ERROR_UNKNOWN])
def test_any_nvml_init_error_gives_a_cpu_machine(monkeypatch, code):
    monkeypatch.setitem(hardware._cached, "", NvmlBackend(FakeNvml(fail_init=code)))
    machine = probe(".", snapshot="")
    assert machine.gpus == () and machine.source == "cpu"
    assert str(pynvml.NVMLError(code)) in machine.notice
    assert poll_gpus(snapshot="") == ()


def test_polling_keeps_nvml_initialised():
    nvml = FakeNvml()
    backend = NvmlBackend(nvml)
    for _ in range(5):
        readings = backend.poll()
    assert nvml.inits == 1
    assert readings[0].memory_used_mb == 1564 and readings[0].memory_total_mb == 24564


EXPECTED_SNAPSHOTS = {
    "h100-80gb": ("NVIDIA H100 80GB HBM3", 81559, (9, 0), 1),
    "a100-40gb": ("NVIDIA A100-SXM4-40GB", 40960, (8, 0), 1),
    "rtx4090-24gb": ("NVIDIA GeForce RTX 4090", 24564, (8, 9), 1),
    "t4-16gb": ("Tesla T4", 15360, (7, 5), 1),
    "8x-a100-80gb": ("NVIDIA A100-SXM4-80GB", 81920, (8, 0), 8),
}


def test_shipped_snapshots():
    assert set(hardware.snapshot_names()) >= set(EXPECTED_SNAPSHOTS) | {"cpu-only"}
    busy = 0
    for name, (gpu_name, total, cc, count) in EXPECTED_SNAPSHOTS.items():
        machine = probe(snapshot=name)
        assert machine.source == f"snapshot:{name}"
        assert len(machine.gpus) == count
        for gpu in machine.gpus:
            assert (gpu.name, gpu.memory_total_mb, gpu.compute_capability) == (gpu_name, total, cc)
            assert gpu.memory_free_mb + gpu.memory_used_mb == gpu.memory_total_mb
            assert gpu.bf16 == (cc >= (8, 0))
            busy += bool(gpu.processes)
    assert busy >= 1
    cpu = probe(snapshot="cpu-only")
    assert cpu.gpus == () and "no NVIDIA GPU" in cpu.notice


def test_env_var_selects_a_snapshot(monkeypatch):
    monkeypatch.setenv(hardware.ENV_VAR, "t4-16gb")
    machine = probe()
    assert machine.gpus[0].name == "Tesla T4"
    reading = poll_gpus()[0]
    assert (reading.memory_used_mb, reading.memory_total_mb) == (0, 15360)


def test_save_and_reload_a_snapshot(tmp_path, monkeypatch):
    recorded = probe(snapshot="8x-a100-80gb")
    path = save_snapshot(recorded, tmp_path / "mine.json")
    monkeypatch.setenv(hardware.ENV_VAR, str(path))
    again = probe()
    assert again.gpus == recorded.gpus
    assert again.ram_total_mb == recorded.ram_total_mb
    assert again.source == "snapshot:mine"
    # the file round-trips exactly (it is what `tuiwiz hw --save` writes)
    assert Machine.from_dict(json.loads(path.read_text())) == recorded


def test_bad_snapshots_are_user_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError) as info:
        probe(snapshot=str(bad))
    assert info.value.file == str(bad)
    with pytest.raises(UserError) as info:
        probe(snapshot="no-such-machine")
    assert "h100-80gb" in info.value.hint


def test_launch_env_numbers_gpus_as_nvml_does():
    assert launch_env([0, 3]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,3"}
    assert launch_env([])["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(UserError):
        launch_env([1, 1])
