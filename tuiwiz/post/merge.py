"""Merge a finished run's adapter into its base model, one safetensors shard at a time.

Each base shard is read with ``safe_open``, the adapter's deltas are applied to the
tensors it holds, and the merged shard is written before the next one is read, so the
private memory peak is about one shard plus the adapter, not the whole model. The
formulas follow peft's own merge code (``get_delta_weight`` of LoRA, DoRA, AdaLoRA and
IA3). Every merge is verified against peft before it is renamed into place; the
verification streams the models from disk block by block, so it needs no more memory than
the merge.

This module holds a run's output, the plan and its resource checks, and ``merge_run``;
the shard-by-shard merge and peft's formulas are in merge_shards.py, the verification in
merge_verify.py.

No torch at import: the functions that need it import it inside.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.run.rundir import RunDir, effective_status, find_run

ADAPTER_METHODS = ("lora", "qlora", "adalora", "ia3")
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
FULL_METHODS = ("full", "bitfit")
# Files of a tokenizer (and its chat template) that go with a merged or exported model.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
)
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


def merge_run(ref: str | RunDir | RunOutput | MergePlan, out: str | Path | None = None, *, overwrite: bool = False,
              memory_budget_mb: float | None = None, disk_budget_mb: float | None = None,
              progress: Progress | None = None) -> MergeResult:
    """Merge a run's adapter into its base, verify it, and rename it into ``out`` (default RUN/merged).

    Nothing is left at ``out`` unless verification passed. Raises UserError for a run that cannot
    be merged, too little memory or disk, or a merge whose logits do not match peft's.
    """
    from tuiwiz.post.merge_shards import _copy_side_files, _merge_shards, _write_index  # they import this module
    from tuiwiz.post.merge_verify import _judge, verify_merge

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
        from tuiwiz.post.modelcard import write_model_card

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
