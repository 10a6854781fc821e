"""The run dir's events: one frozen model per kind, written by the runner, parsed by every reader.

On disk an event is one JSON object: ``type``, ``time`` and the fields its writer gave (a field left
out is absent, not null), so a class here is the contract and the file is unchanged by it. A writer
constructs these (pydantic checks the types) and ``EventWriter.emit`` refuses fields no class names.
A reader takes whatever a writer, older or newer, left: ``parse_event`` never raises; it keeps the
fields it does not know (``Event.extra``), reads a field an older writer did not write as None, takes
a value of an unexpected type as it is, and turns a type it does not know into an ``UnknownEvent``
holding the raw object, for readers to skip.

docs/events.md's table of events is ``events_table()``; tests/test_event_contract.py checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Self


class Event(BaseModel):
    """One line of events.jsonl."""

    model_config = ConfigDict(frozen=True, extra="allow")
    type: ClassVar[str] = ""
    # For the table: fields a kind carries beyond its declared ones (eval's metrics), else None.
    more_fields: ClassVar[tuple[str, str] | None] = None

    time: float | None = None  # Unix seconds, stamped by the writer

    def fields(self) -> dict[str, Any]:
        """What goes on disk after ``type`` and ``time``: the fields the writer gave (None included)."""
        return self.model_dump(exclude_unset=True, exclude={"time"})

    @property
    def extra(self) -> dict[str, Any]:
        """Fields no class here declares (a newer writer's, or eval's metrics)."""
        return dict(self.model_extra or {})

    def unknown_fields(self) -> list[str]:
        """Fields a writer must not give: a misspelled or undocumented one."""
        return sorted(self.extra)

    @classmethod
    def blank(cls) -> Self:
        """An event of this kind with every field None: a reader's stand-in before the first one."""
        return cls.model_construct(_fields_set=set(), **dict.fromkeys(cls.model_fields))


def _doc(text: str) -> Any:
    return Field(description=text)


def _optional(text: str) -> Any:
    return Field(None, description=text)


class StatusEvent(Event):
    """The run's status changed."""

    type: ClassVar[str] = "status"
    status: str = _doc("`loading`, `running`, `recovering`, `stopped`, `failed` or `completed`")
    message: str | None = _optional("what happens, in words (why it stopped, what a recovery changed, ...)")
    resume: bool | None = _optional("on loading: whether the runner resumes from a checkpoint")
    step: int | None = _optional("on running, the step it starts at; on stopped, the step it stopped at")
    max_steps: int | None = _optional("on running: the optimizer steps the Trainer will take")
    recovery: int | None = _optional("on recovering: its number (1 for the first out-of-memory recovery)")
    checkpoint: str | None = _optional(
        "on recovering, the checkpoint the lighter run resumes from (null: it starts at step 0); on stopped, the "
        "checkpoint saved")
    kept: str | None = _optional(
        "on recovering after a change of method: the folder the old method's checkpoints are kept in")
    world_size: int | None = _optional("on completed, for a multi-process run: its number of processes")


class RunStartEvent(Event):
    """Training begins (once per runner: a resumed or recovered run's log holds several)."""

    type: ClassVar[str] = "run_start"
    run_id: str = _doc("the run's id (its folder's name)")
    tuiwiz_version: str = _doc("the tuiwiz that trains")
    versions: dict[str, str] = _doc("versions of torch, transformers, peft, trl, accelerate, bitsandbytes")
    task: str = _doc("the profile's task (`sft`, `dpo`, `grpo`, ...: tuiwiz/tasks.py)")
    method: str = _doc("the method (`lora`, `qlora`, `full`, ...)")
    model: str = _doc("the profile's `model.name_or_path`")
    model_path: str = _doc("where the model was loaded from (the built-in demo's folder, or as given)")
    learning_rate: float = _doc("the learning rate in force")
    precision: str = _doc("`fp32`, `fp16` or `bf16`")
    device: str = _doc("`cpu` or `cuda`")
    dtype: str = _doc("what the weights were loaded in (`float32`, `bfloat16`, ...; under QLoRA the unquantized ones)")
    world_size: int = _doc("the number of training processes")
    max_steps: int = _doc(
        "the optimizer steps the run will take: `max_steps`, or the epochs resolved against the examples kept, "
        "as the Trainer counts them")
    total_train_batch_size: int = _doc("micro-batch × gradient accumulation × world size")
    target_modules: list[str] | None = _doc(
        "the sorted leaf names of the layers the method wrapped, such as `q_proj` (what `auto` became); null for "
        "full, BitFit and the prompt methods")
    params_total: int = _doc("parameters of the model")
    params_trainable: int = _doc("parameters that train")
    train_examples: int = _doc("training examples kept (packing and the length filter change their count)")
    eval_examples: int = _doc("evaluation examples (0 without evaluation)")
    data_format: str = _doc("the data's format (`alpaca`, `messages`, `text`, `classification`)")
    labels: list[str] | None = _doc("the classes, for classification; null otherwise")
    resumed_from: str | None = _doc("the checkpoint it resumed from, or null")
    pid: int = _doc("the process that trains")


