"""What a model is, read from its files without loading a weight (and without torch).

``inspect_model`` finds the model (a built-in, a local folder, or the Hugging
Face cache; never the network), reads ``config.json`` and the safetensors
headers, and returns a ``ModelInfo``: the shapes the memory estimate needs, the
exact parameter count, and the linear layers that LoRA can target.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import UserError

# Tensors in some checkpoints that are buffers, not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".inv_freq", ".position_ids")
_EMBEDDING_WORDS = ("embed", "wte", "wpe", "shared")
_OUTPUT_HEADS = ("lm_head", "embed_out", "cls.predictions.decoder", "score", "classifier", "output")
_BASE_PREFIXES = ("model", "bert", "roberta", "transformer", "gpt_neox", "base_model")
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "U8": "uint8",
                "I8": "int8"}


@dataclass(frozen=True)
class LinearLayer:
    """One kind of linear module, e.g. every layer's ``self_attn.q_proj``."""

    path: str  # module path inside a block (``self_attn.q_proj``), or in the model for one-offs
    in_features: int
    out_features: int
    count: int
    bias: bool

    @property
    def name(self) -> str:
        """The last component: what peft's ``target_modules`` usually names."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def weight_parameters(self) -> int:
        return self.count * self.in_features * self.out_features

    @property
    def parameters(self) -> int:
        return self.weight_parameters + (self.count * self.out_features if self.bias else 0)

    def matches(self, target: str) -> bool:
        """peft's rule: a target names a module by its full path or by a suffix of whole components."""
        return self.path == target or self.path.endswith("." + target)


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the user gave it
    path: str | None  # the folder read
    source: str  # builtin / local / hf-cache
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
    size_on_disk: int  # bytes, every file in the folder
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
        data["linear_modules"] = list(self.linear_modules)
        return data


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    size_on_disk: int
    path: str  # the snapshot folder of the newest revision
    revisions: int


# ---------------------------------------------------------------- per-architecture layouts


@dataclass(frozen=True)
class _Layout:
    linears: tuple[LinearLayer, ...]
    embedding: int
    lm_head: int
    other: int  # norms, biases outside linears, heads' extras
    other_bias: int  # the part of ``other`` named *.bias
    gated_mlp: bool

    @property
    def total(self) -> int:
        return sum(layer.parameters for layer in self.linears) + self.embedding + self.lm_head + self.other

    @property
    def bias(self) -> int:
        return sum(layer.count * layer.out_features for layer in self.linears if layer.bias) + self.other_bias


def _get(config: dict, *keys, default=None):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


# model_type -> (family, tie default). The tie default is the config class's own default.
_FAMILIES = {
    "llama": ("decoder", False), "mistral": ("decoder", False), "qwen2": ("decoder", False),
    "qwen3": ("decoder", True), "gemma": ("decoder", True), "gemma2": ("decoder", True),
    "phi3": ("phi3", False), "gpt2": ("gpt2", True), "bert": ("bert", True), "roberta": ("bert", True),
    "gpt_neox": ("gpt_neox", False),
}


@dataclass(frozen=True)
class _Dims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie: bool
    context: int | None


