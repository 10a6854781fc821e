"""Is this machine ready to train? The versions of the training stack, whether bitsandbytes and
DeepSpeed can really run their kernels here, NVML, free disk and offline mode: each problem with
its fix (``tuiwiz doctor``).

The stack is imported in a child process (seconds of imports, and a broken CUDA install may crash
its importer), so the caller stays light and safe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tuiwiz.hub_access import hub_offline
from tuiwiz.units import gb

STACK = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "deepspeed")
OPTIONAL = {"bitsandbytes": "qlora", "deepspeed": "deepspeed"}  # the extra that installs each
LOW_DISK = 20e9  # below this a 7B run's checkpoints do not fit

# Run in a fresh interpreter: imports each package of the stack and tries what it must do here.
_CHILD = r'''
import importlib, json, sys, traceback
found = {}
def attempt(name, fn):
    try:
        found[name] = {"ok": True, **fn()}
    except BaseException as exc:
        found[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}".strip()[:400]}

def torch_info():
    import torch
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}

def version_of(name):
    def fn():
        module = importlib.import_module(name)
        return {"version": getattr(module, "__version__", "?")}
    return fn

def bnb_kernels():
    import torch, bitsandbytes, bitsandbytes.functional as F
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(64, 64, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    q, state = F.quantize_4bit(x, quant_type="nf4")
    back = F.dequantize_4bit(q, state)
    err = float((back.float() - x.float()).abs().mean())
    if not err < 0.2:
        raise RuntimeError(f"4-bit round trip is off by {err:.3f} on average")
    return {"version": bitsandbytes.__version__, "device": device, "nf4_mean_error": round(err, 4)}

def deepspeed_ops():
    import deepspeed, torch
    from deepspeed.ops.op_builder import CPUAdamBuilder
    ops = {"cpu_adam": bool(CPUAdamBuilder().is_compatible(verbose=False))}
    if torch.cuda.is_available():
        from deepspeed.ops.op_builder import FusedAdamBuilder
        ops["fused_adam"] = bool(FusedAdamBuilder().is_compatible(verbose=False))
    if not all(ops.values()):
        raise RuntimeError("cannot build: " + ", ".join(k for k, v in ops.items() if not v))
    return {"version": deepspeed.__version__, "ops": ops}

attempt("torch", torch_info)
for name in ("transformers", "peft", "trl", "accelerate", "datasets"):
    attempt(name, version_of(name))
attempt("bitsandbytes", bnb_kernels)
attempt("deepspeed", deepspeed_ops)
print(json.dumps(found))
'''


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warning, problem, info
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "problem")

    def to_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "problems": len(self.problems)}


def _installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _stack_checks(found: dict, has_gpu: bool) -> list[Check]:
    checks = []
    for name in STACK:
        result = found.get(name, {"ok": False, "error": "not checked"})
        extra = OPTIONAL.get(name)
        if not _installed(name):
            fix = f'pip install "tuiwiz[{extra}]"' if extra else "pip install -e . (or pip install tuiwiz)"
            checks.append(Check(name, "warning" if extra else "problem",
                                "not installed" + (f": {'QLoRA' if extra == 'qlora' else 'ZeRO'} is unavailable"
                                                   if extra else ""), fix))
            continue
        if not result["ok"]:
            fix = {"torch": "reinstall torch for this machine (pip install torch)",
                   "bitsandbytes": "pip install -U bitsandbytes; on a GPU box check that its CUDA matches torch's",
                   "deepspeed": "install a C++ compiler and ninja (apt-get install build-essential; pip install "
                                "ninja), or leave distributed.strategy at single or ddp"}.get(name,
                                                                                          f"pip install -U {name}")
            checks.append(Check(name, "warning" if extra else "problem", result["error"], fix))
            continue
        detail = result.get("version", "?")
        if name == "torch":
            detail += f", CUDA {result['cuda']}" if result.get("cuda") else ", CPU build"
            if result.get("cuda_available"):
                detail += f", {result['devices']} GPU(s) usable"
            if has_gpu and not result.get("cuda_available"):
                checks.append(Check(name, "problem", detail + ": NVML sees a GPU that torch cannot use",
                                    "install torch's CUDA build for this driver (pip install torch)"))
                continue
        elif name == "bitsandbytes":
            detail += f", 4-bit kernels run on the {result['device'].upper()} (NF4 round trip error " \
                      f"{result['nf4_mean_error']})"
        elif name == "deepspeed":
            detail += ", can build " + ", ".join(result["ops"]) + " (compiled on first use, about a minute)"
        checks.append(Check(name, "ok", detail))
    return checks


def _free_disk(label: str, folder: Path) -> Check:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < LOW_DISK:
        return Check(label, "warning", f"{gb(free)} free at {folder}",
                     "free some space: a 7B model's checkpoints and output need about 20 GB")
    return Check(label, "ok", f"{gb(free)} free at {folder}")


def run_checks(runs_dir: str | os.PathLike = "runs", *, timeout: float = 300) -> Report:
    from huggingface_hub import constants

    from tuiwiz.plan.hardware import probe

    machine = probe(runs_dir if Path(runs_dir).exists() else ".")
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=timeout)
        found = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {}
        crashed = None if child.returncode == 0 else (child.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        found, crashed = {}, f"importing the stack took over {timeout:.0f} s"
    checks = []
    if crashed:
        checks.append(Check("stack", "problem", f"the training stack crashed its interpreter: {crashed}",
                            "reinstall torch for this machine, then the rest (pip install -e \".[all]\")"))
    checks += _stack_checks(found, machine.has_gpu)
    if machine.has_gpu:
        names = ", ".join(sorted({g.name for g in machine.gpus}))
        checks.append(Check("nvml", "ok", f"{len(machine.gpus)} GPU(s): {names}, driver {machine.driver_version}"))
    else:
        checks.append(Check("nvml", "info", machine.notice or "no NVIDIA GPU: training runs on the CPU"))
    checks.append(_free_disk("disk (Hugging Face cache)", Path(constants.HF_HUB_CACHE)))
    checks.append(_free_disk("disk (runs folder)", Path(runs_dir).resolve()))
    if hub_offline():
        checks.append(Check("offline", "info", "HF_HUB_OFFLINE is set: models and datasets must be in the cache"))
    else:
        checks.append(Check("offline", "ok", "the Hugging Face Hub may be asked (HF_HUB_OFFLINE unset)"))
    return Report(tuple(checks))
