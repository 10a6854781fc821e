"""Reading, checking and writing profiles.

Errors name the file, the line and the field, and suggest the nearest valid key
for a typo. Relative paths resolve against the profile file's folder. The YAML itself
is read (and its tree checked) by profile_yaml.py.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from tuiwiz.demo.builtin import is_builtin
from tuiwiz.errors import UserError
from tuiwiz.files import write_text_atomic
from tuiwiz.methods import METHOD_NAMES
from tuiwiz.profile.schema import Profile
from tuiwiz.profile.yaml_tree import compose, mark_line
from tuiwiz.tasks import TASKS
from tuiwiz.text_files import decode_text, read_file_bytes

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
_SECRET_KEY = re.compile(r"(^|_)(token|api_key|apikey|access_key|password|passwd|secret|credentials)$", re.IGNORECASE)
# Token shapes that are never anything else: Hugging Face, OpenAI/Anthropic, GitHub, AWS access keys.
# Searched anywhere in a value (a token pasted into a URL counts too).
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{40,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|AKIA[0-9A-Z]{16})"
)
MAX_PROFILE_BYTES = 2**20


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile with its paths made absolute, and where it came from."""

    profile: Profile
    source: Path | None


def _node_at(root: yaml.Node | None, loc: tuple) -> tuple[yaml.Node | None, bool]:
    """The YAML node for a pydantic error location, and whether it is the key itself.

    Location parts that name no key (a union's tag) are skipped.
    """
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    if i == len(loc) - 1:
                        return key, True
                    node = value
                    break
            # else: a tag or a missing key; stay on this node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part < len(node.value):
                node = node.value[part]
    return node, False


def _model_classes(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_model_classes(arg))
    return found


def _valid_keys(loc: tuple) -> list[str]:
    """The keys allowed in the mapping that holds ``loc``'s last part."""
    classes: list[type[BaseModel]] = [Profile]
    for part in loc[:-1]:
        narrowed = [c for c in classes if c.model_fields.get("type") and c.model_fields["type"].default == part]
        if narrowed:
            classes = narrowed
            continue
        following: list[type[BaseModel]] = []
        for cls in classes:
            field = cls.model_fields.get(str(part))
            if field is not None:
                following.extend(_model_classes(field.annotation))
        classes = following or classes
    keys: list[str] = []
    for cls in classes:
        keys.extend(k for k in cls.model_fields if k not in keys)
    return keys


def _field_info(loc: tuple):
    """The schema's FieldInfo for ``loc`` (through a method's union by its tag), or None."""
    classes: list[type[BaseModel]] = [Profile]
    info = None
    for part in loc:
        if isinstance(part, int) or _is_member_tag(part):
            continue
        narrowed = [c for c in classes if c.model_fields.get("type") and c.model_fields["type"].default == part]
        if narrowed:
            classes = narrowed
            continue
        found = [c.model_fields[str(part)] for c in classes if str(part) in c.model_fields]
        if not found:
            return None
        info = found[0]
        classes = [m for f in found for m in _model_classes(f.annotation)]
    return info


_TAKES = {"int_parsing": "a whole number", "int_from_float": "a whole number", "int_type": "a whole number",
          "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
          "bool_type": "true or false", "string_type": "text", "finite_number": "a finite number (not inf or nan)"}
_BOUNDS = {"gt": "above {}", "ge": "at least {}", "lt": "below {}", "le": "at most {}"}


def _described(error: dict) -> str | None:
    """What the field takes (from the error's kind and bounds) and what it is (from the schema)."""
    loc = error["loc"]
    info = _field_info(loc)
    ctx = error.get("ctx") or {}
    bounds = [_BOUNDS[k].format(f"{ctx[k]:g}" if isinstance(ctx[k], float) else ctx[k])
              for k in ("gt", "ge", "lt", "le") if k in ctx]
    takes = _TAKES.get(error["type"])
    if error["type"] == "literal_error" and "expected" in ctx:
        takes = ctx["expected"]
    if bounds:
        whole = info is not None and "float" not in str(info.annotation) and "int" in str(info.annotation)
        takes = f"{'a whole number' if whole else 'a number'} {' and '.join(bounds)}"
    parts = []
    if takes:
        parts.append(f"{_dotted(loc)} takes {takes}")
    if info is not None:
        if info.description and not info.description.startswith("Unset"):
            parts.append(info.description.rstrip("."))
        default = info.default
        if info.description and info.description.startswith("Unset") and default is None:
            parts.append(info.description.rstrip(".").replace("Unset: ", "unset, it takes ", 1))
        elif default is not None and not isinstance(default, (BaseModel, list, dict)) \
                and repr(default) != "PydanticUndefined" and error["type"] != "literal_error":
            parts.append(f"default: {str(default).lower() if isinstance(default, bool) else default}")
    return "; ".join(parts) or None


