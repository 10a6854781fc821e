"""What a merge will do and what it needs, known before it starts: the base model's shards, the
adapter's type, and the memory and disk the merge takes (checked against what is free)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.run.outputs import RunOutput, run_output
from tuiwiz.run.rundir import RunDir


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
