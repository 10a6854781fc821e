"""Merge a finished run's adapter into its base model, one safetensors shard at a time.

Each base shard is read with ``safe_open``, the adapter's deltas are applied to the
tensors it holds, and the merged shard is written before the next one is read, so the
private memory peak is about one shard plus the adapter, not the whole model. The
formulas follow peft's own merge code (``get_delta_weight`` of LoRA, DoRA, AdaLoRA and
IA3). Every merge is verified against peft before it is renamed into place.

No torch at import: the functions that need it import it inside.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .runs import RunDir, effective_status, find_run

ADAPTER_METHODS = ("lora", "qlora", "adalora", "ia3")
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
FULL_METHODS = ("full", "bitfit")
# Files of a tokenizer (and its chat template) that go with a merged or exported model.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
)
FP32_TOLERANCE = 1e-4
HALF_TOLERANCE = 3e-2  # times max(1, largest reference logit): bf16/fp16 round at about 1e-2 relative
VERIFY_PROMPTS = ("Hello", "What sound does the cow make?", "The quick brown fox jumps over the lazy dog.")
Progress = Callable[[str, int, int], None]


# --- a finished run's output -------------------------------------------------------

@dataclass(frozen=True)
class RunOutput:
    """What a completed run left in ``output/``, read from its ``tuiwiz.json``."""

    run: RunDir
    path: Path
    base_model: Path
    method: str
    task: str
    labels: tuple[str, ...] | None
    kind: str  # "adapter" (peft weights), "prompt" (virtual tokens) or "full" (a whole model)

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"


def run_output(ref: str | RunDir) -> RunOutput:
    """The output of a completed run, by id, folder or RunDir; a UserError otherwise."""
    run = ref if isinstance(ref, RunDir) else find_run(str(ref))
    status = effective_status(run)
    if status != "completed":
        raise UserError(
            f"run {run.run_id} is {status}, not completed: it has no final model",
            hint=f"`tuiwiz attach {run.run_id}` follows it; `tuiwiz resume {run.run_id}` continues a stopped one",
            kind="run",
        )
    meta_path = run.output / "tuiwiz.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"run {run.run_id} has no readable output/tuiwiz.json ({exc})",
                        hint="the output folder is missing or was edited; train the run again", file=meta_path,
                        kind="run") from None
    method = meta.get("method", "")
    kind = "full" if method in FULL_METHODS else "prompt" if method in PROMPT_METHODS else "adapter"
    labels = tuple(meta["labels"]) if meta.get("labels") else None
    return RunOutput(run, run.output, Path(meta["base_model"]), method, meta.get("task", "sft"), labels, kind)


# --- planning: what will be merged, and what it needs --------------------------------

@dataclass(frozen=True)
class MergePlan:
    """Everything known before a merge starts; light (reads JSON and safetensors headers only)."""

    source: RunOutput
    shards: tuple[Path, ...]
    base_bytes: int
    largest_shard_bytes: int
    adapter_bytes: int
    peft_type: str
    note: str | None  # said to the user, e.g. for QLoRA

    @property
    def ram_needed(self) -> int:
        # one shard read + its merged copy + its serialisation, the adapter, and the libraries
        return 3 * self.largest_shard_bytes + 2 * self.adapter_bytes + 256 * 2**20

    @property
    def disk_needed(self) -> int:
        return self.base_bytes + self.adapter_bytes + 16 * 2**20


def base_shards(folder: Path) -> tuple[Path, ...]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return tuple(folder / name for name in names)
    single = folder / "model.safetensors"
    if single.exists():
        return (single,)
    raise UserError(f"{folder} holds no safetensors weights", hint="merging needs the base model in safetensors",
                    file=folder, kind="model")


def plan_merge(ref: str | RunDir | RunOutput) -> MergePlan:
    source = ref if isinstance(ref, RunOutput) else run_output(ref)
    run_id = source.run.run_id
    if source.kind == "full":
        raise UserError(
            f"run {run_id} trained with {source.method}: its output already is the whole model, nothing to merge",
            hint=f"`tuiwiz export {run_id} --format merged` copies it as a model folder", kind="run",
        )
    if source.kind == "prompt":
        raise UserError(
            f"run {run_id} trained {source.method}: virtual tokens fed to the model, not weight changes, "
            "so they cannot be merged into the base",
            hint=f"use the adapter as it is: `tuiwiz chat {run_id}` or `tuiwiz export {run_id} --format adapter`",
            kind="run",
        )
    config = json.loads((source.path / "adapter_config.json").read_text(encoding="utf-8"))
    peft_type = config.get("peft_type", "")
    if peft_type not in ("LORA", "ADALORA", "IA3"):
        raise UserError(f"run {run_id}: merging a {peft_type} adapter is not supported",
                        hint="LoRA, DoRA, AdaLoRA and IA3 adapters merge", kind="run")
    for option in ("trainable_token_indices", "layer_replication", "target_parameters", "alora_invocation_tokens"):
        if config.get(option):
            raise UserError(f"run {run_id}: adapters with {option} cannot be merged shard by shard",
                            hint="load the adapter with peft and call merge_and_unload()", kind="run")
    if config.get("use_qalora") or config.get("use_bdlora"):
        raise UserError(f"run {run_id}: this LoRA variant cannot be merged shard by shard", kind="run")
    if not source.base_model.is_dir():
        raise UserError(f"the base model folder {source.base_model} is gone", file=source.base_model,
                        hint="rebuild it (`tuiwiz demo` for the demo) or restore the folder", kind="model")
    shards = base_shards(source.base_model)
    sizes = [s.stat().st_size for s in shards]
    adapter_bytes = sum(p.stat().st_size for p in source.path.glob("adapter_model*.safetensors"))
    note = None
    if source.method == "qlora":
        note = ("QLoRA: merged into the original base weights (as stored in the base folder), not the 4-bit "
                "ones used in training, so outputs differ slightly from the 4-bit model's")
    return MergePlan(source, shards, sum(sizes), max(sizes), adapter_bytes, peft_type, note)


def available_ram_bytes(budget_mb: float | None = None) -> int:
    """Free RAM, or a budget: the argument, else ``TUIWIZ_MEMORY_BUDGET_MB`` (tests simulate small machines)."""
    if budget_mb is None and os.environ.get("TUIWIZ_MEMORY_BUDGET_MB"):
        budget_mb = float(os.environ["TUIWIZ_MEMORY_BUDGET_MB"])
    if budget_mb is not None:
        return int(budget_mb * 2**20)
    import psutil

    return psutil.virtual_memory().available


def check_resources(plan: MergePlan, out: Path, *, memory_budget_mb: float | None = None,
                    disk_budget_mb: float | None = None) -> None:
    ram = available_ram_bytes(memory_budget_mb)
    if ram < plan.ram_needed:
        raise UserError(
            f"merging needs about {plan.ram_needed / 2**20:.0f} MiB of free memory (one shard of "
            f"{plan.largest_shard_bytes / 2**20:.0f} MiB three times, and the adapter); {ram / 2**20:.0f} MiB are free",
            hint="close other programs, or save the base model in smaller shards "
                 "(save_pretrained(max_shard_size=...))", kind="resources",
        )
    if disk_budget_mb is None and os.environ.get("TUIWIZ_DISK_BUDGET_MB"):
        disk_budget_mb = float(os.environ["TUIWIZ_DISK_BUDGET_MB"])
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    disk = int(disk_budget_mb * 2**20) if disk_budget_mb is not None else shutil.disk_usage(probe).free
    if disk < plan.disk_needed:
        raise UserError(
            f"the merged model needs {plan.disk_needed / 2**20:.0f} MiB on disk; {probe} has "
            f"{disk / 2**20:.0f} MiB free", hint="free some space or pass --out on another disk", kind="resources",
        )


# --- the adapter, grouped by module ----------------------------------------------------

_ADAPTER_PARTS = {
    "lora_A.weight": "A", "lora_B.weight": "B", "lora_B.bias": "B_bias", "lora_magnitude_vector": "magnitude",
    "lora_embedding_A": "emb_A", "lora_embedding_B": "emb_B", "lora_A": "A", "lora_B": "B", "lora_E": "E",
    "ia3_l": "ia3",
}
_PART_RE = re.compile(r"^(.*)\.(" + "|".join(re.escape(p) for p in sorted(_ADAPTER_PARTS, key=len, reverse=True)) + r")$")


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


# --- the merge --------------------------------------------------------------------------

@dataclass(frozen=True)
class MergeResult:
    out: Path
    shards: int
    max_diff: float  # largest |merged - (base + adapter)| logit over the verification prompts
    changed_diff: float  # largest |merged - base| logit: the adapter's effect
    tolerance: float
    peak_rss_mb: float  # peak resident memory while merging (not verifying)
    verify_peak_rss_mb: float
    seconds: float
    verify_seconds: float
    method: str
    note: str | None


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak_mb`` after the block."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while True:
            self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _copy_side_files(plan: MergePlan, staging: Path) -> None:
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


def _merge_shards(plan: MergePlan, staging: Path, progress: Progress | None) -> dict[str, str]:
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
    if progress:
        progress("merge", len(plan.shards), len(plan.shards))
    return weight_map


def _write_index(staging: Path, weight_map: dict[str, str], shards: int) -> None:
    if shards == 1 and not (staging / "model.safetensors.index.json").exists():
        return
    total = sum((staging / name).stat().st_size for name in set(weight_map.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def load_model(folder: Path, source: RunOutput, *, adapter: Path | None = None):
    """A model for inference on CPU, in its stored dtype; with ``adapter``, wrapped by peft."""
    import transformers

    kwargs: dict = {"dtype": "auto"}
    if source.is_classifier:
        labels = source.labels or ()
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _logits(model, tokenizer) -> list:
    import torch

    with torch.inference_mode():
        return [model(**tokenizer(text, return_tensors="pt")).logits.float() for text in VERIFY_PROMPTS]


def _largest_gap(first: list, second: list) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second))


def verify_merge(plan: MergePlan, merged: Path) -> tuple[float, float, float]:
    """(max_diff, changed_diff, tolerance): the merged model against base + adapter (peft) and the bare base.

    The two models are loaded one after the other; safetensors are memory-mapped, so their
    weights are page cache the kernel can drop, not private memory.
    """
    import gc

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.source.path)
    reference = load_model(plan.source.base_model, plan.source, adapter=plan.source.path)
    with_adapter = _logits(reference, tokenizer)
    with reference.disable_adapter():
        base = _logits(reference, tokenizer)
    dtype = next(reference.parameters()).dtype
    del reference
    gc.collect()
    merged_model = load_model(merged, plan.source)
    after = _logits(merged_model, tokenizer)
    del merged_model
    gc.collect()
    if dtype == torch.float32:
        tolerance = FP32_TOLERANCE
    else:
        tolerance = HALF_TOLERANCE * max(1.0, max(float(t.abs().max()) for t in with_adapter))
    return _largest_gap(after, with_adapter), _largest_gap(after, base), tolerance


def _judge(plan: MergePlan, max_diff: float, changed_diff: float, tolerance: float) -> None:
    """A merge that changes nothing, or not what the adapter does, is an error."""
    if not changed_diff > tolerance:  # also catches NaN
        raise UserError(
            f"the merged model equals the base (logits within {changed_diff:.3g}, tolerance {tolerance:.0e}): "
            f"the merge changed nothing; nothing was written",
            hint="if the adapter is untrained (its loss did not fall) there is nothing to merge; "
                 "otherwise report this with the run's adapter_config.json", kind="verify",
        )
    if not max_diff <= tolerance:
        raise UserError(
            f"the merged model does not match base + adapter: logits differ by up to {max_diff:.3g} "
            f"(tolerance {tolerance:.0e}); nothing was written",
            hint="this is a bug in the merge for this adapter; report it with the run's adapter_config.json",
            kind="verify",
        )


def merge_run(ref: str | RunDir | RunOutput | MergePlan, out: str | Path | None = None, *, overwrite: bool = False,
              memory_budget_mb: float | None = None, disk_budget_mb: float | None = None,
              progress: Progress | None = None) -> MergeResult:
    """Merge a run's adapter into its base, verify it, and rename it into ``out`` (default RUN/merged).

    Nothing is left at ``out`` unless verification passed. Raises UserError for a run that cannot
    be merged, too little memory or disk, or a merge whose logits do not match peft's.
    """
    plan = ref if isinstance(ref, MergePlan) else plan_merge(ref)
    out = Path(out).expanduser().resolve() if out else plan.source.run.path / "merged"
    if out.exists() and not overwrite and any(out.iterdir()):
        raise UserError(f"{out} already exists", hint="pass another --out, or delete it first", file=out,
                        kind="output")
    out.parent.mkdir(parents=True, exist_ok=True)
    check_resources(plan, out, memory_budget_mb=memory_budget_mb, disk_budget_mb=disk_budget_mb)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        started = time.perf_counter()
        with PeakRss() as merge_peak:
            weight_map = _merge_shards(plan, staging, progress)
            _write_index(staging, weight_map, len(plan.shards))
            _copy_side_files(plan, staging)
        merged_at = time.perf_counter()
        if progress:
            progress("verify", 0, 1)
        with PeakRss() as verify_peak:
            max_diff, changed_diff, tolerance = verify_merge(plan, staging)
        if progress:
            progress("verify", 1, 1)
        _judge(plan, max_diff, changed_diff, tolerance)
        meta = json.loads((plan.source.path / "tuiwiz.json").read_text(encoding="utf-8"))
        meta.update(merged_from=str(plan.source.path), max_logit_diff=max_diff, note=plan.note)
        (staging / "tuiwiz.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        from .modelcard import write_model_card

        write_model_card(plan.source, staging, artifact="merged")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    done = time.perf_counter()
    return MergeResult(out, len(plan.shards), max_diff, changed_diff, tolerance, round(merge_peak.peak_mb, 1),
                       round(verify_peak.peak_mb, 1), round(merged_at - started, 3), round(done - merged_at, 3),
                       plan.source.method, plan.note)
