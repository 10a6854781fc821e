"""What GRPO's rewards need, checked before a run dir exists (preflight) and without the training stack.

- a Python reward function: its file exists and defines the function, read with ``ast`` and never run;
- a reward model: a completed run of task ``reward`` (its folder, its output folder or its id);
- an exact-answer reward: data with an answer column;
- the batch: whole groups of ``grpo.num_generations`` completions.

Each refusal is a ``UserError`` naming the profile's field (and its line, where the profile is a file).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.profile.schema import ExactAnswerReward, ModelReward, Profile, PythonReward
from tuiwiz.run.outputs import RunOutput, run_output


def reward_run(ref: str, *, field: str | None = None, file: str | None = None, hint: str | None = None) -> RunOutput:
    """The output of a completed reward-model run, by its folder, its output folder or its id."""
    folder = Path(ref).expanduser()
    if folder.name == "output" and (folder / "tuiwiz.json").is_file():
        ref = str(folder.parent)
    try:
        output = run_output(ref)
    except UserError as exc:
        raise UserError(exc.message, hint=exc.hint, file=file, field=field, kind=exc.kind) from None
    if output.task != "reward":
        raise UserError(
            f"run {output.run.run_id} was trained with task {output.task}, not reward: it has no score head",
            hint=hint or "name a run trained with task: reward", file=file, field=field, kind="run")
    return output


def profile_line(source: str, path: tuple) -> int | None:
    """The line of a field in the profile file (``("grpo", "rewards", 0, "file")``), or None."""
    import yaml

    from tuiwiz.profile.io import read_profile_text
    from tuiwiz.profile.yaml_tree import compose, mark_line

    try:
        node = compose(read_profile_text(Path(source)), source)[0]
    except (UserError, OSError):
        return None  # no file (a profile built in memory)
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if found is None:
                break
            line, node = mark_line(found[0]), found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = mark_line(node)
        else:
            break
    return line


def _refuse(message: str, source: str, path: tuple, hint: str) -> UserError:
    field = "grpo.rewards" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[2:])
    return UserError(message, hint=hint, file=source, line=profile_line(source, path), field=field, kind="profile")


def _top_level_names(tree: ast.Module) -> dict[str, ast.AST]:
    """What a module defines at its top level: functions, assignments and imports, by name."""
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({t.id: node for t in targets if isinstance(t, ast.Name)})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(alias.asname or alias.name).split(".")[0]: node for alias in node.names})
    return names


def check_python_reward(reward: PythonReward, index: int, source: str) -> None:
    """The file exists, is Python, and defines the function with room for TRL's keyword arguments.
    Parsed, never executed: the code runs in the runner, and only with grpo.trust_reward_code."""
    from tuiwiz.text_files import decode_text, read_file_bytes

    at = ("grpo", "rewards", index, "file")
    path = Path(reward.file)
    if not path.is_file():
        raise _refuse(f"the reward function file {path} does not exist", source, at,
                      "give the path of a .py file (relative to the profile's folder)")
    try:
        tree = ast.parse(decode_text(read_file_bytes(path), path), filename=str(path))
    except SyntaxError as exc:
        raise UserError(f"{path} is not valid Python: {exc.msg}", hint="fix the file; it is read before it runs",
                        file=path, line=exc.lineno, field=f"grpo.rewards[{index}].file", kind="profile") from None
    names = _top_level_names(tree)
    at = ("grpo", "rewards", index, "function")
    node = names.get(reward.function)
    if node is None:
        functions = [n for n, v in names.items() if isinstance(v, (ast.FunctionDef, ast.AsyncFunctionDef))]
        raise _refuse(f"{path} defines no function {reward.function}", source, at,
                      f"its functions: {', '.join(functions)}" if functions else
                      f"define def {reward.function}(prompts, completions, **kwargs) in it")
    if isinstance(node, ast.ClassDef):
        raise _refuse(f"{reward.function} in {path} is a class, not a function", source, at,
                      f"define def {reward.function}(prompts, completions, **kwargs)")
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.args.kwarg is None:
        raise _refuse(f"{reward.function} in {path} takes no **kwargs: TRL passes it every column of the data, and "
                      "more, by keyword", source, at, f"def {reward.function}(prompts, completions, **kwargs)")


def _answers_present(profile: Profile) -> tuple[bool, str] | None:
    """(whether any training record has an answer, the data's name), for data readable here; None for hub data
    (the runner checks it once loaded)."""
    from tuiwiz.data.datasets import load_dataset_file
    from tuiwiz.demo.build import resolve_demo_uri
    from tuiwiz.profile.io import is_local_data

    value = profile.data.path
    if value.startswith("demo:"):
        path = resolve_demo_uri(value)  # the demo's task datasets are plain Python, built in a moment
    elif is_local_data(value):
        path = Path(value)
    else:
        return None
    data = load_dataset_file(path, format=profile.data.format, columns=profile.data.columns, task=profile.task,
                             limit=profile.data.limit)
    return any(record.get("answer") is not None for record in data.records), value


def _check_batch(profile: Profile, source: str) -> None:
    t, generations = profile.training, profile.grpo.num_generations
    completions = t.per_device_train_batch_size * t.gradient_accumulation_steps * profile.distributed.world_size
    if completions % generations:
        raise UserError(
            f"a step samples {completions} completions (micro-batch x accumulation x processes), which is not a whole "
            f"number of groups of grpo.num_generations={generations}",
            hint=f"make training.per_device_train_batch_size (x accumulation) a multiple of {generations}",
            file=source, field="training.per_device_train_batch_size", kind="profile")
    has_eval = profile.data.validation_path or profile.data.validation_split
    evaluated = t.per_device_eval_batch_size * profile.distributed.world_size
    if has_eval and evaluated % generations:
        raise UserError(
            f"an evaluation batch of {evaluated} completions is not a whole number of groups of "
            f"grpo.num_generations={generations}",
            hint=f"make training.per_device_eval_batch_size a multiple of {generations}",
            file=source, field="training.per_device_eval_batch_size", kind="profile")


def check_rewards(profile: Profile, source: str) -> None:
    """Every reward of a GRPO profile can run, before a run dir exists. Raises UserError."""
    if profile.task != "grpo":
        return
    _check_batch(profile, source)
    answers = None
    for index, reward in enumerate(profile.grpo.rewards):
        if isinstance(reward, PythonReward):
            check_python_reward(reward, index, source)
        elif isinstance(reward, ModelReward):
            try:
                reward_run(reward.path)
            except UserError as exc:
                raise _refuse(exc.message, source, ("grpo", "rewards", index, "path"),
                              exc.hint or "name a completed run trained with task: reward") from None
        elif isinstance(reward, ExactAnswerReward):
            answers = answers or _answers_present(profile)
            if answers is not None and not answers[0]:
                raise _refuse(
                    f"an exact_answer reward compares with the data's answer column, and {answers[1]} has none",
                    source, ("grpo", "rewards", index, "type"),
                    "add an answer column to the data (or map yours with data.columns.answer), or use another reward")