def _dims(config: dict, model_type: str) -> _Dims:
    hidden = _get(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _get(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    vocab = _get(config, "vocab_size", "padded_vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        raise KeyError("hidden_size/num_hidden_layers/num_attention_heads/vocab_size")
    kv = _get(config, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads)
    head_dim = _get(config, "head_dim", default=hidden // heads)
    inter = _get(config, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", default=4 * hidden)
    tie = config.get("tie_word_embeddings", _FAMILIES.get(model_type, ("", True))[1])
    context = _get(config, "max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
    return _Dims(layers, hidden, heads, kv, head_dim, inter, vocab, bool(tie), context)


def _decoder_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    """Llama and its relatives: q/k/v/o, gate/up/down, RMSNorm (no norm biases)."""
    H, L, q, kv, inter = d.hidden, d.layers, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate
    qkv_bias = True if model_type == "qwen2" else bool(config.get("attention_bias", False))
    o_bias = bool(config.get("attention_bias", False)) and model_type != "qwen2"
    mlp_bias = bool(config.get("mlp_bias", False))
    linears = (
        LinearLayer("self_attn.q_proj", H, q, L, qkv_bias),
        LinearLayer("self_attn.k_proj", H, kv, L, qkv_bias),
        LinearLayer("self_attn.v_proj", H, kv, L, qkv_bias),
        LinearLayer("self_attn.o_proj", q, H, L, o_bias),
        LinearLayer("mlp.gate_proj", H, inter, L, mlp_bias),
        LinearLayer("mlp.up_proj", H, inter, L, mlp_bias),
        LinearLayer("mlp.down_proj", inter, H, L, mlp_bias),
    )
    norms = (4 if model_type == "gemma2" else 2) * H + (2 * d.head_dim if model_type == "qwen3" else 0)
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, L * norms + H, 0, True)


def _phi3_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, q, kv, inter = d.hidden, d.layers, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate
    linears = (
        LinearLayer("self_attn.qkv_proj", H, q + 2 * kv, L, False),
        LinearLayer("self_attn.o_proj", q, H, L, False),
        LinearLayer("mlp.gate_up_proj", H, 2 * inter, L, False),
        LinearLayer("mlp.down_proj", inter, H, L, False),
    )
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, L * 2 * H + H, 0, True)


def _gpt2_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, inter = d.hidden, d.layers, d.intermediate
    linears = (
        LinearLayer("attn.c_attn", H, 3 * H, L, True),
        LinearLayer("attn.c_proj", H, H, L, True),
        LinearLayer("mlp.c_fc", H, inter, L, True),
        LinearLayer("mlp.c_proj", inter, H, L, True),
    )
    positions = (d.context or 1024) * H
    layer_norms = (2 * L + 1) * 2 * H  # ln_1, ln_2 per block, ln_f; weight and bias each
    return _Layout(linears, d.vocab * H + positions, 0 if d.tie else d.vocab * H, layer_norms,
                   (2 * L + 1) * H, False)


def _gpt_neox_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, inter = d.hidden, d.layers, d.intermediate
    bias = bool(config.get("attention_bias", True))
    linears = (
        LinearLayer("attention.query_key_value", H, 3 * H, L, bias),
        LinearLayer("attention.dense", H, H, L, bias),
        LinearLayer("mlp.dense_h_to_4h", H, inter, L, True),
        LinearLayer("mlp.dense_4h_to_h", inter, H, L, True),
    )
    norms = (2 * L + 1) * 2 * H
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, norms, (2 * L + 1) * H, False)


def _num_labels(config: dict) -> int:
    labels = config.get("id2label") or {}
    return len(labels) or int(config.get("num_labels", 2))


def _bert_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, inter = d.hidden, d.layers, d.intermediate
    arch = (config.get("architectures") or ["BertModel"])[0]
    linears = [
        LinearLayer("attention.self.query", H, H, L, True),
        LinearLayer("attention.self.key", H, H, L, True),
        LinearLayer("attention.self.value", H, H, L, True),
        LinearLayer("attention.output.dense", H, H, L, True),
        LinearLayer("intermediate.dense", H, inter, L, True),
        LinearLayer("output.dense", inter, H, L, True),
    ]
    embeddings = (d.vocab + (d.context or 512) + int(config.get("type_vocab_size", 2))) * H
    norms = (2 * L + 1) * 2 * H  # two LayerNorms per layer and the embeddings' one
    other, other_bias = norms, (2 * L + 1) * H
    if arch.endswith(("ForMaskedLM", "ForPreTraining", "LMHeadModel", "ForCausalLM")):
        linears.append(LinearLayer("cls.predictions.transform.dense", H, H, 1, True))
        other += 2 * H + d.vocab  # the transform's LayerNorm, the decoder's bias (its weight is tied)
        other_bias += H + d.vocab
    if not arch.endswith(("ForMaskedLM", "ForCausalLM", "LMHeadModel")):
        linears.append(LinearLayer("pooler.dense", H, H, 1, True))
    if arch.endswith("ForPreTraining"):
        other += 2 * H + 2  # next-sentence head
        other_bias += 2
    if arch.endswith("ForSequenceClassification"):
        n = _num_labels(config)
        other += n * H + n
        other_bias += n
    return _Layout(tuple(linears), embeddings, 0, other, other_bias, False)


def _generic_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    """Unknown architecture: assume a gated MLP and untied head, so the guess errs high."""
    layout = _decoder_layout({}, "llama", d)
    return _Layout(layout.linears, d.vocab * d.hidden, d.vocab * d.hidden, layout.other, 0, True)


_LAYOUTS = {"decoder": _decoder_layout, "phi3": _phi3_layout, "gpt2": _gpt2_layout, "bert": _bert_layout,
            "gpt_neox": _gpt_neox_layout}


def _with_sequence_classifier(layout: _Layout, config: dict, d: _Dims) -> _Layout:
    """A decoder loaded for classification: ``score`` (no bias) replaces the LM head."""
    return replace(layout, lm_head=_num_labels(config) * d.hidden)


def config_layout(config: dict) -> tuple[_Layout, _Dims, bool]:
    """(layout, dims, known) from a config dict (nested ``text_config`` resolved by the caller)."""
    model_type = str(config.get("model_type", ""))
    d = _dims(config, model_type)
    family = _FAMILIES.get(model_type, (None,))[0]
    layout = _LAYOUTS.get(family, _generic_layout)(config, model_type, d)
    arch = (config.get("architectures") or [""])[0]
    if family in ("decoder", "phi3", "gpt_neox") and arch.endswith("ForSequenceClassification"):
        layout = _with_sequence_classifier(layout, config, d)
    return layout, d, family is not None


def config_parameter_count(config: dict) -> int:
    """Parameters of the model ``config`` describes (its ``architectures[0]`` class), from shapes alone."""
    return config_layout(_text_config(config))[0].total


def _text_config(config: dict) -> dict:
    """Multimodal configs keep the language model in ``text_config``."""
    text = config.get("text_config")
    if isinstance(text, dict) and text:
        merged = dict(text)
        merged.setdefault("architectures", config.get("architectures"))
        merged.setdefault("model_type", text.get("model_type", config.get("model_type")))
        for key in ("torch_dtype", "dtype", "tie_word_embeddings"):
            if key not in merged and key in config:
                merged[key] = config[key]
        return merged
    return config


# ---------------------------------------------------------------- safetensors headers


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_safetensors_header(path: Path) -> tuple[_Tensor, ...]:
    """The tensor table of one .safetensors file: 8-byte little-endian length, then JSON."""
    hint = "the file is damaged or incomplete: download it again"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError("not a safetensors file: shorter than its 8-byte header length", file=path,
                            hint=hint, kind="model")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise UserError(f"safetensors header length {length} runs past the end of the file ({size} bytes)",
                            file=path, hint=hint, kind="model")
        raw = fh.read(length)
    try:
        table = json.loads(raw)
        if not isinstance(table, dict):
            raise ValueError("the header is not a JSON object")
        tensors, end = [], 0
        for name, entry in table.items():
            if name == "__metadata__":
                continue
            shape = tuple(int(s) for s in entry["shape"])
            start, stop = (int(x) for x in entry["data_offsets"])
            end = max(end, stop)
            tensors.append(_Tensor(name, str(entry["dtype"]), shape))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"bad safetensors header: {exc}", file=path, hint=hint, kind="model") from None
    if 8 + length + end > size:
        raise UserError(f"truncated safetensors file: tensors end at byte {8 + length + end}, the file has {size}",
                        file=path, hint=hint, kind="model")
    return tuple(tensors)


def _weight_files(folder: Path) -> tuple[Path, ...]:
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


def _is_buffer(name: str) -> bool:
    return name.endswith(_BUFFER_SUFFIXES)


def _linears_from_weights(tensors, conv1d: bool) -> tuple[LinearLayer, ...]:
    names = {t.name for t in tensors}
    groups: dict[tuple[str, int, int, bool], int] = {}
    for t in tensors:
        if not t.name.endswith(".weight") or len(t.shape) != 2:
            continue
        module = t.name[: -len(".weight")]
        last = module.rsplit(".", 1)[-1]
        if any(w in last for w in _EMBEDDING_WORDS) or "embeddings" in module:
            continue
        if any(module == h or module.endswith("." + h) for h in _OUTPUT_HEADS):
            continue
        parts = module.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        if digits:
            path = ".".join(parts[digits[-1] + 1:])
        else:  # a one-off module (pooler, head transform): drop the base model's prefix
            while len(parts) > 1 and parts[0] in _BASE_PREFIXES:
                parts = parts[1:]
            path = ".".join(parts)
        out_f, in_f = (t.shape[1], t.shape[0]) if conv1d else t.shape
        key = (path, in_f, out_f, f"{module}.bias" in names)
        groups[key] = groups.get(key, 0) + 1
    return tuple(LinearLayer(p, i, o, n, b) for (p, i, o, b), n in groups.items())


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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith("/") or name.count("/") > 1


def resolve_model_dir(name: str, revision: str | None = None, *, build_demo: bool = False,
                      cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder holding ``name``'s config.json, and where it was found. Never downloads."""
    from .builtin_models import is_builtin, resolve_builtin

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
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise UserError(f"model folder {name} does not exist", field="model.name_or_path", kind="model",
                        hint="give a local folder, a Hugging Face model id, or 'demo'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(name, revision=revision, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError, OSError):
        at = f" at revision {revision}" if revision else ""
        raise UserError(
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
                  cache_dir: str | os.PathLike | None = None) -> ModelInfo:
    """Everything the planner needs about a model, from its files. Raises UserError."""
    folder, source = resolve_model_dir(name_or_path, revision, build_demo=build_demo, cache_dir=cache_dir)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json", file=folder, kind="model",
                        hint="point at the folder that holds config.json and the weights")
    raw = _read_json(config_file)
    try:
        info = model_from_config(raw, name_or_path)
    except KeyError as exc:
        raise UserError(f"config.json lacks the model's shape ({exc.args[0]})", file=config_file, kind="model",
                        hint="is this a transformer language model's config.json?") from None
    warnings = list(info.warnings)
    quant = raw["quantization_config"].get("quant_method") if isinstance(raw.get("quantization_config"),
                                                                           dict) else None
    files = _weight_files(folder)
    params = [t for f in files for t in read_safetensors_header(f) if not _is_buffer(t.name)]
    found: dict = {}
    if params and not quant:
        found = dict(num_parameters=sum(t.numel for t in params), parameter_source="safetensors",
                     bias_parameters=sum(t.numel for t in params if t.name.endswith(".bias")))
        from_weights = _linears_from_weights(params, conv1d=info.model_type == "gpt2")
        if from_weights:  # in the table's order where the table knows the module
            order = [layer.path for layer in info.linear_layers]
            found["linear_layers"] = tuple(sorted(
                from_weights, key=lambda lr: order.index(lr.path) if lr.path in order else len(order)))
        if not info.dtype:
            by_dtype = Counter()
            for t in params:
                by_dtype[t.dtype] += t.numel
            found["dtype"] = _DTYPE_NAMES.get(by_dtype.most_common(1)[0][0])
    elif quant:
        warnings.append(f"pre-quantized checkpoint ({quant}): parameter count from config.json")
    elif not files:
        warnings.append("no .safetensors weights: parameter count from config.json")
    return replace(info, path=str(folder), source=source, revision=revision, license=_license(folder),
                   size_on_disk=_size_on_disk(folder), weight_files=tuple(f.name for f in files),
                   quantization=quant, warnings=tuple(warnings), **found)


def model_from_config(config: dict, name: str = "config") -> ModelInfo:
    """A ModelInfo from a config dict alone (no files): for planning and tests. KeyError without shapes."""
    text = _text_config(config)
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
    )


# peft's defaults for IA3 where target_modules is left to it (peft.utils.constants), by model_type.
IA3_TARGETS = {
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen3": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "gpt_neox": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
}
