"""Everything checked before a run dir exists: the model, the data, the processes and the machine.

``preflight(loaded)`` is the one entry; each check raises ``UserError`` naming the profile's file
and field. What needs the model's files reads them light (config.json, safetensors headers); a hub
model or dataset must be in the cache or on the Hub. Disk and RAM arithmetic is in resources.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tuiwiz.data.datasets import LoadedData
from tuiwiz.data.preference_prompts import check_prompt_lengths_light
from tuiwiz.demo.builtin import is_builtin, resolve_builtin
from tuiwiz.errors import UserError
from tuiwiz.hub_access import hub_repo_info, is_hub_id, looks_like_path
from tuiwiz.methods import method
from tuiwiz.profile.io import DATA_SUFFIXES, LoadedProfile, is_local_data
from tuiwiz.profile.schema import Profile
from tuiwiz.run.resources import check_resources
from tuiwiz.run.reward_checks import check_rewards
from tuiwiz.tasks import TASKS
from tuiwiz.units import gib


def _check_model(profile: Profile, source: str) -> None:
    name = profile.model.name_or_path
    if is_builtin(name):
        resolve_builtin(name, build=False)
        return
    path = Path(name)
    if path.is_absolute():
        if not path.exists():
            raise UserError(
                f"model folder {name} does not exist", hint="give a local folder, a hub id, or 'demo'",
                file=source, field="model.name_or_path", kind="model",
            )
        if not (path / "config.json").is_file():
            raise UserError(
                f"model folder {name} has no config.json",
                hint="point model.name_or_path at the folder that holds config.json and the weights",
                file=source, field="model.name_or_path", kind="model",
            )
        return

    # resolve_paths made every folder that exists absolute: what is left is a hub id or a missing folder
    if looks_like_path(name) or not is_hub_id(name):
        raise UserError(
            f"no such folder: {name}{_relative_to(source)}, and it is not a Hugging Face model id",
            hint="give the folder that holds config.json (relative to the profile's folder), an id such as "
                 "org/name, or 'demo'", file=source, field="model.name_or_path", kind="model",
        )
    check_hub_repo(name, "model", field="model.name_or_path", file=source, revision=profile.model.revision)


def _relative_to(source: str) -> str:
    return f" (read relative to {Path(source).parent})" if source != "<profile>" else ""


def _model_folder(profile: Profile) -> Path | None:
    """The model's folder on this machine: the built-in's, the local folder, or a hub id's cached snapshot."""
    name = profile.model.name_or_path
    if is_builtin(name):
        return resolve_builtin(name, build=False)
    if Path(name).is_absolute():
        return Path(name)
    from tuiwiz.plan.modelinfo import resolve_model_dir

    try:
        folder, source = resolve_model_dir(name, profile.model.revision)
    except UserError:
        return None  # not downloaded yet: the runner downloads it
    return folder if source == "hf-cache" else None


def _local_model_folder(profile: Profile) -> Path | None:
    """The model's folder when it is already on this machine (its tokenizer is read from there)."""
    folder = _model_folder(profile)
    return folder if folder is not None and (folder / "tokenizer.json").is_file() else None


PROMPTS_FIRST = 16  # rows whose prompts _check_lengths measures before the whole set


def _check_lengths(profile: Profile, data, folder: Path) -> None:
    """Refuse data whose every example leaves nothing to learn within max_length."""
    from tuiwiz.data.rendering import ModelText, length_stats

    if data.format not in ("alpaca", "messages"):
        return  # text and classification rows are truncated, never emptied
    try:
        model = ModelText(folder)
        # One example whose prompt leaves room is enough to pass: the first few rows nearly always show one,
        # which spares a large set's rendering and tokenizing (a quarter of a second for 1,000 rows here)
        # before the runner, which does both again, can start.
        first = [model.render(record, data.format).prompt for record in data.records[:PROMPTS_FIRST]]
        if any(n < profile.data.max_length for n in model.count(first)):
            return
        stats = length_stats(data.records, data.format, model, profile.data.max_length)
    except UserError:
        return  # no fast tokenizer here: the runner checks after tokenizing
    if stats.sampled and stats.prompt_too_long >= stats.rows:
        raise UserError(
            f"every example's prompt is at least data.max_length={profile.data.max_length} tokens "
            f"(examples run to {stats.p50} tokens at the median, {stats.max} at most), "
            "so no answer token would be trained",
            hint=f"raise data.max_length to about {stats.p95 + 64}, or shorten the prompts",
            file=data.path, field="data.max_length", kind="data",
        )