def _is_member_tag(part) -> bool:
    """A union member's name in a pydantic location (``literal['auto']``, ``list[str]``), not a key."""
    return isinstance(part, str) and not part.isidentifier()


def _dotted(loc: tuple) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int) and not _is_member_tag(p)]
    # Drop a union tag (method.lora.r -> method.r): the tag is the value of `type`.
    if len(parts) >= 2 and parts[0] == "method":
        if parts[1] in METHOD_NAMES:
            parts.pop(1)
    return ".".join(parts)


def _describe(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the value {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return f"the text {str(value)[:40]!r}"


def _hint_for(error: dict) -> str | None:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        valid = _valid_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        if close:
            return f"did you mean '{close[0]}'? Valid keys here: {', '.join(valid)}"
        return f"valid keys here: {', '.join(valid)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = str(error.get("input", {}).get("type", "")) if isinstance(error.get("input"), dict) else ""
        close = difflib.get_close_matches(tag, METHOD_NAMES, n=1)
        prefix = f"did you mean '{close[0]}'? " if close else ""
        return prefix + "method.type is one of: " + ", ".join(METHOD_NAMES)
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        close = difflib.get_close_matches(str(error.get("input")), re.findall(r"'([^']*)'", expected), n=1)
        if close:
            return f"did you mean '{close[0]}'?"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        name = _dotted(loc).rpartition(".")[2] or "section"
        return f"write the section's name alone,  {name}:  and its KEY: VALUE lines below it, indented two spaces"
    if kind == "string_pattern_mismatch" and _dotted(loc) == "output.run_name":
        return ("letters, digits, '.', '_' and '-', starting with a letter or digit: "
                "it names a folder in output.runs_dir")
    return _described(error)


_NAMED_FIELD = re.compile(r"\b(model|data|method|training|distributed|output|preference|grpo)\.[a-z_]+(\.[a-z_]+)?")


def _message_for(error: dict, same_place: list[dict]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}'"
    if kind == "union_tag_not_found":
        return "the method has no type"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"'{_dotted(loc)}' is a section of keys, not {_describe(error.get('input'))}"
    messages = []
    for item in same_place:  # one per member of a union (target_modules: 'auto' or a list)
        text = item["msg"]
        text = text[len("Value error, "):] if text.startswith("Value error, ") else text
        if messages and text.startswith("Input should be "):
            text = text[len("Input should be "):]
        if text not in messages:
            messages.append(text)
    return "; or ".join(messages)


def error_from_validation(exc: ValidationError, root: yaml.Node | None, file: str) -> UserError:
    errors = exc.errors()
    error = errors[0]
    loc = tuple(error["loc"])
    same_place = [e for e in errors if _dotted(e["loc"]) == _dotted(loc)]
    field = _dotted(loc)
    if not field:  # a check across sections: point at the first field its message names
        named = _NAMED_FIELD.search(error["msg"])
        if named:
            field, loc = named.group(), tuple(named.group().split("."))
    node, _ = _node_at(root, loc)
    line = mark_line(node) if node is not None else None
    message = _message_for(error, same_place)
    more = len({_dotted(e["loc"]) for e in errors}) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''} after this one)"
    return UserError(message, hint=_hint_for(error), file=file, line=line, field=field or None, kind="profile")


def _check_secrets(root: yaml.Node | None, file: str, path: str = "") -> None:
    """Tokens belong in the environment, never in a profile that people share."""
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            field = f"{path}.{key.value}" if path else str(key.value)
            if _SECRET_KEY.search(str(key.value)):
                raise UserError(
                    f"'{key.value}' looks like a secret; profiles never hold tokens",
                    hint="remove it and set HF_TOKEN in the environment (or run `hf auth login`)",
                    file=file, line=mark_line(key), field=field, kind="profile",
                )
            _check_secrets(value, file, field)
    elif isinstance(root, yaml.SequenceNode):
        for item in root.value:
            _check_secrets(item, file, path)
    elif isinstance(root, yaml.ScalarNode) and _SECRET_VALUE.search(str(root.value)):
        raise UserError(
            "this value looks like an access token; profiles never hold tokens",
            hint="remove it and set HF_TOKEN in the environment",
            file=file, line=mark_line(root), field=path or None, kind="profile",
        )


