"""The profile schema, its error messages, path resolution and round trips."""

import json

import pytest

from tuiwiz.errors import UserError
from tuiwiz.methods import METHOD_NAMES, METHODS
from tuiwiz.profile.io import load_profile, parse_profile_text, profile_json_schema, save_profile
from tuiwiz.profile.schema import Profile

from .support import PROFILES
from .support.processes import run_cli


def error_of(text: str) -> UserError:
    with pytest.raises(UserError) as info:
        parse_profile_text(text, file="p.yaml")
    return info.value


BAD_PROFILES = [
    # (yaml, line, field, message fragment, hint fragment)
    ("method:\n  type: lora\n  rr: 8\n", 3, "method.rr", "unknown key 'rr'", "did you mean 'r'?"),
    ("training:\n  learnin_rate: 0.1\n", 2, "training.learnin_rate", "unknown key", "did you mean 'learning_rate'?"),
    ("modle:\n  name_or_path: x\n", 1, "modle", "unknown key 'modle'", "did you mean 'model'?"),
    ("method:\n  type: lorra\n", 1, "method", "does not match any of the expected tags", "did you mean 'lora'?"),
    ("training:\n  per_device_train_batch_size: many\n", 2, "training.per_device_train_batch_size",
     "valid integer", None),
    ("training:\n  lr_scheduler_type: cosin\n", 2, "training.lr_scheduler_type", "Input should be",
     "did you mean 'cosine'?"),
    ("method:\n  type: qlora\n  bits: 3\n", 3, "method.bits", "Input should be 4 or 8", None),
    ("model:\n  token: hf_x\n", 2, "model.token", "looks like a secret", "HF_TOKEN"),
    ("model:\n  revision: hf_abcdefghijklmnopqrstuvwxyz123456\n", 2, "model.revision", "looks like an access token",
     "HF_TOKEN"),
    ("data:\n  max_length: [1\n", None, None, "not valid YAML", "indentation"),
    ("- a\n- b\n", 1, None, "not a list", "quickstart"),
    ("task: pretrain\ndata:\n  format: alpaca\n", None, None, "trains on text data", None),
    ("task: classification\ndata:\n  format: messages\n", None, None, "trains on classification data", None),
    ("training:\n  eval_steps: 10\n", None, None, "no evaluation data", None),
    ("data:\n  validation_split: 0.7\n", 2, "data.validation_split", "less than 0.5", None),
    ("method:\n  type: adalora\n  init_r: 4\n  target_r: 8\n", None, "method", "target_r must not exceed init_r", None),
    ("method:\n  type: prompt_tuning\n  prompt_tuning_init: TEXT\n", None, "method", "prompt_tuning_init_text", None),
    ("output:\n  run_name: ../escape\n", 2, "output.run_name", "pattern", None),
    ("training:\n  warmup_steps: 2.5\n", 2, "training.warmup_steps", "whole number", None),
    ("version: 2\n", 1, "version", "Input should be 1", None),
]


@pytest.mark.parametrize("text,line,field,message,hint", BAD_PROFILES)
def test_bad_profiles_name_line_field_and_fix(text, line, field, message, hint):
    error = error_of(text)
    assert error.file == "p.yaml"
    if line is not None:
        assert error.line == line
    if field is not None:
        assert error.field == field
    assert message in error.message
    if hint is not None:
        assert hint in (error.hint or "")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(UserError, match="the profile is empty"):
        load_profile(empty)
    with pytest.raises(UserError, match="no such profile"):
        load_profile(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(UserError, match="binary"):
        load_profile(binary)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model:\n  name_or_path: caf\xe9\n")
    with pytest.raises(UserError) as info:
        load_profile(latin)
    assert info.value.line == 2 and "UTF-8" in info.value.message


def test_relative_paths_resolve_against_the_profile_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    path = folder / "p.yaml"
    path.write_text("model:\n  name_or_path: ./model\ndata:\n  path: ../data/train.jsonl\noutput:\n  runs_dir: out\n")
    monkeypatch.chdir(tmp_path.parent)
    profile = load_profile(path).profile
    assert profile.model.name_or_path == str((folder / "model").resolve())
    assert profile.data.path == str((tmp_path / "data" / "train.jsonl").resolve())
    assert profile.output.runs_dir == str((folder / "out").resolve())


def test_hub_ids_and_builtins_stay_as_they_are(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model:\n  name_or_path: Qwen/Qwen2.5-0.5B\ndata:\n  path: tatsu-lab/alpaca\n")
    profile = load_profile(path).profile
    assert profile.model.name_or_path == "Qwen/Qwen2.5-0.5B"
    assert profile.data.path == "tatsu-lab/alpaca"
    path.write_text("model:\n  name_or_path: demo\ndata:\n  path: demo:chat\n")
    profile = load_profile(path).profile
    assert (profile.model.name_or_path, profile.data.path) == ("demo", "demo:chat")


def test_save_is_a_round_trip_and_atomic(tmp_path):
    profile = Profile.model_validate({"method": {"type": "qlora", "bits": 8}, "training": {"max_steps": 7}})
    target = tmp_path / "saved.yaml"
    save_profile(profile, target)
    assert parse_profile_text(target.read_text()) == profile
    assert [p.name for p in tmp_path.iterdir()] == ["saved.yaml"]  # no temp file left


def test_learning_rate_defaults_per_method():
    for method in METHOD_NAMES:
        profile = Profile.model_validate({"method": {"type": method}})
        assert profile.learning_rate == METHODS[method].learning_rate
    assert Profile.model_validate({"training": {"learning_rate": 0.1}}).learning_rate == 0.1


def test_json_schema_lists_every_method():
    schema = json.loads(profile_json_schema())
    text = json.dumps(schema)
    for method in METHOD_NAMES:
        assert f'"{method}"' in text
    assert schema["properties"]["model"]


def test_every_shipped_profile_validates():
    from tuiwiz.tasks import TASK_NAMES

    from .support.runs import shipped_profiles

    shipped = shipped_profiles()
    assert {profile.method.type for _, profile in shipped} == set(METHOD_NAMES), "one shipped profile per method"
    assert {profile.task for _, profile in shipped} == set(TASK_NAMES), "every task in a shipped profile"
    assert (PROFILES / "quickstart.yaml").exists()


def test_cli_validate_and_schema():
    ok = run_cli("profile", "validate", PROFILES / "quickstart.yaml")
    assert ok.returncode == 0 and "valid" in ok.stdout
    schema = run_cli("profile", "schema")
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "tuiwiz profile"


def test_cli_validate_bad_profile_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: 3\n")
    result = run_cli("profile", "validate", bad)
    assert result.returncode == 2
    assert f"{bad}:2: training.epochs: unknown key 'epochs'" in result.stderr
    assert "Traceback" not in result.stderr
