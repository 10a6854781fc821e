"""When DPO's and KTO's reference scores the data once before training instead of at every step.

``preference.precompute_ref_log_probs`` is TRL's switch (DPOConfig, KTOConfig): with it, the trainer scores
every training (and evaluation) row with the reference before the first step, keeps the scores as dataset
columns, and puts no reference forward in the step. tuiwiz's ``auto`` (the default) turns it on where that
does less work or holds less memory, and leaves it off where it would only delay the first step:

- full fine-tuning (and BitFit): always, because otherwise a second, frozen copy of the model is in memory
  all along; the policy scores the data before it moves, which is the same reference.
- adapters: the reference is the base with the adapter disabled (no copy), so what counts is work. Scoring
  in the step costs one no-grad forward per row each time a row is trained on or evaluated; precomputing
  costs one per row. On when the run trains on its rows more than once (more than one epoch) or evaluates
  more than once, so that the one pass is cheaper; off for one epoch with one evaluation, where the work is
  the same and the step-time scoring lets training start at once.

Several processes (DDP, ZeRO) never precompute: TRL 1.16's pass names its cache file per process for data
built in memory (datasets draws a random name), the first process alone writes it, and the others would read
theirs, which nobody wrote. ``auto`` resolves to off there, and a profile that asks for it is refused
(schema.py).

The runner resolves it with the row counts (tuiwiz/train/recipes/dpo.py, kto.py); the planner, which has no
row counts, treats ``auto`` under adapters as off, the costlier case for memory (the reference forward in
the step, ``task_costs.reference_forward``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuiwiz.methods import METHODS
from tuiwiz.profile.schema import Profile


@dataclass(frozen=True)
class ReferenceScoring:
    precompute: bool
    reason: str  # one sentence, for the run's log


def precomputed_without_counts(setting: bool | str, method: str, processes: int) -> bool:
    """``auto`` where the row counts are unknown (the planner's Plan): on for a method that would otherwise hold a
    second copy, on one process; under adapters the heavier case, the reference scoring in the step.
    ``reference_scoring`` decides the same without counts (tests/test_reference_scoring.py)."""
    if setting != "auto":
        return bool(setting)
    return processes == 1 and not METHODS[method].uses_peft


def reference_scoring(profile: Profile, *, train_rows: int | None = None, total_steps: int | None = None,
                      eval_rows: int = 0, steps_done: int = 0) -> ReferenceScoring:
    """Whether the reference's log-probabilities are precomputed for ``profile`` (a task with a reference),
    given how many rows it trains on and evaluates (None where unknown: the planner). A resumed run counts the
    ``total_steps - steps_done`` steps it has left: the pass still scores every row, so near the end of a run
    the steps score fewer."""
    setting = profile.preference.precompute_ref_log_probs
    if setting == "auto" and profile.distributed.world_size > 1:
        return ReferenceScoring(False, "the reference scores each step: TRL 1.x precomputes on one process only "
                                       "(each rank would read a cache file only the first wrote), and this run has "
                                       f"{profile.distributed.world_size} (preference.precompute_ref_log_probs: auto)")
    if setting != "auto":
        return ReferenceScoring(setting, f"preference.precompute_ref_log_probs is {str(setting).lower()} "
                                         f"in the profile")
    if not METHODS[profile.method.type].uses_peft:
        return ReferenceScoring(True, "the reference's scores are precomputed, so no second copy of the model is "
                                      "in memory while it trains (preference.precompute_ref_log_probs: auto)")
    if train_rows is None or total_steps is None:
        return ReferenceScoring(False, "row counts unknown: the reference scores each step")
    t = profile.training
    left = max(0, total_steps - steps_done)
    if t.max_steps > 0:  # the dataloader goes round the data as often as the steps need
        scored = left * t.per_device_train_batch_size * t.gradient_accumulation_steps
    else:
        scored = math.ceil(t.num_train_epochs * train_rows * left / max(1, total_steps))
    evaluations = 0
    if eval_rows:
        evaluations = math.ceil(left / t.eval_steps) if t.eval_steps else math.ceil(scored / train_rows)
    in_step = scored + evaluations * eval_rows
    once = train_rows + eval_rows
    counts = (f"{scored} training rows" + (f" and {evaluations} evaluation(s) of {eval_rows} rows" if eval_rows
                                            else ""))
    if steps_done:
        counts += f" in the {left} steps left after step {steps_done}"
    if once < in_step:
        return ReferenceScoring(True, f"the reference scores the data once before training ({once} rows) "
                                      f"instead of in the steps ({counts}: {in_step} rows); "
                                      f"preference.precompute_ref_log_probs: auto")
    return ReferenceScoring(False, f"the reference scores the rows in the steps ({counts}: {in_step} rows), no "
                                   f"more than precomputing would ({once}); preference.precompute_ref_log_probs: "
                                   f"auto")
