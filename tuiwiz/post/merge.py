"""Merge a finished run's adapter into its base model, one safetensors shard at a time.

Each base shard is read with ``safe_open``, the adapter's deltas are applied to the
tensors it holds, and the merged shard is written before the next one is read, so the
private memory peak is about one shard plus the adapter, not the whole model. The
formulas follow peft's own merge code (``get_delta_weight`` of LoRA, DoRA, AdaLoRA and
IA3). Every merge is verified against peft before it is renamed into place; the
verification streams the models from disk block by block, so it needs no more memory than
the merge.

This module runs the steps, in ``merge_run``: the plan and its resource checks are in
merge_plan.py (a run's output in outputs.py), the shard-by-shard merge and peft's formulas
in merge_shards.py, the verification in merge_verify.py.

No torch at import: the functions that need it import it inside.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import staged_folder
from tuiwiz.post.merge_plan import MergePlan, check_resources, plan_merge
from tuiwiz.post.merge_shards import copy_side_files, merge_shards, write_index
from tuiwiz.post.merge_verify import judge_merge, verify_merge
from tuiwiz.post.modelcard import write_model_card
from tuiwiz.run.outputs import Progress, RunOutput
from tuiwiz.run.rundir import RunDir


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
    plan = ref if isinstance(ref, MergePlan) else plan_merge(ref)
    out = Path(out).expanduser().resolve() if out else plan.source.run.path / "merged"
    if out.exists() and not overwrite and any(out.iterdir()):
        raise UserError(f"{out} already exists", hint="pass another --out, or delete it first", file=out,
                        kind="output")
    check_resources(plan, out, memory_budget_mb=memory_budget_mb, disk_budget_mb=disk_budget_mb)
    with staged_folder(out) as staging:
        started = time.perf_counter()
        with PeakRss() as merge_peak:
            weight_map = merge_shards(plan, staging, progress)
            write_index(staging, weight_map, len(plan.shards))
            copy_side_files(plan, staging)
        merged_at = time.perf_counter()
        if progress:
            progress("verify", 0, 1)
        with PeakRss() as verify_peak:
            max_diff, changed_diff, tolerance = verify_merge(plan, staging)
        if progress:
            progress("verify", 1, 1)
        judge_merge(plan, max_diff, changed_diff, tolerance)
        meta = json.loads((plan.source.path / "tuiwiz.json").read_text(encoding="utf-8"))
        meta.update(merged_from=str(plan.source.path), max_logit_diff=max_diff, note=plan.note)
        (staging / "tuiwiz.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        write_model_card(plan.source, staging, artifact="merged")
    done = time.perf_counter()
    return MergeResult(out, len(plan.shards), max_diff, changed_diff, tolerance, round(merge_peak.peak_mb, 1),
                       round(verify_peak.peak_mb, 1), round(merged_at - started, 3), round(done - merged_at, 3),
                       plan.source.method, plan.note)