class LogEvent(Event):
    """The Trainer logged a step's numbers."""

    type: ClassVar[str] = "log"
    step: int = _doc("the optimizer step")
    max_steps: int = _doc("the steps the Trainer will take")
    loss: float = _doc("the training loss (NaN or infinite when it is)")
    epoch: float | None = _optional("the epoch, fractional")
    learning_rate: float | None = _optional("the learning rate at this step")
    grad_norm: float | None = _optional("the gradient norm before clipping")
    tokens_seen: int | None = _optional("input tokens trained on so far, padding not counted")
    tokens_per_second: float | None = _optional("since the previous log")
    memory: dict[str, float] | None = _optional(
        "MiB: `rss_mb`, `peak_rss_mb`; on GPU also `gpu_allocated_mb`, `gpu_reserved_mb` (peaks)")
    task_metrics: dict[str, float] | None = _optional(
        "the task's own numbers as its trainer logs them: `rewards/chosen`, `rewards/margins` (DPO family), "
        "`reward`, `reward_std` (GRPO), `accuracy` (reward models), ...")


class EvalEvent(Event):
    """An evaluation ended."""

    type: ClassVar[str] = "eval"
    more_fields: ClassVar[tuple[str, str] | None] = (
        "eval_*",
        "the evaluation metrics as the Trainer names them (`eval_loss`, `eval_accuracy`, `eval_runtime`, ...)")
    step: int = _doc("the optimizer step it evaluated at")

    @property
    def metrics(self) -> dict[str, Any]:
        """The ``eval_*`` fields."""
        return {k: v for k, v in self.extra.items() if k.startswith("eval_")}

    def unknown_fields(self) -> list[str]:
        return [name for name in super().unknown_fields() if not name.startswith("eval_")]


class SamplesEvent(Event):
    """Completions the policy sampled during training, with their rewards (GRPO)."""

    type: ClassVar[str] = "samples"
    step: int = _doc("the optimizer step they were sampled at")
    samples: list[dict[str, Any]] = _doc(
        "each a `prompt`, a `completion` and its `reward` (the total), with each reward function's share "
        "under `rewards`")


class CheckpointEvent(Event):
    """A checkpoint was saved (the line is fsynced before the Trainer goes on)."""

    type: ClassVar[str] = "checkpoint"
    step: int = _doc("its step")
    path: str = _doc("its folder")


class ErrorEvent(Event):
    """The run failed, or a failure was recovered from (see the error kinds below)."""

    type: ClassVar[str] = "error"
    kind: str = _doc("the error kind")
    message: str = _doc("what went wrong; for bad input with its file, line and field")
    hint: str | None = _doc("what to do about it")
    traceback: str | None = _doc("the last frames, for bugs")


class WarningEvent(Event):
    """Something went wrong that cost nothing, such as a rank that died (SIGABRT in a native destructor)
    after every rank had written its result: the saved model or checkpoint is complete and the run keeps
    its status."""

    type: ClassVar[str] = "warning"
    message: str = _doc("what happened")


class RunEndEvent(Event):
    """Training ended: completed (before the final status), or failed."""

    type: ClassVar[str] = "run_end"
    status: str = _doc("`completed` or `failed`")
    step: int | None = _optional("on completion: the last step")
    metrics: dict[str, Any] | None = _optional(
        "on completion: the Trainer's metrics, plus `tokens_seen` and `train_tokens_per_second`")
    output: str | None = _optional("on completion: the folder of the final model or adapter")
    engine: str | None = _optional(
        "on completion: the class that trained (`DeepSpeedEngine` under ZeRO, `DistributedDataParallel` under "
        "DDP, the model class alone otherwise)")
    error_kind: str | None = _optional("on failure: the error's kind")


class UnknownEvent(Event):
    """An event of a type this reader does not know (a newer writer's): readers skip it."""

    type: ClassVar[str] = "unknown"
    raw: dict[str, Any]


EVENTS: dict[str, type[Event]] = {cls.type: cls for cls in (
    StatusEvent, RunStartEvent, LogEvent, EvalEvent, SamplesEvent, CheckpointEvent, ErrorEvent, WarningEvent,
    RunEndEvent)}


def parse_event(raw: Mapping[str, Any]) -> Event:
    """The typed event of one JSON object from events.jsonl, whichever writer wrote it. Never raises."""
    cls = EVENTS.get(raw.get("type"))  # type: ignore[arg-type]
    if cls is None:
        return UnknownEvent.model_construct(raw=dict(raw), time=raw.get("time"))
    given = {key: value for key, value in raw.items() if key != "type"}
    try:
        return cls.model_validate(given)
    except ValidationError:  # an older writer's (a field missing) or an odd one's: taken as it is
        return cls.model_construct(_fields_set=set(given), **{**dict.fromkeys(cls.model_fields), **given})


def events_table() -> str:
    """The table of events in docs/events.md, from the classes above."""
    rows = ["| type | field | what it holds |", "|---|---|---|"]
    for kind, cls in EVENTS.items():
        rows.append(f"| `{kind}` | | {' '.join((cls.__doc__ or '').split())} |")
        for name, info in cls.model_fields.items():
            if name != "time":
                rows.append(f"| | `{name}`{'' if info.is_required() else ' (optional)'} | {info.description} |")
        if cls.more_fields:
            rows.append(f"| | `{cls.more_fields[0]}` | {cls.more_fields[1]} |")
    return "\n".join(rows) + "\n"