def _check_data(profile: Profile, source: str) -> None:
    from tuiwiz.data import datasets as datamod
    from tuiwiz.demo.build import resolve_demo_uri

    columns = profile.data.columns
    folder = _local_model_folder(profile)
    loaded = {}
    for field_name, value in (("data.path", profile.data.path), ("data.validation_path", profile.data.validation_path)):
        if not value:
            continue
        if value.startswith("demo:"):
            try:
                resolve_demo_uri(value, build=False)
            except UserError as exc:
                raise UserError(exc.message, hint=exc.hint, file=source, field=field_name, kind="data") from None
            continue
        if not is_local_data(value):
            _check_hub_data(value, source, field_name)
            continue  # the runner loads it
        data = datamod.load_dataset_file(
            Path(value), format=profile.data.format, columns=columns, task=profile.task, limit=profile.data.limit,
            evaluation=field_name == "data.validation_path",
        )
        loaded[field_name] = data
        if folder is not None:
            check_chat_template(data, folder, field=field_name)
            check_prompt_lengths_light(profile, data, folder)
            if field_name == "data.path":
                _check_lengths(profile, data, folder)
    if len(loaded) == 2:
        datamod.check_validation_labels(loaded["data.path"], loaded["data.validation_path"],
                                        label_column=profile.data.columns.label)


def _check_hub_data(value: str, source: str, field_name: str) -> None:

    name, _, split = value.partition(":")  # org/name or org/name:split, as the runner reads it
    if not is_hub_id(name):
        raise UserError(
            f"no such file or folder: {value}{_relative_to(source)}, and it is not a Hugging Face dataset id",
            hint=f"give a data file ({', '.join(DATA_SUFFIXES)}; relative to the profile's folder), "
                 "an id such as org/name or org/name:split, or demo:NAME", file=source, field=field_name, kind="data",
        )
    check_hub_repo(name, "dataset", field=field_name, file=source, split=split or "train")


def _check_processes(profile: Profile, source: str) -> None:
    """One process per GPU: more processes than this machine has GPUs cannot work.

    A machine without NVIDIA GPUs runs the ranks on the CPU over gloo (for trying a setup out).
    """
    dist = profile.distributed
    if dist.offload_optimizer or dist.offload_params:
        _check_offload_ram(profile, source)
    if dist.num_processes == 1 or dist.gpus is not None:
        return
    from tuiwiz.plan.hardware import probe as probe_hardware

    gpus = probe_hardware(profile.output.runs_dir).gpus
    if gpus and dist.num_processes > len(gpus):
        raise UserError(
            f"{dist.num_processes} processes but this machine has {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}",
            hint=f"set distributed.num_processes to at most {len(gpus)}", file=source,
            field="distributed.num_processes", kind="profile",
        )


def _check_offload_ram(profile: Profile, source: str) -> None:
    """ZeRO offload keeps optimizer states (and parameters) in host RAM: refuse when it is short."""
    from tuiwiz.plan.hardware import probe as probe_hardware
    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.modelinfo import inspect_model

    name = profile.model.name_or_path
    if is_builtin(name) and not (resolve_builtin(name, build=False) / "config.json").is_file():
        return  # the demo before its first build: small by construction
    try:
        model = inspect_model(name, profile.model.revision)
    except UserError:
        return  # a hub model not in the cache: the runner will say so
    dist = profile.distributed
    machine = probe_hardware(profile.output.runs_dir)
    strategy = "zero3_offload_all" if dist.offload_params else "zero3_offload_optimizer"
    plan = Plan.from_profile(profile, model, device="cuda", bf16=True, strategy=strategy)
    need = estimate(model, plan, dist.num_processes).cpu_ram
    have = machine.ram_available_mb * 2**20
    if need > have:
        raise UserError(
            f"offloading to CPU needs about {gib(need)} of RAM on this machine; {gib(have)} is available",
            hint="offload only the optimizer (offload_params: false), use more GPUs, or a lighter method (lora)",
            file=source, field="distributed.offload_params" if dist.offload_params else "distributed.offload_optimizer",
            kind="resources",
        )


def _check_resources(profile: Profile) -> None:
    """Weights readable, and room on disk and in RAM, before a run dir exists."""

    folder = _model_folder(profile)
    if folder is None or not (folder / "config.json").is_file():
        return  # a hub id not downloaded, or the demo before its first build
    check_model_files(folder)
    check_resources(profile, folder, profile.output.runs_dir)


