"""The probe run: a few real optimizer steps at full length, before the real run.

The estimate says a profile fits; the probe checks it. It runs the profile's
own runner for ``steps`` optimizer steps with every batch padded to
``data.max_length`` (the worst case the data can produce), reads the real peak
(peak RSS on the CPU; ``torch.cuda.max_memory_reserved`` on a GPU) from the event
log, and compares it with the estimate and with what the machine has. When the
run does not fit (it runs out of memory, or its peak exceeds the budget) it
steps down (micro-batch into gradient accumulation, then gradient checkpointing,
then a shorter max length only with consent, then a lighter method) and tries
again. The result is recorded in the profile's ``fit`` section.

Nothing in it is SFT's own: each task's recipe pads to ``data.max_length`` where its trainer can
(``training.pad_to_max_length``), and the probe keeps what a task's memory depends on: GRPO generates
micro-batch x accumulation completions at once, so its accumulation stays; a precomputed reference scores
only the rows the probe trains on. ``ProbeResult.notes`` says where the worst case is not what was measured.

The probe's runs live in ``RUNS_DIR/.probes/`` and are removed afterwards.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.plan.reference_scoring import reference_scoring
from tuiwiz.profile.io import LoadedProfile
from tuiwiz.profile.schema import FitRecord, Profile
from tuiwiz.run.event_types import ErrorEvent, Event, LogEvent, RunStartEvent, parse_event
from tuiwiz.run.events import read_events
from tuiwiz.tasks import TASKS

# trl.experimental's ORPOTrainer and CPOTrainer (SimPO) take no pad_to_multiple_of: each batch is padded to its
# longest pair, so a probe measures the data's own lengths. Every other task's trainer or collator pads to a length.
PADS_TO_LONGEST = ("orpo", "simpo")

OOM_KINDS = ("oom_gpu", "oom_cpu")


@dataclass(frozen=True)
class Attempt:
    profile: Profile
    estimated_mb: float
    measured_mb: float | None
    status: str  # completed / failed
    error_kind: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    profile: Profile  # the profile that fits (with its fit record), or the last one tried
    fits: bool
    device: str
    budget_mb: float
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    changes: tuple[str, ...] = ()
    needs_consent: str | None = None  # a step-down (shorter max length) the user must agree to
    notes: tuple[str, ...] = ()  # where the measured peak may fall short of the run's worst case

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]


def probe_profile(profile: Profile, steps: int) -> Profile:
    task = TASKS[profile.task]
    training = {"max_steps": steps, "logging_steps": 1, "save_steps": 1_000_000, "eval_steps": None,
                "pad_to_max_length": True}
    if not task.generates:  # GRPO generates micro-batch x accumulation completions at once: keep its count
        training["gradient_accumulation_steps"] = 1
    t = profile.training.model_copy(update=training)
    data = {"validation_split": 0.0, "validation_path": None}
    if task.reference and reference_scoring(profile).precompute:
        # the reference scores every row before training starts: only those the probe trains on
        rows = steps * t.per_device_train_batch_size * t.gradient_accumulation_steps
        data["limit"] = min(rows, profile.data.limit or rows)
    sections = {"training": t, "data": profile.data.model_copy(update=data), "fit": None}
    if task.generates:
        sections["grpo"] = profile.grpo.model_copy(update={"log_completions": 0})
    runs_dir = str(Path(profile.output.runs_dir) / ".probes")
    sections["output"] = profile.output.model_copy(update={"runs_dir": runs_dir, "run_name": "probe"})
    return profile.model_copy(update=sections)


def probe_notes(profile: Profile) -> tuple[str, ...]:
    """Where a probe of ``profile`` measures less than the run's worst case."""
    notes = []
    if profile.task in PADS_TO_LONGEST:
        notes.append(f"{TASKS[profile.task].title}'s trainer pads each batch to its longest pair, not to "
                     f"data.max_length: the probe measured the data's own lengths")
    return tuple(notes)


