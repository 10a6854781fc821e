"""A finished run's output, as every post-training step reads it: what it is (an adapter, virtual
tokens or a whole model), where its base model is, and the files of its tokenizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.run.rundir import RunDir, effective_status, find_run

# Files of a tokenizer (and its chat template) that go with a merged or exported model.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
)
Progress = Callable[[str, int, int], None]  # (step, done, total)


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
    kind = METHODS[method].family if method in METHODS else "adapter"  # full, adapter or prompt
    labels = tuple(meta["labels"]) if meta.get("labels") else None
    return RunOutput(run, run.output, Path(meta["base_model"]), method, meta.get("task", "sft"), labels, kind)


def earlier_output(value: str) -> RunOutput:
    """The run a profile's ``model.start_from`` names (its folder, its output folder or its id), checked:
    completed, and a model a later run can load."""
    folder = Path(value)
    ref = str(folder.parent) if folder.name == "output" and (folder / "tuiwiz.json").exists() else value
    try:
        output = run_output(ref)
    except UserError as exc:
        raise UserError(exc.message, hint=exc.hint or "name the folder of a completed run", field="model.start_from",
                        kind="profile") from None
    if output.kind == "prompt":
        raise UserError(
            f"run {output.run.run_id} trained virtual tokens ({output.method}), which cannot be merged into "
            "the model, so no run can start from them",
            hint="start from a run trained with lora, qlora, ia3, full or bitfit", field="model.start_from",
            kind="profile")
    return output
