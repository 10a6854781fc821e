"""Profiles with ``stages:``: several runs in a row, each starting from the one before.

A stage is a mapping with a ``name`` and any profile sections; the sections outside ``stages`` are
shared by every stage, and a stage's own values go over them (a stage's ``method`` replaces the
shared one whole). Each stage is a whole profile, checked like one, with errors at the stage's
line. A stage starts from the previous stage's output unless its ``model.start_from`` names
another (``stage:NAME``) or a run folder; ``stage:NAME`` also names a reward model of an earlier
stage in ``grpo.rewards[].path``. The references become run folders as each stage starts
(tuiwiz/run/pipeline.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from tuiwiz.errors import UserError
from tuiwiz.profile.io import (
    LoadedProfile,
    check_profile_tree,
    error_from_validation,
    read_profile_text,
    resolve_paths,
)
from tuiwiz.profile.schema import Profile
from tuiwiz.profile.yaml_tree import compose, mark_line
from tuiwiz.tasks import TASKS

STAGE_REF = "stage:"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SHARED_ONLY = ("version", "output")  # sections a stage cannot set: one runs folder for the whole pipeline


@dataclass(frozen=True)
class Stage:
    name: str
    profile: Profile  # paths resolved; stage references still ``stage:NAME``


@dataclass(frozen=True)
class LoadedPipeline:
    stages: tuple[Stage, ...]
    source: Path

    @property
    def runs_dir(self) -> str:
        return self.stages[0].profile.output.runs_dir

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def is_pipeline_text(text: str) -> bool:
    """Whether a profile's YAML has a top-level ``stages:`` key (read cheaply, before the full check)."""
    return re.search(r"(?m)^stages\s*:", text) is not None


def is_stage_ref(value: str | None) -> bool:
    return bool(value) and value.startswith(STAGE_REF)


def _merged(shared: dict, own: dict) -> dict:
    out = dict(shared)
    for key, value in own.items():
        if key != "method" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _unread_sections(task: str) -> list[str]:
    """The task-specific sections a task does not read (none for an unknown task: validation names it)."""
    known = TASKS.get(task) if isinstance(task, str) else None
    if known is None:
        return []
    return [s for s, reads in (("preference", known.preference), ("grpo", task == "grpo")) if not reads]


def _stage_error(exc: ValidationError, root: yaml.Node, stage_node: yaml.Node, index: int, own: dict,
                 file: str) -> UserError:
    """The first problem, at the stage's line when the stage sets that section, else at the shared one."""
    error = error_from_validation(exc, stage_node, file)
    section = (error.field or "").split(".")[0]
    if section and section not in own:  # a shared section's value: its line is outside the stages
        return error_from_validation(exc, root, file)
    error.field = f"stages[{index}].{error.field}" if error.field else f"stages[{index}]"
    if error.line is None:
        error.line = mark_line(stage_node)
    return error


def parse_pipeline_text(text: str, file: str = "<profile>") -> list[tuple[str, Profile]]:
    """The stages of a pipeline profile's YAML, each validated as a whole profile."""
    root, data = compose(text, file)
    check_profile_tree(root, data, file)
    stages = data.get("stages")
    stages_node = next(v for k, v in root.value if k.value == "stages")
    if not isinstance(stages, list) or not stages:
        raise UserError("stages: is a list of stages, each with a name and the sections it changes", file=file,
                        line=mark_line(stages_node), field="stages", kind="profile",
                        hint="- name: sft\n    task: sft\n  - name: dpo\n    task: dpo")
    shared = {k: v for k, v in data.items() if k != "stages"}
    seen: list[str] = []
    parsed = []
    for index, (own, node) in enumerate(zip(stages, stages_node.value)):
        where = dict(file=file, line=mark_line(node), kind="profile")
        if not isinstance(own, dict):
            raise UserError(f"stage {index + 1} is not a mapping", field=f"stages[{index}]",
                            hint="each stage is `- name: NAME` with the sections it sets, indented below", **where)
        own = dict(own)
        name = own.pop("name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"stage {index + 1} needs a name: lowercase letters, digits, '-' or '_', up to 32",
                            field=f"stages[{index}].name", hint="- name: sft", **where)
        if name in seen:
            raise UserError(f"two stages are named {name}", field=f"stages[{index}].name",
                            hint="give each stage its own name", **where)
        for key in SHARED_ONLY:
            if key in own:
                raise UserError(f"stage {name} sets {key}:, which the whole pipeline shares",
                                field=f"stages[{index}].{key}", hint=f"move {key}: to the top level", **where)
        merged = _merged(shared, own)
        for section in _unread_sections(merged.get("task", "sft")):
            if section not in own:  # a shared section the stage's task does not read is not the stage's
                merged.pop(section, None)
        try:
            profile = Profile.model_validate(merged)
        except ValidationError as exc:
            raise _stage_error(exc, root, node, index, own, file) from None
        _check_refs(profile, name, seen, index, where)
        seen.append(name)
        parsed.append((name, profile))
    return parsed


def _check_refs(profile: Profile, name: str, earlier: list[str], index: int, where: dict) -> None:
    refs = [("model.start_from", profile.model.start_from)]
    refs += [(f"grpo.rewards[{i}].path", getattr(r, "path", None)) for i, r in enumerate(profile.grpo.rewards)]
    for field, value in refs:
        if is_stage_ref(value) and value[len(STAGE_REF):] not in earlier:
            raise UserError(
                f"stage {name}'s {field} names {value}, which is not an earlier stage",
                hint="earlier stages: " + (", ".join(earlier) or "none (this is the first)"),
                field=f"stages[{index}].{field}", **where)


def load_pipeline(path: str | Path) -> LoadedPipeline:
    """Read, validate and resolve a pipeline profile. Raises UserError on bad input."""
    path = Path(path)
    text = read_profile_text(path)
    base = path.resolve().parent
    stages = []
    for position, (name, profile) in enumerate(parse_pipeline_text(text, str(path))):
        if position > 0 and profile.model.start_from is None:  # the previous stage's output, by default
            previous = stages[-1].name
            profile = profile.model_copy(update={"model": profile.model.model_copy(
                update={"start_from": STAGE_REF + previous})})
        stages.append(Stage(name, resolve_paths(profile, base)))  # leaves stage:NAME alone: no such folder
    return LoadedPipeline(tuple(stages), path.resolve())


def stage_profile(stage: Stage, folders: dict[str, str]) -> LoadedProfile:
    """The stage's profile with its ``stage:NAME`` references made the named stages' run folders."""
    profile = stage.profile

    def real(value):
        return folders[value[len(STAGE_REF):]] if is_stage_ref(value) else value

    rewards = [r.model_copy(update={"path": real(r.path)}) if r.type == "reward_model" else r
               for r in profile.grpo.rewards]
    profile = profile.model_copy(update={
        "model": profile.model.model_copy(update={"start_from": real(profile.model.start_from)}),
        "grpo": profile.grpo.model_copy(update={"rewards": rewards}),
    })
    return LoadedProfile(profile, None)


def checkable_profile(stage: Stage) -> Profile:
    """The stage's profile without references to stages not run yet: what can be checked before any runs."""
    profile = stage.profile
    return profile.model_copy(update={
        "model": profile.model.model_copy(update={"start_from": None} if is_stage_ref(profile.model.start_from)
                                          else {}),
        "grpo": profile.grpo.model_copy(update={"rewards": [
            r for r in profile.grpo.rewards if not is_stage_ref(getattr(r, "path", None))]}),
    })
