"""Free disk and RAM for a run, checked before its run dir exists.

Disk for the checkpoints and the output, RAM to load and train. Torch-free: sizes come from
file sizes and safetensors headers. Free space and RAM can be injected, so every refusal is
testable; each raises ``UserError`` with the numbers it compared.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.plan.memory import optimizer_bytes_per_param
from tuiwiz.profile.schema import Profile
from tuiwiz.units import gb

GB = 10**9
MiB = 2**20
# Per checkpoint and for the output: tokenizer files, trainer state, scheduler and RNG state.
SMALL_FILES = 64 * MiB
# The runner process before the model is built (torch, transformers imported; memory.CONSTANTS.cpu_runtime).
RUNTIME_RAM = 700 * MiB
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}



def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def model_weight_bytes(folder: str | Path) -> int:
    """Bytes of the model's weight files (safetensors, else .bin), from their sizes alone."""
    folder = Path(folder)
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(f.stat().st_size for f in files if f.is_file())


# --- disk --------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskNeed:
    checkpoint: int  # bytes of one checkpoint
    checkpoints: int  # how many exist at once at the worst moment
    output: int  # bytes of the final model or adapter
    exact_count: bool  # False: the number of checkpoints is a floor (unlimited, step count unknown)

    @property
    def total(self) -> int:
        return self.checkpoint * self.checkpoints + self.output


def _load_bytes(profile: Profile, device: str) -> float:
    """Bytes per base parameter as the runner loads it (train/modeling.py's _load_dtype)."""
    if profile.method.type == "qlora":
        return 1 if profile.method.bits == 8 else 0.5
    if profile.model.dtype in _DTYPE_BYTES:
        return _DTYPE_BYTES[profile.model.dtype]
    if METHODS[profile.method.type].whole_model or device == "cpu" or profile.training.precision == "fp32":
        return 4  # full fine-tuning keeps fp32 weights under mixed precision
    return 2


