"""Checks that need the model's files or the machine, made before a run dir exists.

Free disk for the checkpoints and the output, RAM to load and train, and a chat
template for chat data; a hub model or dataset that is in the cache or on the Hub.
Torch-free: sizes come from file sizes and safetensors headers. Free space and RAM
can be injected, so every refusal is testable. Each check raises ``UserError`` with
the numbers it compared.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.data.datasets import LoadedData
from tuiwiz.errors import UserError
from tuiwiz.hub_access import hub_repo_info
from tuiwiz.plan.memory import optimizer_bytes_per_param
from tuiwiz.profile.schema import Profile

GB = 10**9
MiB = 2**20
# Per checkpoint and for the output: tokenizer files, trainer state, scheduler and RNG state.
SMALL_FILES = 64 * MiB
# The runner process before the model is built (torch, transformers imported; memory.CONSTANTS.cpu_runtime).
RUNTIME_RAM = 700 * MiB
PEFT_METHODS = ("lora", "qlora", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3", "adalora")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _gb(n: int | float) -> str:
    return f"{n / GB:.1f} GB"



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
    if profile.method.type in ("full", "bitfit") or device == "cpu" or profile.training.precision == "fp32":
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
    if method in PEFT_METHODS:
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
            f"the run needs {_gb(need.total)} free on the disk of {runs_dir} ({count} of {_gb(need.checkpoint)} "
            f"at once, and a {_gb(need.output)} output); {_gb(free_bytes)} is free",
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
            f"the run needs {_gb(need)} of RAM {where}; {_gb(available_bytes)} is available",
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


# --- chat template -----------------------------------------------------------------


def chat_template_of(model_folder: str | Path) -> str | None:
    """The model's chat template, from tokenizer_config.json or chat_template.jinja/.json."""
    from tuiwiz.data.rendering import ModelText

    return ModelText(model_folder).chat_template or _chat_template_json(Path(model_folder))


def _chat_template_json(folder: Path) -> str | None:
    import json

    path = folder / "chat_template.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def check_chat_template(data: LoadedData, model_folder: str | Path, *, field: str = "data.path") -> None:
    """Refuse chat (messages) data for a model whose tokenizer has no chat template."""
    if data.format != "messages" or chat_template_of(model_folder):
        return
    raise UserError(
        f"{data.path} holds chat messages, but the model in {model_folder} has no chat template "
        "(none in tokenizer_config.json, no chat_template.jinja)",
        hint="use a chat (instruct) model, or convert the data to alpaca (instruction/output) or text format",
        file=data.path, field=field, kind="data",
    )


# --- model files -------------------------------------------------------------------


def check_model_files(model_folder: str | Path, *, field: str = "model.name_or_path") -> None:
    """Refuse a model folder whose weights are missing, truncated or not safetensors at all.

    Reads the safetensors headers only (a few KB); a folder with pytorch .bin weights alone passes
    (they cannot be checked without torch).
    """
    from tuiwiz.plan.modelinfo import weight_file_paths
    from tuiwiz.plan.weights import read_safetensors_header

    folder = Path(model_folder)
    files = weight_file_paths(folder)
    if not files and not list(folder.glob("*.bin")):
        raise UserError(
            f"the model folder {folder} has no weights (no model.safetensors, no shards, no .bin)",
            hint="download the model again; the weights are the large files beside config.json",
            field=field, kind="model",
        )
    for path in files:
        read_safetensors_header(path)


# --- hub repositories --------------------------------------------------------------

def _prepared_by_datasets(name: str) -> bool:
    """A dataset that ``datasets`` prepared itself (HF_DATASETS_CACHE/namespace___name/config/version/hash),
    which it reloads offline without the Hugging Face cache."""
    from huggingface_hub import constants

    root = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets").expanduser()
    parts = name.split("/")
    # datasets' camelcase_to_snakecase of the name (datasets.naming would import the whole of datasets)
    parts[-1] = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", parts[-1])).lower()
    return any(p.is_dir() for p in (root / "___".join(parts)).glob("*/*/*"))


def _in_cache(repo_id: str, repo_type: str, revision: str | None, split: str) -> bool:
    if repo_type == "model":
        from tuiwiz.plan.modelinfo import resolve_model_dir

        try:
            return resolve_model_dir(repo_id, revision)[1] == "hf-cache"
        except UserError:
            return False
    from tuiwiz.data.datasets import cached_hub_dataset_files

    # what the runner reads offline: datasets' own cache, else the split's files in the hub cache
    return _prepared_by_datasets(repo_id) or bool(cached_hub_dataset_files(repo_id, split))


def check_hub_repo(repo_id: str, repo_type: str = "model", *, field: str, file: str | None = None,
                   revision: str | None = None, split: str = "train") -> None:
    """Refuse a hub model or dataset that the runner could neither find in the cache nor download.

    In the Hugging Face cache: passes without the network. Offline: refused. Otherwise one metadata
    request (HfApi.model_info / dataset_info, the token as huggingface_hub finds it) says whether it exists.
    """
    if _in_cache(repo_id, repo_type, revision, split):
        return
    hub_repo_info(repo_id, repo_type, field=field, file=file, revision=revision, split=split)
