"""Training recipes: one module per task, each reading top to bottom (setup steps, train, save).

A recipe module has ``train(run, profile, *, resume, events, stop) -> StatusEvent``: it builds its
Trainer and hands it to tuiwiz.train.session. The process around it (lock, signals, out-of-memory
recovery, several processes) is tuiwiz.train.lifecycle's. A new task is a new module and a line here.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

RECIPES = {  # profile.task (tuiwiz/tasks.py) -> module
    "sft": "sft",
    "pretrain": "sft",  # raw text through the same trainer
    "classification": "classification",
    "reward": "reward",
    "dpo": "dpo",
    "kto": "kto",
    "orpo": "orpo",
    "simpo": "simpo",
    "grpo": "grpo",
    "seq2seq": "seq2seq",
}


def recipe_for(task: str) -> ModuleType:
    """The recipe module for ``task`` (imported on demand: each pulls in its own training stack)."""
    return import_module(f"{__name__}.{RECIPES[task]}")
