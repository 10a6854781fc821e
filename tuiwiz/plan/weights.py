"""A checkpoint's tensors without loading a weight: the safetensors header (names, dtypes, shapes) and the
linear modules those names and shapes reveal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.plan.architectures import LinearLayer

# Tensors in some checkpoints that are buffers, not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".inv_freq", ".position_ids")
_EMBEDDING_WORDS = ("embed", "wte", "wpe", "shared")
_OUTPUT_HEADS = ("lm_head", "embed_out", "cls.predictions.decoder", "score", "classifier", "output")
_BASE_PREFIXES = ("model", "bert", "roberta", "transformer", "gpt_neox", "base_model")
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "U8": "uint8",
                "I8": "int8"}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_safetensors_header(path: Path) -> tuple[TensorEntry, ...]:
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
            _start, stop = (int(x) for x in entry["data_offsets"])
            end = max(end, stop)
            tensors.append(TensorEntry(name, str(entry["dtype"]), shape))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"bad safetensors header: {exc}", file=path, hint=hint, kind="model") from None
    if 8 + length + end > size:
        raise UserError(f"truncated safetensors file: tensors end at byte {8 + length + end}, the file has {size}",
                        file=path, hint=hint, kind="model")
    return tuple(tensors)


def is_buffer(name: str) -> bool:
    return name.endswith(_BUFFER_SUFFIXES)


def linears_from_weights(tensors, conv1d: bool) -> tuple[LinearLayer, ...]:
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
