"""What a user can do with a run once it has ended, as the commands to type (with the run's real id):
the headless summary and `tuiwiz attach` print them, the monitor shows the same."""

from __future__ import annotations

from pathlib import Path

from tuiwiz.methods import METHODS
from tuiwiz.run.rundir import RunDir
from tuiwiz.tasks import TASKS


def method_and_task(run: RunDir) -> tuple[str | None, str | None]:
    import yaml

    try:
        profile = yaml.safe_load(run.profile.read_text(encoding="utf-8")) or {}
        return (profile.get("method") or {}).get("type", "lora"), profile.get("task", "sft")
    except (OSError, ValueError, AttributeError):
        return None, None


def next_commands(run: RunDir, status: str) -> list[tuple[str, str]]:
    """(what it does, the command) for each next step that makes sense for this run."""
    rid = run.run_id
    method, task = method_and_task(run)
    steps: list[tuple[str, str]] = []
    if status == "completed":
        afterwards = TASKS[task].afterwards if task in TASKS else "chat"
        if afterwards == "classify":
            steps.append(("export the classifier for ONNX Runtime", f"tuiwiz export {rid} --format onnx"))
        elif afterwards == "score":
            steps.append(("score a reply with the reward model",
                          f'tuiwiz score {rid} --prompt "..." --completion "..."'))
            steps.append(("reward GRPO with it: this line in a profile's grpo.rewards",
                          f"- {{type: reward_model, path: {run.path}}}"))
        elif afterwards == "text2text":
            steps.append(("give it an input, read its output", f"tuiwiz chat {rid}"))
        else:
            steps.append(("chat with it (--compare: beside the base model)", f"tuiwiz chat {rid}"))
        if afterwards != "classify" and method in METHODS and METHODS[method].mergeable:
            steps.append(("merge the adapter into the base model", f"tuiwiz merge {rid}"))
        if afterwards == "chat":
            steps.append(("export it for llama.cpp or Ollama", f"tuiwiz export {rid} --format gguf"))
    elif status in ("stopped", "failed") and run.last_checkpoint() is not None:
        steps.append(("continue from its last checkpoint", f"tuiwiz resume {rid}"))
    steps += _pipeline_steps(run, status)
    if run.tensorboard.is_dir():
        steps.append(("see its curves in TensorBoard", f"tensorboard --logdir {run.tensorboard}"))
    return steps


def _pipeline_steps(run: RunDir, status: str) -> list[tuple[str, str]]:
    """For a stage of a pipeline (tuiwiz/run/pipeline.py): the pipeline's own next step."""
    from tuiwiz.run.pipeline import PipelineDir, is_pipeline_dir

    if not is_pipeline_dir(run.path.parent):
        return []
    pipe = PipelineDir(run.path.parent)
    try:
        stages = pipe.read().stages
    except (OSError, ValueError, TypeError, KeyError):
        return []
    names = [s.name for s in stages]
    mine = next((s.name for s in stages if s.run and Path(s.run) == run.path), None)
    if mine is None:
        return []
    if status == "completed" and mine != names[-1]:
        later = names[names.index(mine) + 1]
        return [(f"follow the pipeline's next stage ({later})", f"tuiwiz attach {pipe.pipeline_id}")]
    if status in ("stopped", "failed"):
        return [("go on with the whole pipeline from this stage", f"tuiwiz resume {pipe.pipeline_id}")]
    return []
