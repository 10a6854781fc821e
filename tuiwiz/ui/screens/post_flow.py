"""After training: merge, export and chat screens for a completed run (from the monitor or the runs list).

Each asks what it needs in small dialogs, then runs the real command (``tuiwiz merge|export|chat
... --jsonl``) in a subprocess, so the app stays free of torch.
"""

from __future__ import annotations

import re

CHAT_MODES = [
    ("tuned", "chat with the fine-tuned model"),
    ("compare", "side by side: each prompt answered by the base model and the fine-tuned one"),
]
EXPORT_FORMATS = [
    ("merged", "merged: the base model with the adapter folded in (safetensors)"),
    ("adapter", "adapter: the PEFT adapter alone, with a model card"),
    ("gguf", "gguf: one file for llama.cpp"),
    ("ollama", "ollama: a GGUF and its Modelfile"),
    ("onnx", "onnx: a classifier for ONNX Runtime"),
    ("hub", "hub: push to the Hugging Face Hub (your HF_TOKEN or login)"),
]
GGUF_TYPES = [
    ("f16", "f16: 16-bit, as the model trained (the default)"),
    ("q8_0", "q8_0: 8-bit blocks, about half the size"),
    ("f32", "f32: 32-bit, the largest"),
]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def offered(what: str, status: str | None, method: str | None) -> bool:
    """Whether ``what`` (merge, export, chat) applies to a run: it completed, and merging needs an
    adapter (a full fine-tune's output is already a whole model)."""
    return status == "completed" and not (what == "merge" and method in (None, "full"))


def run_afterwards(run_path: str) -> str:
    """What the run's task offers once trained (tuiwiz/tasks.py): chat, classify, score or text2text."""
    from pathlib import Path

    from tuiwiz.run.next_steps import method_and_task
    from tuiwiz.run.rundir import RunDir
    from tuiwiz.tasks import TASKS

    _, task = method_and_task(RunDir(Path(run_path)))
    return TASKS[task].afterwards if task in TASKS else "chat"


def _repo_problem(value: str) -> str | None:
    return None if REPO_ID.match(value) else "a repository is user/name (letters, digits, - _ .)"


async def post_action(app, what: str, run_path: str, run_id: str) -> None:
    """Run ``what`` (merge, export or chat) for the completed run at ``run_path``. Call from a worker."""
    from tuiwiz.ui.screens.dialogs import ChoiceDialog, TextDialog

    if what == "chat" and run_afterwards(run_path) == "score":  # a reward model scores; it does not chat
        from tuiwiz.ui.screens.score import ScoreScreen

        await app.push_screen_wait(ScoreScreen(run_path, label=run_id))
        return
    if what == "chat":
        from tuiwiz.ui.screens.chat import ChatScreen

        mode = await app.push_screen_wait(ChoiceDialog("Chat", CHAT_MODES))
        if mode is not None:
            await app.push_screen_wait(ChatScreen(run_path, compare=mode == "compare", label=run_id))
        return
    args = [what, run_path]
    title = f"Merge · {run_id}"
    if what == "export":
        fmt = await app.push_screen_wait(ChoiceDialog("Export as", EXPORT_FORMATS))
        if fmt is None:
            return
        args += ["--format", fmt]
        title = f"Export {fmt} · {run_id}"
        if fmt in ("gguf", "ollama"):
            quant = await app.push_screen_wait(ChoiceDialog("GGUF tensor type", GGUF_TYPES))
            if quant is None:
                return
            args += ["--quant", quant]
        elif fmt == "hub":
            repo = await app.push_screen_wait(TextDialog(
                "Push to which repository?", "The token comes from HF_TOKEN or `hf auth login`; tuiwiz never "
                "stores it.", placeholder="user/name", check=_repo_problem))
            if repo is None:
                return
            args += ["--repo", repo]
    from tuiwiz.ui.screens.job import JobScreen

    await app.push_screen_wait(JobScreen(what, args, title=title))