def check_profile_tree(root: yaml.Node | None, data, file: str) -> None:
    """What every profile's YAML must be before its fields are checked: a mapping, with no secrets."""
    if data is None:
        raise UserError("the profile is empty", hint="start from profiles/quickstart.yaml", file=file, kind="profile")
    if not isinstance(data, dict):
        raise UserError(
            f"a profile is a mapping of sections (model, data, method, training, output), not {_describe(data)}",
            hint="start from profiles/quickstart.yaml", file=file, line=1, kind="profile",
        )
    _check_secrets(root, file)


def _too_big(size: int, file: str | Path) -> UserError:
    return UserError(f"this file is {size / 2**20:.1f} MiB; a profile is a few hundred bytes of YAML",
                     hint="is this really the profile? Datasets go in data.path", file=file, kind="profile")


def parse_profile_text(text: str, file: str = "<profile>") -> Profile:
    """Validate YAML text as a profile, without resolving paths."""
    if len(text) > MAX_PROFILE_BYTES:
        raise _too_big(len(text.encode("utf-8", "replace")), file)
    root, data = compose(text, file)
    check_profile_tree(root, data, file)
    if "stages" in data:
        raise UserError(
            "this profile has stages: it runs as a pipeline, one run per stage",
            hint="run it with `tuiwiz --profile FILE`; a command that takes one run's profile takes a stage's",
            file=file, line=mark_line(next(k for k, _ in root.value if k.value == "stages")), field="stages",
            kind="profile")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise error_from_validation(exc, root, file) from None


def read_profile_text(path: Path) -> str:
    if not path.exists():
        raise UserError("no such profile", hint="check the path; examples are in profiles/", file=path, kind="profile")
    if path.is_dir():
        raise UserError("this is a folder, not a profile file", hint="name a .yaml file", file=path, kind="profile")
    if not path.is_file():
        raise UserError("this is not a regular file (a device or a pipe)", file=path, kind="profile")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise _too_big(path.stat().st_size, path)
    return decode_text(read_file_bytes(path, "profile"), path, kind="profile", what="a YAML profile")


def is_local_data(path: str) -> bool:
    return path.lower().endswith(DATA_SUFFIXES) or path.startswith((".", "/", "~"))


def _resolve(value: str, base: Path) -> str:
    return str((base / Path(value).expanduser()).resolve())


def resolve_paths(profile: Profile, base: Path) -> Profile:
    """Make the profile's local paths absolute, relative to ``base``."""
    model = profile.model.name_or_path
    if not is_builtin(model) and (model.startswith((".", "/", "~")) or (base / model).exists()):
        model = _resolve(model, base)
    data = profile.data.path
    if not data.startswith("demo:") and is_local_data(data):
        data = _resolve(data, base)
    validation = profile.data.validation_path
    if validation and is_local_data(validation):
        validation = _resolve(validation, base)
    def folder(value: str | None) -> str | None:  # a folder relative to the profile, not a run id or stage:NAME
        return _resolve(value, base) if value and (value.startswith((".", "/", "~")) or (base / value).exists()) \
            else value

    start = folder(profile.model.start_from)
    rewards = [reward.model_copy(update={"file": _resolve(reward.file, base)}) if reward.type == "python"
               else reward.model_copy(update={"path": folder(reward.path)}) if reward.type == "reward_model"
               else reward for reward in profile.grpo.rewards]
    return profile.model_copy(
        update={
            "model": profile.model.model_copy(update={"name_or_path": model, "start_from": start}),
            "data": profile.data.model_copy(update={"path": data, "validation_path": validation}),
            "grpo": profile.grpo.model_copy(update={"rewards": rewards}),
            "output": profile.output.model_copy(update={"runs_dir": _resolve(profile.output.runs_dir, base)}),
        }
    )


def load_profile(path: str | Path) -> LoadedProfile:
    """Read, validate and resolve a profile file. Raises UserError on bad input."""
    path = Path(path)
    profile = parse_profile_text(read_profile_text(path), file=str(path))
    return LoadedProfile(resolve_paths(profile, path.resolve().parent), path.resolve())


def dump_profile(profile: Profile) -> str:
    data = profile.model_dump(mode="json", exclude_none=True)
    task = TASKS[profile.task]
    if not task.preference:  # a section the task does not read is left out, not written with its defaults
        data.pop("preference")
    if task.name != "grpo":
        data.pop("grpo")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write a profile atomically. Profiles hold no secrets by construction."""
    write_text_atomic(path, dump_profile(profile))


def profile_json_schema() -> str:
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuiwiz profile"
    return json.dumps(schema, indent=2)