def _measured_peak_mb(events: list[Event], device: str) -> float | None:
    key = "gpu_reserved_mb" if device == "cuda" else "peak_rss_mb"
    peaks = [e.memory[key] for e in events if isinstance(e, LogEvent) and key in (e.memory or {})]
    return max(peaks) if peaks else None


def run_probe_once(profile: Profile, source: Path | None, *, steps: int = 3,
                   on_run: Callable | None = None) -> tuple[str, float | None, ErrorEvent | None]:
    """One probe run through the real launcher and runner. Returns (status, peak MB, error event).

    ``on_run`` is told each probe's run dir as it is made (a front end stops it if it quits first).
    """
    from tuiwiz.run.follow import follow
    from tuiwiz.run.launch import create_run, start_runner

    probe = probe_profile(profile, steps)
    run = create_run(LoadedProfile(probe, source))
    if on_run is not None:
        on_run(run)
    try:
        proc = start_runner(run)
        import io

        result = follow(run, proc, out=io.StringIO(), live=False, poll=0.1)
        events = [parse_event(e) for e in read_events(run.events)]
        start = next((e for e in events if isinstance(e, RunStartEvent)), None)
        error = next((e for e in reversed(events) if isinstance(e, ErrorEvent)), None)
        return result.status, _measured_peak_mb(events, (start and start.device) or "cpu"), error
    finally:
        shutil.rmtree(run.path, ignore_errors=True)


def probe(loaded: LoadedProfile, *, steps: int = 3, machine=None, allow_truncation: bool = False,
          max_attempts: int = 4, on_run: Callable | None = None) -> ProbeResult:
    """Probe the profile, stepping down until it fits. Raises UserError on bad input."""
    from tuiwiz.plan.hardware import probe as probe_hardware
    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.modelinfo import inspect_model
    from tuiwiz.plan.recommend import settle_on, step_down

    machine = machine or probe_hardware(loaded.profile.output.runs_dir)
    # a hub model not downloaded yet: its shapes from the Hub; the probe's runner downloads it, as the run would
    model = inspect_model(loaded.profile.model.name_or_path, loaded.profile.model.revision, build_demo=True,
                          online=True)
    gpus = machine.gpus
    device = "cuda" if gpus else "cpu"
    budget = min(g.memory_free_mb for g in gpus) if gpus else machine.ram_available_mb
    profile = loaded.profile
    attempts: list[Attempt] = []
    changes: list[str] = []
    consent = None
    for _ in range(max_attempts):
        plan = Plan.from_profile(profile, model, device=device, bf16=all(g.bf16 for g in gpus) if gpus else False)
        plan = settle_on(machine, plan, profile.training.loss_head, model, max(1, len(gpus)))[0]  # as the run will
        est_mb = estimate(model, plan, max(1, len(gpus))).total / 2**20
        status, peak, error = run_probe_once(profile, loaded.source, steps=steps, on_run=on_run)
        attempts.append(Attempt(profile, est_mb, peak, status, error and error.kind, error and error.message))
        out_of_memory = (error is not None and error.kind in OOM_KINDS) or (peak is not None and peak > budget)
        if status == "completed" and not out_of_memory:
            record = FitRecord(device=device, estimated_peak_mb=round(est_mb, 1), measured_peak_mb=round(peak or 0, 1),
                               budget_mb=round(budget, 1), probed_at=dt.datetime.now().isoformat(timespec="seconds"),
                               changes=changes)
            return ProbeResult(profile.model_copy(update={"fit": record}), True, device, budget, tuple(attempts),
                               tuple(changes), notes=probe_notes(profile))
        if status != "completed" and not out_of_memory:
            raise UserError(
                f"the probe run failed: {error.message if error else status}",
                hint=(error and error.hint) or "see the probe's train.log", kind=error.kind if error else "run",
            )
        step = step_down(profile, model, machine, allow_truncation=True)
        if step is None:
            break
        if step.needs_consent and not allow_truncation:
            consent = step.reason
            break
        profile, reason = step
        changes.append(reason)
    return ProbeResult(profile, False, device, budget, tuple(attempts), tuple(changes), consent, probe_notes(profile))