def estimate_disk(profile: Profile, model_size_bytes: int, *, parameters: int | None = None,
                  trainable: int | None = None, total_steps: int | None = None) -> DiskNeed:
    """What a run writes under its run dir at the worst moment.

    ``parameters`` defaults to ``model_size_bytes / 2`` (16-bit weights, as most hub models are
    stored). A PEFT method's ``trainable`` parameters default to 1% of them: pass the exact count
    (``memory.trainable_parameters``) where the model's shapes are known.
    """
    t = profile.training
    n = parameters if parameters is not None else model_size_bytes // 2
    method = profile.method.type
    if METHODS[method].uses_peft:
        adapter = trainable if trainable is not None else n // 100
        weights = adapter * 4  # peft keeps adapters in fp32
        checkpoint = weights + int(adapter * optimizer_bytes_per_param(t.optim, 4))
        output = weights
    else:
        wb = int(_load_bytes(profile, "cuda"))
        trained = n if method == "full" else (trainable if trainable is not None else n // 1000)
        checkpoint = n * wb + int(trained * optimizer_bytes_per_param(t.optim, wb))
        output = n * wb
    # The Trainer writes a new checkpoint before it deletes the oldest: save_total_limit + 1 at once.
    # A stop (SIGTERM) saves one more than the save_steps schedule.
    counts = []
    if t.save_total_limit is not None:
        counts.append(t.save_total_limit + 1)
    steps = total_steps if total_steps is not None else (t.max_steps if t.max_steps > 0 else None)
    if steps is not None:
        counts.append(steps // t.save_steps + 1)
    return DiskNeed(checkpoint + SMALL_FILES, min(counts) if counts else 1, output + SMALL_FILES, bool(counts))


def check_disk(profile: Profile, model_size_bytes: int, runs_dir: str | Path, *, parameters: int | None = None,
               trainable: int | None = None, total_steps: int | None = None,
               free_bytes: int | None = None) -> DiskNeed:
    """Refuse a run whose checkpoints and output cannot fit on the runs folder's disk.

    ``free_bytes`` replaces the disk's real free space (tests).
    """
    need = estimate_disk(profile, model_size_bytes, parameters=parameters, trainable=trainable,
                         total_steps=total_steps)
    if free_bytes is None:
        free_bytes = shutil.disk_usage(_existing_parent(Path(runs_dir))).free
    if need.total > free_bytes:
        t = profile.training
        count = f"{need.checkpoints} checkpoint{'s' if need.checkpoints > 1 else ''}"
        raise UserError(
            f"the run needs {gb(need.total)} free on the disk of {runs_dir} ({count} of {gb(need.checkpoint)} "
            f"at once, and a {gb(need.output)} output); {gb(free_bytes)} is free",
            hint=f"free space, lower training.save_total_limit (now {t.save_total_limit}), raise "
                 f"training.save_steps (now {t.save_steps}), or set output.runs_dir to a bigger disk",
            field="output.runs_dir", kind="resources",
        )
    return need


# --- RAM ---------------------------------------------------------------------------


def estimate_ram(profile: Profile, model_size_bytes: int, *, device: str, parameters: int | None = None) -> int:
    """A floor for the runner's RAM: the process, the weights as loaded, and on a CPU what trains there.

    The model is built in RAM before the Trainer moves it to a GPU, so the weights count on both
    (QLoRA quantizes while it loads: its weights count at their 4- or 8-bit size). Activations are
    left out: ``memory.estimate`` counts them where the shapes are known (pass its figure to check_ram).
    """
    n = parameters if parameters is not None else model_size_bytes // 2
    need = RUNTIME_RAM + n * _load_bytes(profile, device)
    if device == "cpu" and profile.method.type == "full":
        need += n * 4 + n * optimizer_bytes_per_param(profile.training.optim, 4)  # gradients and optimizer states
    return int(need)


def check_ram(profile: Profile, model_size_bytes: int, *, device: str = "cpu", parameters: int | None = None,
              needed_bytes: int | None = None, available_bytes: int | None = None) -> int:
    """Refuse a run that cannot fit in the RAM available now. Returns the bytes it needs.

    ``needed_bytes`` replaces the floor of estimate_ram (a memory.estimate figure);
    ``available_bytes`` replaces psutil's available memory (tests).
    """
    need = needed_bytes if needed_bytes is not None else estimate_ram(
        profile, model_size_bytes, device=device, parameters=parameters)
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    if need > available_bytes:
        where = "to train on the CPU" if device == "cpu" else "to load the model before it moves to the GPU"
        raise UserError(
            f"the run needs {gb(need)} of RAM {where}; {gb(available_bytes)} is available",
            hint="close other programs, use a smaller model, or a method that trains less "
                 "(lora or qlora instead of full)",
            field="model.name_or_path", kind="resources",
        )
    return need


def check_resources(profile: Profile, model_folder: str | Path, runs_dir: str | Path, *,
                    total_steps: int | None = None, device: str | None = None) -> None:
    """check_disk and check_ram for a model folder on this machine, with exact counts where the shapes are known."""
    from tuiwiz.plan.hardware import probe
    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.modelinfo import inspect_model

    machine = probe(str(runs_dir)) if device is None else None
    if device is None:
        device = "cuda" if machine.has_gpu else "cpu"
    size = model_weight_bytes(model_folder)
    parameters = trainable = needed = None
    try:
        info = inspect_model(str(model_folder))
        plan = Plan.from_profile(profile, info, device=device, bf16=machine.all_bf16 if machine else True)
        est = estimate(info, plan)
        parameters, trainable = est.total_parameters, est.trainable_parameters
        needed = est.cpu_ram if device == "cpu" else None
    except (UserError, ValueError, KeyError):
        pass  # an unknown layout: the floors from file sizes still apply
    check_disk(profile, size, runs_dir, parameters=parameters, trainable=trainable, total_steps=total_steps)
    check_ram(profile, size, device=device, parameters=parameters, needed_bytes=needed)