def _check_modules(profile: Profile, source: str) -> None:
    """Module names the method lists (target_modules, feedforward_modules, modules_to_save) must be
    modules of the model: peft would stop the run at its start with a ValueError otherwise."""
    method = profile.method
    named = [(f"method.{key}", value) for key in ("target_modules", "feedforward_modules", "modules_to_save")
             if isinstance(value := getattr(method, key, None), list)]
    folder = _model_folder(profile) if named else None
    if folder is None or not (folder / "config.json").is_file():
        return  # nothing named, or the model is not here yet (the runner's peft says it then)
    from tuiwiz.plan.modelinfo import inspect_model

    model = inspect_model(str(folder))
    for field, names in named:
        missing = [name for name in names if model.has_module(name) is False]
        if missing:
            raise UserError(
                f"{field} names {', '.join(repr(n) for n in missing)}, "
                f"which {profile.model.name_or_path} does not have",
                hint=f"its linear layers are {', '.join(model.linear_modules) or 'unknown'}; "
                     "or leave target_modules: auto", file=source, field=field, kind="profile")


def _check_packing(profile: Profile, source: str) -> None:
    """Packing that would let examples attend to each other is refused (the runner checks the model itself once
    loaded: tuiwiz/train/packing.py); here what the profile and config.json already tell."""
    if not profile.data.packing:
        return
    chosen = method(profile.method.type)
    if chosen.family == "prompt":
        raise UserError(
            f"data.packing puts several examples in one row, and {chosen.title} adds its trained tokens once a row, "
            "not once an example", hint="set data.packing: false, or use another method (lora)",
            file=source, field="data.packing", kind="profile",
        )
    folder = _model_folder(profile) if profile.model.trust_remote_code else None
    if folder is not None and "AutoModelForCausalLM" in _auto_map(folder):
        raise UserError(
            f"data.packing needs the model's attention to keep packed examples apart, and "
            f"{profile.model.name_or_path} runs its own code (trust_remote_code, auto_map in config.json), "
            "which tuiwiz cannot check", hint="set data.packing: false, or model.trust_remote_code: false where "
            "transformers itself ships the model's architecture", file=source, field="data.packing", kind="profile",
        )


def _auto_map(folder: Path) -> dict:
    import json

    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return {}
    return value if isinstance(value, dict) else {}


# The package each tracker needs, by the name report_to gives it
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
                    "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive", "neptune": "neptune",
                    "swanlab": "swanlab"}


def _check_trackers(profile: Profile, source: str) -> None:
    """A tracker whose package is missing would stop the run as it starts: refuse it now."""
    from importlib.util import find_spec

    for name in profile.output.report_to:
        package = TRACKER_PACKAGES[name]
        if find_spec(package) is None:
            raise UserError(f"output.report_to names {name}, but its package {package} is not installed",
                            hint=f"pip install {package}, or remove {name} from output.report_to "
                                 "(its credentials come from the environment, never the profile)",
                            file=source, field="output.report_to", kind="profile")


def preflight(loaded: LoadedProfile) -> None:
    """Everything that can be checked before a run dir exists. Raises UserError."""
    source = str(loaded.source) if loaded.source else "<profile>"
    _check_model(loaded.profile, source)
    _check_architecture(loaded.profile, source)
    _check_start(loaded.profile, source)
    _check_modules(loaded.profile, source)
    _check_trackers(loaded.profile, source)
    _check_packing(loaded.profile, source)
    _check_data(loaded.profile, source)
    check_rewards(loaded.profile, source)
    _check_processes(loaded.profile, source)
    _check_resources(loaded.profile)


def _check_architecture(profile: Profile, source: str) -> None:
    """An encoder-decoder task needs an encoder-decoder model, and the other tasks a decoder (or an encoder
    for classification): told from config.json before any weights load, where the folder is here."""
    import json

    folder = _model_folder(profile)
    if folder is None or not (folder / "config.json").is_file() or profile.model.start_from:
        return
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the runner's own load says what is wrong with it
    encoder_decoder = bool(config.get("is_encoder_decoder")) if isinstance(config, dict) else False
    wants = TASKS[profile.task].model
    if (wants == "seq2seq") != encoder_decoder:
        kind = config.get("model_type", "?") if isinstance(config, dict) else "?"
        raise UserError(
            f"task {profile.task} needs {'an encoder-decoder' if wants == 'seq2seq' else 'a decoder-only'} model; "
            f"{profile.model.name_or_path} is {'an encoder-decoder' if encoder_decoder else 'a decoder-only'} "
            f"model ({kind})",
            hint="seq2seq trains T5, mT5, mT0, BART and their kin ('demo-t5' is built in); the other tasks train "
                 "decoder-only models such as Llama, Qwen or 'demo'",
            file=source, field="model.name_or_path", kind="model")


def _check_start(profile: Profile, source: str) -> None:
    """model.start_from names a completed run whose model a later run can load."""
    if profile.model.start_from is None:
        return
    from tuiwiz.run.outputs import earlier_output

    try:
        earlier_output(profile.model.start_from)
    except UserError as exc:
        raise UserError(exc.message, hint=exc.hint, file=source, field="model.start_from", kind="profile") from None


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
