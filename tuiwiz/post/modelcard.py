"""The model card (README.md) written beside every merged or exported model.

It says what the model is (base, method, data), how it was trained (hyperparameters from
the run's frozen profile.yaml), how training ended (metrics from the run_end event) and
which tuiwiz wrote it. Local paths are reduced to their last part: a card may be published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuiwiz import __version__
from tuiwiz.run.event_types import EvalEvent, RunEndEvent, parse_event
from tuiwiz.run.events import read_events

HYPERPARAMETERS = (
    ("training", "learning_rate"), ("training", "num_train_epochs"), ("training", "max_steps"),
    ("training", "per_device_train_batch_size"), ("training", "gradient_accumulation_steps"),
    ("training", "lr_scheduler_type"), ("training", "warmup_steps"), ("training", "weight_decay"),
    ("training", "optim"), ("training", "precision"), ("training", "seed"), ("data", "max_length"),
    ("method", "r"), ("method", "lora_alpha"), ("method", "lora_dropout"), ("method", "target_modules"),
    ("method", "use_dora"), ("method", "use_rslora"), ("method", "bits"), ("method", "num_virtual_tokens"),
)
ARTIFACTS = {
    "merged": "the adapter merged into the base weights (safetensors, loads with transformers alone)",
    "adapter": "the adapter only (load it on the base model with peft)",
    "full": "the whole fine-tuned model (safetensors)",
    "gguf": "a GGUF file for llama.cpp and compatible runtimes",
    "ollama": "a GGUF file and an Ollama Modelfile",
    "onnx": "an ONNX graph (torch.onnx, checked in ONNX Runtime)",
}


@dataclass(frozen=True)
class ModelCard:
    base_model: str
    method: str
    task: str
    data: str
    artifact: str
    hyperparameters: tuple[tuple[str, object], ...]
    metrics: tuple[tuple[str, object], ...]
    labels: tuple[str, ...] | None
    run_id: str
    tuiwiz_version: str


def _public_name(value: str) -> str:
    """A hub id stays; a local path becomes its last part."""
    if value.startswith(("/", "~", ".")) or "\\" in value or value.count("/") > 1:
        return Path(value).name
    return value


def read_model_card(source, artifact: str) -> ModelCard:
    """``source`` is a ``tuiwiz.post.merge.RunOutput``."""
    import yaml

    try:
        profile = yaml.safe_load(source.run.profile.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        profile = {}
    hyper = []
    steps_rule = (profile.get("training") or {}).get("max_steps", -1) > 0  # then epochs do not count
    for section, key in HYPERPARAMETERS:
        value = (profile.get(section) or {}).get(key)
        if value is None or value == -1 or (key == "num_train_epochs" and steps_rule):
            continue
        hyper.append((f"{section}.{key}", value))
    metrics: dict = {}
    for event in map(parse_event, read_events(source.run.events)):
        if isinstance(event, RunEndEvent) and event.status == "completed":
            metrics.update(event.metrics or {})
        elif isinstance(event, EvalEvent):
            metrics.update(event.metrics)
    data = str((profile.get("data") or {}).get("path", "unknown"))
    base = str((profile.get("model") or {}).get("name_or_path") or source.base_model)
    return ModelCard(
        base_model=_public_name(base), method=source.method, task=source.task, data=_public_name(data),
        artifact=artifact, hyperparameters=tuple(hyper), metrics=tuple(sorted(metrics.items())),
        labels=source.labels, run_id=source.run.run_id, tuiwiz_version=__version__,
    )


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_model_card(card: ModelCard) -> str:
    library = "peft" if card.artifact == "adapter" else "transformers"
    lines = [
        "---",
        f"base_model: {card.base_model}",
        f"library_name: {library}",
        "tags:",
        "- tuiwiz",
        f"- {card.method}",
        "---",
        "",
        f"# {card.run_id}",
        "",
        f"Fine-tuned from **{card.base_model}** with **{card.method}** ({card.task}) by tuiwiz {card.tuiwiz_version}.",
        "",
        f"This folder holds {ARTIFACTS.get(card.artifact, card.artifact)}.",
        "",
        "## Training data",
        "",
        f"`{card.data}`",
        "",
    ]
    if card.labels:
        lines += ["Labels: " + ", ".join(f"`{label}`" for label in card.labels), ""]
    lines += ["## Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in card.hyperparameters]
    lines += ["", "## Final metrics", ""]
    if card.metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_format(v)} |" for k, v in card.metrics]
    else:
        lines.append("No metrics were recorded.")
    lines += ["", f"Written by tuiwiz {card.tuiwiz_version}.", ""]
    return "\n".join(lines)


def write_model_card(source, folder: Path, *, artifact: str) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(read_model_card(source, artifact)), encoding="utf-8")
    return path
