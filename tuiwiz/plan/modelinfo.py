"""What a model is, read from its files without loading a weight (and without torch).

``inspect_model`` finds the model (a built-in, a local folder, or the Hugging
Face cache; never the network), reads ``config.json`` and the safetensors
headers, and returns a ``ModelInfo``: the shapes the memory estimate needs, the
exact parameter count, and the linear layers that LoRA can target. The per-architecture
tables are in architectures.py, the safetensors header reading in weights.py.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.hub_access import is_hub_id, looks_like_path
from tuiwiz.plan.architectures import NOT_LINEAR, TIED_ON_LOAD, LinearLayer, config_layout, text_config
from tuiwiz.plan.weights import DTYPE_NAMES, is_buffer, linears_from_weights, read_safetensors_header


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the user gave it
    path: str | None  # the folder read
    source: str  # builtin / local / hf-cache / hub (not downloaded: path holds its metadata files only)
    revision: str | None
    architecture: str | None  # e.g. LlamaForCausalLM
    model_type: str
    known_architecture: bool  # the layout below comes from a table, not a guess
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str | None  # the checkpoint's dtype (config torch_dtype/dtype, else the weights')
    max_position_embeddings: int | None
    license: str | None
    size_on_disk: int  # bytes, every file in the folder (for a hub model: in the repository, to download)
    num_parameters: int
    parameter_source: str  # safetensors / config / estimate
    config_parameters: int  # the count derived from config.json alone
    linear_layers: tuple[LinearLayer, ...]
    embedding_parameters: int  # token (and position/type) embeddings
    lm_head_parameters: int  # 0 when tied to the embeddings
    bias_parameters: int  # every ``*.bias`` (what BitFit trains)
    gated_mlp: bool  # SwiGLU/GeGLU (gate, up, down) rather than one up projection
    weight_files: tuple[str, ...] = ()
    quantization: str | None = None
    warnings: tuple[str, ...] = ()
    # every module that holds a weight, by its path (from the safetensors headers; empty from a config
    # alone): what peft's target_modules and modules_to_save may name
    module_paths: tuple[str, ...] = field(default=(), repr=False)
    num_decoder_layers: int = 0  # an encoder-decoder model's decoder blocks (num_layers are its encoder's); 0: none
    dropout: float = 0.0  # dropout on hidden states while training (T5's dropout_rate, BERT's hidden_dropout_prob)
    attention_dropout: float = 0.0  # dropout on attention probabilities (BERT's attention_probs_dropout_prob)

    @property
    def encoder_decoder(self) -> bool:
        return self.num_decoder_layers > 0

    def targeted_layers(self, targets: tuple[str, ...] | None) -> tuple[LinearLayer, ...]:
        """The linear layers peft wraps for ``targets`` (None: every linear layer, "all-linear")."""
        if targets is None:
            return self.linear_layers
        return tuple(layer for layer in self.linear_layers if any(layer.matches(t) for t in targets))

    def has_module(self, target: str) -> bool | None:
        """Whether ``target`` names a module the way peft matches it (the path, or a suffix of whole
        components); None when the weights were not read, so the modules are unknown."""
        if not self.module_paths:
            return None
        return any(path == target or path.endswith("." + target) for path in self.module_paths)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def context_length(self) -> int | None:
        return self.max_position_embeddings

    @property
    def linear_modules(self) -> tuple[str, ...]:
        """Distinct module names for LoRA ``target_modules``, in model order."""
        return tuple(dict.fromkeys(layer.name for layer in self.linear_layers if layer.count > 1))

    @property
    def linear_weight_parameters(self) -> int:
        return sum(layer.weight_parameters for layer in self.linear_layers)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data.pop("module_paths")  # hundreds of paths; linear_modules says what to target
        data["linear_modules"] = list(self.linear_modules)
        return data


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    size_on_disk: int
    path: str  # the snapshot folder of the newest revision
    revisions: int


# ---------------------------------------------------------------- finding the model


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("not a text file", file=path, hint="config.json must be JSON text", kind="model") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON: {exc.msg}", file=path, line=exc.lineno,
                        hint="the file is damaged: download the model again", kind="model") from None
    if not isinstance(data, dict):
        raise UserError("not a JSON object", file=path, hint="config.json holds one JSON object", kind="model")
    return data


def weight_file_paths(folder: Path) -> tuple[Path, ...]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        names = sorted(set((data.get("weight_map") or {}).values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UserError(f"shard {missing[0]} listed in the index is missing", file=index,
                            hint="download the model again; every shard must be present", kind="model")
        return tuple(folder / n for n in names)
    single = folder / "model.safetensors"
    if single.is_file():
        return (single,)
    return tuple(sorted(folder.glob("*.safetensors")))


class NotInCache(UserError):
    """A well-formed hub id that the Hugging Face cache does not hold."""


def resolve_model_dir(name: str, revision: str | None = None, *, build_demo: bool = False,
                      cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder holding ``name``'s config.json, and where it was found. Never downloads."""
    from tuiwiz.demo.builtin import is_builtin, resolve_builtin

    if is_builtin(name):
        try:
            folder = resolve_builtin(name, build=build_demo)
        except ModuleNotFoundError:
            raise UserError(f"the built-in model '{name}' is not available in this installation",
                            field="model.name_or_path", kind="model") from None
        if not (folder / "config.json").is_file():
            raise UserError(f"the built-in model '{name}' is not built yet", field="model.name_or_path",
                            hint="`tuiwiz demo` builds it (about a second)", kind="model")
        return folder, "builtin"
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{name} is a file, not a model folder", file=path, kind="model",
                            hint="give the folder that holds config.json and the weights")
        return path, "local"
    if looks_like_path(name) or not is_hub_id(name):
        raise UserError(f"model folder {name} does not exist", field="model.name_or_path", kind="model",
                        hint="give a local folder, a Hugging Face model id, or 'demo'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(name, revision=revision, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError, OSError):
        at = f" at revision {revision}" if revision else ""
        raise NotInCache(
            f"model {name}{at} is not in the Hugging Face cache, and tuiwiz does not download while planning",
            field="model.name_or_path", kind="model",
            hint=f"download it first (`hf download {name}`), or give a local folder",
        ) from None
    return Path(folder), "hf-cache"


def cached_models(cache_dir: str | os.PathLike | None = None) -> tuple[CachedModel, ...]:
    """Models in the Hugging Face cache, largest first."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return ()
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        found.append(CachedModel(repo.repo_id, repo.size_on_disk, str(newest.snapshot_path), len(repo.revisions)))
    return tuple(sorted(found, key=lambda m: -m.size_on_disk))


def _license(folder: Path) -> str | None:
    readme = folder / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    import yaml

    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return str(value) if value else None


def _size_on_disk(folder: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".git"]
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def inspect_model(name_or_path: str, revision: str | None = None, *, build_demo: bool = False,
                  cache_dir: str | os.PathLike | None = None, online: bool = False) -> ModelInfo:
    """Everything the planner needs about a model, from its files. Raises UserError.

    With ``online``, a hub id that is not in the cache is read from the Hub's metadata (hub_model.py):
    no weight is downloaded.
    """
    try:
        folder, source = resolve_model_dir(name_or_path, revision, build_demo=build_demo, cache_dir=cache_dir)
    except NotInCache:
        if not online or cache_dir is not None:
            raise
        from tuiwiz.plan.hub_model import fetch_hub_model

        hub = fetch_hub_model(name_or_path, revision)
        return complete_from_files(name_or_path, hub.folder, source="hub", revision=revision, params=hub.params,
                                   weight_files=hub.weight_files, size=hub.size, license=hub.license)
    files = weight_file_paths(folder)
    params = [t for f in files for t in read_safetensors_header(f)]
    return complete_from_files(name_or_path, folder, source=source, revision=revision, params=params,
                               weight_files=tuple(f.name for f in files), size=_size_on_disk(folder),
                               license=_license(folder))


def complete_from_files(name: str, folder: Path, *, source: str, revision: str | None, params: list,
                        weight_files: tuple[str, ...], size: int, license: str | None) -> ModelInfo:
    """A ModelInfo from a folder's config.json and the weights' tensor table (read here, or from the Hub)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json", file=folder, kind="model",
                        hint="point at the folder that holds config.json and the weights")
    raw = _read_json(config_file)
    try:
        info = model_from_config(raw, name)
    except KeyError as exc:
        raise UserError(f"config.json lacks the model's shape ({exc.args[0]})", file=config_file, kind="model",
                        hint="is this a transformer language model's config.json?") from None
    warnings = list(info.warnings)
    quant = raw["quantization_config"].get("quant_method") if isinstance(raw.get("quantization_config"),
                                                                           dict) else None
    tied = TIED_ON_LOAD.get(info.model_type, ())
    params = [t for t in params if not is_buffer(t.name) and t.name not in tied]
    found: dict = {}
    if params and not quant:
        found = dict(num_parameters=sum(t.numel for t in params), parameter_source="safetensors",
                     bias_parameters=sum(t.numel for t in params if t.name.endswith(".bias")),
                     module_paths=tuple(dict.fromkeys(t.name.rpartition(".")[0] for t in params)))
        from_weights = tuple(lr for lr in linears_from_weights(params, conv1d=info.model_type == "gpt2")
                             if lr.name not in NOT_LINEAR)
        if from_weights:  # in the table's order where the table knows the module
            order = [layer.path for layer in info.linear_layers]
            found["linear_layers"] = tuple(sorted(
                from_weights, key=lambda lr: order.index(lr.path) if lr.path in order else len(order)))
        if not info.dtype:
            by_dtype = Counter()
            for t in params:
                by_dtype[t.dtype] += t.numel
            found["dtype"] = DTYPE_NAMES.get(by_dtype.most_common(1)[0][0])
    elif quant:
        warnings.append(f"pre-quantized checkpoint ({quant}): parameter count from config.json")
    elif not weight_files:
        warnings.append("no .safetensors weights: parameter count from config.json")
    return replace(info, path=str(folder), source=source, revision=revision, license=license,
                   size_on_disk=size, weight_files=weight_files,
                   quantization=quant, warnings=tuple(warnings), **found)


