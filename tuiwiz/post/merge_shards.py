"""The merge itself, shard by shard: the adapter's tensors grouped by module, peft's formulas for the
merged weight of one module (LoRA, DoRA, AdaLoRA, IA3), the merged shards, their index and side files."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.merge_plan import MergePlan
from tuiwiz.post.streamed_model import release_freed_memory
from tuiwiz.run.outputs import TOKENIZER_FILES, Progress

_ADAPTER_PARTS = {
    "lora_A.weight": "A", "lora_B.weight": "B", "lora_B.bias": "B_bias", "lora_magnitude_vector": "magnitude",
    "lora_embedding_A": "emb_A", "lora_embedding_B": "emb_B", "lora_A": "A", "lora_B": "B", "lora_E": "E",
    "ia3_l": "ia3",
}
_PART_RE = re.compile(r"^(.*)\.(" + "|".join(re.escape(p) for p in sorted(_ADAPTER_PARTS, key=len, reverse=True))
                      + r")$")


@dataclass
class _ModuleAdapter:
    parts: dict = field(default_factory=dict)


def _pattern_value(patterns: dict, key: str, default):
    """peft's get_pattern_key: the first pattern that matches the end of the module name."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return patterns[pattern]
    return default


def _lora_scaling(config: dict, module: str, rank: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _adalora_scaling(config: dict, module: str, rank: int) -> float:
    alpha = config.get("lora_alpha", 8)
    return (alpha if alpha > 0 else float(rank)) / (rank + 1e-5)  # peft divides by ranknum + 1e-5


def _read_adapter(folder: Path) -> tuple[dict[str, _ModuleAdapter], dict]:
    """(module name -> its adapter tensors, replacement tensors by base key) from the adapter files."""
    from safetensors.torch import load_file

    modules: dict[str, _ModuleAdapter] = {}
    replace: dict = {}
    for path in sorted(folder.glob("adapter_model*.safetensors")):
        for key, tensor in load_file(path).items():
            key = key.removeprefix("base_model.model.")
            match = _PART_RE.match(key)
            if match:
                modules.setdefault(match.group(1), _ModuleAdapter()).parts[_ADAPTER_PARTS[match.group(2)]] = tensor
            else:  # modules_to_save, or a saved copy of a targeted embedding
                replace[key.replace(".modules_to_save.", ".").replace(".base_layer.", ".")] = tensor
    if not modules:
        raise UserError(f"{folder} holds no adapter weights that can be merged", file=folder, kind="run")
    return modules, replace


def _transpose(tensor, fan_in_fan_out: bool):
    return tensor.T if fan_in_fan_out else tensor


def _merged_weight(weight, adapter: _ModuleAdapter, module: str, config: dict):
    """The merged weight of one module: peft's merge, computed in fp32, cast back to the weight's dtype."""
    import torch

    p = adapter.parts
    fifo = bool(config.get("fan_in_fan_out"))
    w = weight.to(torch.float32)
    if "ia3" in p:
        return (w * _transpose(p["ia3"].to(torch.float32), fifo)).to(weight.dtype)
    if "emb_A" in p:  # LoRA on an embedding: delta = (B @ A).T * scaling, never fan_in_fan_out
        a, b = p["emb_A"].float(), p["emb_B"].float()
        return (w + (b @ a).T * _lora_scaling(config, module, a.shape[0])).to(weight.dtype)
    a, b = p["A"].float(), p["B"].float()
    if "E" in p:  # AdaLoRA: B @ (A * E) * scaling / ranknum
        delta = _transpose(b @ (a * p["E"].float()), fifo) * _adalora_scaling(config, module, a.shape[0])
        return (w + delta).to(weight.dtype)
    delta = _transpose(b @ a, fifo) * _lora_scaling(config, module, a.shape[0])
    if "magnitude" in p:  # DoRA: magnitude / ||W + delta|| (row norms, in [out, in] layout) times (W + delta)
        norm = torch.linalg.norm(_transpose(w, fifo) + _transpose(delta, fifo), dim=1)
        factor = _transpose((p["magnitude"].float() / norm).view(-1, 1), fifo)
        return (factor * (w + delta)).to(weight.dtype)
    return (w + delta).to(weight.dtype)


def _merged_bias(bias, adapter: _ModuleAdapter, module: str, config: dict):
    """LoRA with lora_bias adds B's bias; IA3 scales the bias of non-feed-forward layers; else None."""
    import torch

    p = adapter.parts
    if "B_bias" in p:
        scale = _lora_scaling(config, module, p["A"].shape[0])
        return (bias.to(torch.float32) + p["B_bias"].float() * scale).to(bias.dtype)
    ia3 = p.get("ia3")
    if ia3 is not None and ia3.shape[-1] == 1:  # (out, 1): not feed-forward
        return (bias.to(torch.float32) * ia3.float().reshape(bias.shape)).to(bias.dtype)
    return None


def _checkpoint_prefix(checkpoint_keys: set[str], modules: dict) -> str:
    """The model's prefix that the checkpoint lacks ("" when names match): a bare encoder such as
    ``BertModel`` saved without the ``bert.`` that ``BertForSequenceClassification`` puts before it."""
    probe = next(iter(modules))
    if f"{probe}.weight" in checkpoint_keys:
        return ""
    prefix, _, rest = probe.partition(".")
    if f"{rest}.weight" in checkpoint_keys:
        return prefix
    raise UserError(f"the adapter's module {probe} has no weight in the base checkpoint",
                    hint="the base model folder does not match the one the run trained on", kind="model")


# --- the merged shards -----------------------------------------------------------------

def copy_side_files(plan: MergePlan, staging: Path) -> None:
    base = plan.source.base_model
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    if plan.source.is_classifier:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        labels = plan.source.labels or ()
        config["architectures"] = [MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[config["model_type"]]]
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if (base / "generation_config.json").exists():
        shutil.copy2(base / "generation_config.json", staging / "generation_config.json")
    for name in TOKENIZER_FILES:  # from the run: it has the chat template and any added tokens
        if (plan.source.path / name).exists():
            shutil.copy2(plan.source.path / name, staging / name)


def merge_shards(plan: MergePlan, staging: Path, progress: Progress | None) -> dict[str, str]:
    """Write the merged shards into ``staging``; returns the weight map (key -> shard file)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((plan.source.path / "adapter_config.json").read_text(encoding="utf-8"))
    modules, replace = _read_adapter(plan.source.path)
    keys: set[str] = set()
    for shard in plan.shards:
        with safe_open(shard, framework="pt") as handle:
            keys.update(handle.keys())
    prefix = _checkpoint_prefix(keys, modules)

    def to_checkpoint(name: str) -> str:
        return name.removeprefix(prefix + ".") if prefix else name

    targets: dict[str, tuple[str, str]] = {}  # checkpoint key -> (module, "weight" | "bias")
    for module in modules:
        if f"{to_checkpoint(module)}.weight" not in keys:
            raise UserError(f"the adapter's module {module} has no weight in the base checkpoint",
                            hint="the base model folder does not match the one the run trained on", kind="model")
        for what in ("weight", "bias"):
            targets[f"{to_checkpoint(module)}.{what}"] = (module, what)
    replaced = {to_checkpoint(k): v for k, v in replace.items() if to_checkpoint(k) in keys}
    extra = {k: v for k, v in replace.items() if to_checkpoint(k) not in keys}  # a new head, e.g. a classifier
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(plan.shards, 1):
        if progress:
            progress("merge", number - 1, len(plan.shards))
        tensors = {}
        with safe_open(shard, framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if key in replaced:
                    tensor = replaced.pop(key).to(tensor.dtype)
                if key in targets:
                    module, what = targets[key]
                    merged = (_merged_weight(tensor, modules[module], module, config) if what == "weight"
                              else _merged_bias(tensor, modules[module], module, config))
                    tensor = tensor if merged is None else merged
                tensors[f"{prefix}.{key}" if prefix else key] = tensor.contiguous()
        if number == len(plan.shards):
            tensors.update({k: v.contiguous() for k, v in extra.items()})
        save_file(tensors, str(staging / shard.name), metadata={"format": "pt", **metadata})
        weight_map.update({key: shard.name for key in tensors})
        del tensors
        release_freed_memory()  # this shard's buffers, before the next shard is read
    if progress:
        progress("merge", len(plan.shards), len(plan.shards))
    return weight_map


def write_index(staging: Path, weight_map: dict[str, str], shards: int) -> None:
    if shards == 1 and not (staging / "model.safetensors.index.json").exists():
        return
    total = sum((staging / name).stat().st_size for name in set(weight_map.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