def model_from_config(config: dict, name: str = "config") -> ModelInfo:
    """A ModelInfo from a config dict alone (no files): for planning and tests. KeyError without shapes."""
    text = text_config(config)
    layout, d, known = config_layout(text)
    model_type = str(text.get("model_type") or "unknown")
    warnings = []
    if not known:
        warnings.append(f"unknown architecture '{model_type}': shapes are guessed, the estimate errs high")
    if text is not config:
        warnings.append("multimodal model: the estimate covers its language model")
    dtype = text.get("torch_dtype") or text.get("dtype")
    return ModelInfo(
        name=name, path=None, source="config", revision=None, architecture=(text.get("architectures") or [None])[0],
        model_type=model_type, known_architecture=known, num_layers=d.layers, hidden_size=d.hidden,
        num_heads=d.heads, num_kv_heads=d.kv_heads, head_dim=d.head_dim, intermediate_size=d.intermediate,
        vocab_size=d.vocab, tie_word_embeddings=d.tie, dtype=str(dtype) if dtype else None,
        max_position_embeddings=d.context, license=None, size_on_disk=0, num_parameters=layout.total,
        parameter_source="config" if known else "estimate", config_parameters=layout.total,
        linear_layers=layout.linears, embedding_parameters=layout.embedding, lm_head_parameters=layout.lm_head,
        bias_parameters=layout.bias, gated_mlp=layout.gated_mlp, warnings=tuple(warnings),
        num_decoder_layers=d.decoder_layers, dropout=d.dropout, attention_dropout=d.attention_dropout,
    )
