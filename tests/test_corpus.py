"""A corpus of malformed profiles and datasets (tests/corpus/): each is refused with one exact message.

Every file under tests/corpus/ has a row here: the message fragment, the line and the field it
must name (None: it must name none), and a hint fragment. The whole message and hint of each are
pinned in tests/corpus/messages.json: a change of wording is a reviewed diff there, made with
``TUIWIZ_UPDATE_CORPUS=1 pytest tests/test_corpus.py -k exact`` (which rewrites it and fails once).
All rows load in-process; the rows marked ``cli`` also go through the real CLI (`tuiwiz profile validate FILE` and
`tuiwiz --profile FILE`), which must exit 2 with no traceback and leave nothing behind: no run
folder, no `.tmp` staging folder, no registry entry.

Decisions the corpus pins down:
- UTF-16 (with a BOM, or ASCII text saved as UTF-16LE) is refused with a message naming the
  encoding and an iconv hint, never guessed: without a BOM it cannot be told apart reliably.
- A key set twice in one section is an error at the second one (YAML keeps the last silently).
- Anchors and aliases are allowed, but what they expand to is bounded (MAX_VALUES), and flow
  nesting is counted before PyYAML's scanner, which is quadratic in it.
- Any YAML tag beyond plain scalars, lists and mappings is refused before anything is built.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuiwiz.data.datasets import check_validation_labels, find_problems, load_dataset_file
from tuiwiz.errors import UserError
from tuiwiz.profile.io import load_profile, parse_profile_text

from .support.processes import run_cli

CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Bad:
    file: str
    message: str
    line: int | None
    field: str | None
    hint: str | None = None
    cli: bool = False
    task: str = "sft"


PROFILES = [
    Bad("unknown-key.yaml", "unknown key 'epochs'", 3, "training.epochs", "num_train_epochs", cli=True),
    Bad("typo-method-key.yaml", "unknown key 'lora_alpah'", 3, "method.lora_alpah", "did you mean 'lora_alpha'?"),
    Bad("upcast-on-lora.yaml", "unknown key 'upcast_non_quantized'", 3, "method.upcast_non_quantized",
        "valid keys here: r, lora_alpha"),
    Bad("typo-section.yaml", "unknown key 'modle'", 1, "modle", "did you mean 'model'?"),
    Bad("wrong-type-int.yaml", "Input should be a valid integer", 2, "training.per_device_train_batch_size",
        cli=True),
    Bad("wrong-type-bool.yaml", "Input should be a valid boolean", 2, "data.packing"),
    Bad("wrong-type-float.yaml", "got a number with a fractional part", 2, "training.max_steps"),
    Bad("yaml-unclosed-bracket.yaml", "not valid YAML: expected ',' or ']'", 4, None, "indentation", cli=True),
    Bad("yaml-bad-indent.yaml", "not valid YAML: expected <block end>", 3, None, "indentation"),
    Bad("binary.yaml", "this is a binary file, not a YAML profile", None, None, cli=True),
    Bad("latin1.yaml", "not UTF-8 text (byte 5)", 1, None, "iconv -f latin1", cli=True),
    Bad("utf16-bom.yaml", "this file is UTF-16 text (it starts with a UTF-16 byte-order mark)", None, None,
        "iconv -f UTF-16 -t UTF-8", cli=True),
    Bad("empty.yaml", "the profile is empty", None, None, "quickstart", cli=True),
    Bad("comments-only.yaml", "the profile is empty", None, None, "quickstart"),
    Bad("list.yaml", "a profile is a mapping of sections", 1, None, "quickstart", cli=True),
    Bad("scalar.yaml", "not the text 'quickstart'", 1, None, "quickstart"),
    Bad("number-for-section.yaml", "'training' is a section of keys, not the number 5", 1, "training",
        "its KEY: VALUE lines below it", cli=True),
    Bad("empty-section.yaml", "'training' is a section of keys, not empty", 3, "training"),
    Bad("list-for-section.yaml", "'method' is a section of keys, not a list", 1, "method"),
    Bad("negative-batch.yaml", "Input should be greater than or equal to 1", 2,
        "training.per_device_train_batch_size", cli=True),
    Bad("zero-epochs.yaml", "greater than 0", 2, "training.num_train_epochs"),
    Bad("zero-learning-rate.yaml", "greater than 0", 2, "training.learning_rate"),
    Bad("learning-rate-above-one.yaml", "less than 1", 2, "training.learning_rate"),
    Bad("negative-lora-rank.yaml", "greater than or equal to 1", 3, "method.r"),
    Bad("run-name-escape.yaml", "String should match pattern", 2, "output.run_name", "a folder in output.runs_dir",
        cli=True),
    Bad("run-name-absolute.yaml", "should match pattern", 2, "output.run_name", "a folder in output.runs_dir"),
    Bad("run-name-slash.yaml", "should match pattern", 2, "output.run_name", "a folder in output.runs_dir"),
    Bad("yaml-bomb.yaml", "the profile expands to more than 10,000 values", 2, None, "needs no aliases", cli=True),
    Bad("recursive-alias.yaml", "an alias refers to the anchor that contains it", 1, None, "remove the alias"),
    Bad("deep-nesting.yaml", "nested more than 32 levels deep", 33, None, "at most four levels"),
    Bad("deep-flow.yaml", "nested more than 32 levels deep", 1, None, "at most four levels", cli=True),
    Bad("duplicate-key.yaml", "'max_steps' is set twice in this section (first on line 2)", 4,
        "training.max_steps", "remove one", cli=True),
    Bad("duplicate-section.yaml", "'training' is set twice in this section (first on line 1)", 5, "training"),
    Bad("tabs.yaml", "not valid YAML: found character '\\t'", 2, None, "never tabs", cli=True),
    Bad("python-object.yaml", "the YAML tag !!python/object/apply:os.system is not allowed", 1, "model",
        "remove !!python/object/apply:os.system", cli=True),
    Bad("python-name.yaml", "the YAML tag !!python/name:os.system is not allowed", 2, "training.optim"),
    Bad("custom-tag.yaml", "the YAML tag !include is not allowed", 1, "data"),
    Bad("tagged-value.yaml", "the value 'twelve' cannot be read as !!int", 2, None, "remove the !! tag"),
    Bad("token-key.yaml", "'hf_token' looks like a secret", 3, "model.hf_token", "HF_TOKEN", cli=True),
    Bad("token-value.yaml", "this value looks like an access token", 2, "model.name_or_path", "HF_TOKEN"),
    Bad("two-documents.yaml", "not valid YAML: but found another document", 3, None, "one YAML document"),
    Bad("method-without-type.yaml", "the method has no type", 1, "method", "method.type is one of"),
    Bad("method-type-typo.yaml", "does not match any of the expected tags", 1, "method", "did you mean 'lora'?"),
    Bad("version-2.yaml", "Input should be 1", 1, "version"),
    Bad("target-modules-number.yaml", "Input should be 'auto' or 'all-linear'; or a valid list", 3,
        "method.target_modules"),
    Bad("lone-surrogate.yaml", "invalid character (a lone surrogate", 2, "model.name_or_path"),
    Bad("huge-integer.yaml", "the number 99999999999999999999... is too large", 2, "training.max_steps"),
    Bad("eval-without-data.yaml", "no evaluation data", 2, "training.eval_steps"),
    Bad("pretrain-alpaca.yaml", "trains on text data, not data.format alpaca", 3, "data.format"),
    # values no run can mean: control characters in a path, counts and epochs past any real run, inf and nan
    Bad("nul-in-path.yaml", "contains the control character '\\x00' at position 11", 2, "model.name_or_path",
        "a local folder", cli=True),
    Bad("escape-in-data-path.yaml", "contains the control character '\\x1b'", 2, "data.path", "file"),
    Bad("batch-1e20.yaml", "Input should be less than or equal to 1000000", 2,
        "training.per_device_train_batch_size", "takes a whole number at most 1000000", cli=True),
    Bad("accumulation-too-large.yaml", "less than or equal to 1000000", 2, "training.gradient_accumulation_steps",
        "at most 1000000"),
    Bad("epochs-1e308.yaml", "Input should be less than or equal to 100000", 2, "training.num_train_epochs",
        "takes a number at most 100000", cli=True),
    Bad("epochs-inf.yaml", "Input should be a finite number", 2, "training.num_train_epochs", "not inf or nan"),
    Bad("learning-rate-nan.yaml", "Input should be a finite number", 2, "training.learning_rate", "not inf or nan"),
    Bad("seed-too-large.yaml", "less than or equal to 4294967295", 2, "training.seed", "below 2**32"),
]

DATA = [
    Bad("mismatched-columns.csv", "this row has 3 fields, the header has 2", 3, None, "quote fields", cli=True),
    Bad("unclosed-quote.csv", "not valid CSV: unexpected end of data", 3, None, "starts on line 3 is never closed",
        cli=True),
    Bad("stray-quote.csv", "not valid CSV: ',' expected after '\"'", 2, None, "written twice"),
    Bad("duplicate-header.csv", "empty or repeated column names", 1, None, "name every column once"),
    Bad("empty-header.csv", "empty or repeated column names", 1, None, "name every column once"),
    Bad("latin1.jsonl", "not UTF-8 text (byte 28)", 2, None, "iconv -f latin1", task="pretrain", cli=True),
    Bad("utf16-bom.jsonl", "this file is UTF-16 text", None, None, "iconv -f UTF-16 -t UTF-8", cli=True),
    Bad("utf16le-no-bom.csv", "looks like UTF-16 text", None, None, "iconv -f UTF-16LE"),
    Bad("binary.jsonl", "this is a binary file", None, None, ".parquet", cli=True),
    Bad("empty.jsonl", "the dataset file is empty", None, None, "add records", cli=True),
    Bad("whitespace.jsonl", "the dataset file is empty", None, None, "add records"),
    Bad("bad-json-line.jsonl", "not valid JSON: Expecting property name enclosed in double quotes (column 22)", 3,
        None, "one complete JSON object", cli=True),
    Bad("unknown-role.jsonl", "messages[1] has an unknown role 'bot'", 1, "messages[1].role", "roles are",
        cli=True),
    Bad("role-not-text.jsonl", "messages[0] has an unknown role ['user']", 1, "messages[0].role", "roles are"),
    Bad("no-assistant.jsonl", "no assistant message to learn from", 1, "messages", "at least one assistant"),
    Bad("one-label.jsonl", "at least two labels; every row is 'x'", None, "label", task="classification"),
    Bad("missing-label.jsonl", "this classification record lacks label/labels/category/class; it has text", 2,
        "label", "data.columns.label",
        task="classification", cli=True),
    Bad("nan-label.jsonl", "'label' is empty", 1, "label", task="classification"),
    Bad("not-an-array.json", "a .json dataset is an array of records", 1, None, "JSON Lines"),
    Bad("trailing-garbage.json", "unexpected text after the JSON array's closing ]", 4, None, "one array",
        cli=True),
    Bad("unclosed-array.json", "the JSON array is not closed", 4, None, "end the file with ]"),
    Bad("deep-nesting.jsonl", "nested too deeply", 1, None, task="pretrain"),
    Bad("huge-integer.jsonl", "Exceeds the limit (4300 digits)", 1, None, task="pretrain"),
    Bad("record-not-object.jsonl", "a record should be an object, not a list", 1, None),
    Bad("lone-surrogate.jsonl", "not valid text (a lone \\u surrogate", 1, "text", task="pretrain"),
    Bad("cannot-tell-format.jsonl", "cannot tell the format", 1, None, "data.columns", cli=True),
    Bad("empty-output.jsonl", "'output' is empty", 1, "output", "fill in the field"),
]
# Files that load fine on their own; their cases are below (labels across files, chat template).
GOOD_ALONE = {"train-labels.jsonl", "validation-unknown-label.jsonl", "chat.jsonl"}


def where(case: Bad, path: Path) -> str:
    return UserError("", file=path, line=case.line, field=case.field).where


def test_every_corpus_file_has_a_case():
    assert {p.name for p in CORPUS.iterdir()} == {"profiles", "data", "messages.json"}
    profiles = {p.name for p in (CORPUS / "profiles").iterdir()}
    data = {p.name for p in (CORPUS / "data").iterdir()}
    assert profiles == {c.file for c in PROFILES}
    assert data == {c.file for c in DATA} | GOOD_ALONE
    assert len(PROFILES) + len(DATA) >= 40


def assert_error(error: UserError, case: Bad, path: Path, kind: str) -> None:
    assert error.kind == kind
    assert error.file == str(path)
    assert case.message in error.message, error.message
    assert (error.line, error.field) == (case.line, case.field), str(error)
    if case.hint is not None:
        assert case.hint in (error.hint or ""), error.hint


@pytest.mark.parametrize("case", PROFILES, ids=lambda c: c.file)
def test_profile_refused(case):
    path = CORPUS / "profiles" / case.file
    with pytest.raises(UserError) as info:
        load_profile(path)
    assert_error(info.value, case, path, "profile")


@pytest.mark.parametrize("case", DATA, ids=lambda c: c.file)
def test_dataset_refused(case):
    path = CORPUS / "data" / case.file
    with pytest.raises(UserError) as info:
        load_dataset_file(path, task=case.task)
    assert_error(info.value, case, path, "data")


def test_find_problems_includes_what_the_runner_raises_on_every_corpus_file():
    for case in DATA:
        path = CORPUS / "data" / case.file
        with pytest.raises(UserError) as first:
            load_dataset_file(path, task=case.task)
        found = find_problems(path, task=case.task)
        assert found.total >= 1, case.file
        as_raised = (first.value.line, first.value.field, first.value.message, first.value.hint)
        assert as_raised in [(p.line, p.field, p.message, p.hint) for p in found.problems], case.file


MESSAGES = CORPUS / "messages.json"


def _refusal(kind: str, case: Bad) -> dict:
    path = CORPUS / kind / case.file
    with pytest.raises(UserError) as info:
        load_profile(path) if kind == "profiles" else load_dataset_file(path, task=case.task)
    error = info.value
    return {"message": error.message.replace(str(CORPUS), "<corpus>"),
            "hint": error.hint.replace(str(CORPUS), "<corpus>") if error.hint else None,
            "line": error.line, "field": error.field}


def test_exact_messages_of_the_corpus():
    found = {f"{kind}/{case.file}": _refusal(kind, case)
             for kind, cases in (("profiles", PROFILES), ("data", DATA)) for case in cases}
    if os.environ.get("TUIWIZ_UPDATE_CORPUS"):
        MESSAGES.write_text(json.dumps(found, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        pytest.fail(f"rewrote {MESSAGES.name}: review its diff, then run without TUIWIZ_UPDATE_CORPUS")
    expected = json.loads(MESSAGES.read_text(encoding="utf-8"))
    assert sorted(found) == sorted(expected)
    for name in sorted(found):
        assert found[name] == expected[name], name


# --- through the real CLI ------------------------------------------------------------


def assert_refused_cleanly(result, expected: list[str], tmp_path: Path, before: set[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == before, "a file or folder was written"
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.tmp"))
    assert not (Path(os.environ["TUIWIZ_STATE_DIR"]) / "runs.txt").exists(), "a run was registered"


@pytest.mark.slow  # a fresh interpreter a case; the in-process tests above pin the same messages
@pytest.mark.parametrize("case", [c for c in PROFILES if c.cli], ids=lambda c: c.file)
def test_cli_refuses_bad_profile(tmp_path, case):
    path = tmp_path / case.file
    shutil.copyfile(CORPUS / "profiles" / case.file, path)
    before = {path.name}
    for args in (("profile", "validate", path), ("--profile", path)):
        result = run_cli(*args, cwd=tmp_path)
        assert_refused_cleanly(result, [f"error: {where(case, path)}: {case.message}"], tmp_path, before)
    assert not (tmp_path / "PWNED").exists()


def _data_profile(tmp_path: Path, data_file: str, task: str, extra: str = "") -> Path:
    profile = tmp_path / "p.yaml"
    profile.write_text(f"task: {task}\nmodel:\n  name_or_path: demo\ndata:\n  path: {data_file}\n{extra}"
                       "training:\n  max_steps: 1\noutput:\n  runs_dir: runs\n")
    return profile


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in DATA if c.cli], ids=lambda c: c.file)
def test_cli_refuses_bad_dataset(tmp_path, case):
    path = tmp_path / case.file
    shutil.copyfile(CORPUS / "data" / case.file, path)
    profile = _data_profile(tmp_path, case.file, case.task)
    result = run_cli("--profile", profile, cwd=tmp_path)
    assert_refused_cleanly(result, [f"error: {where(case, path)}: {case.message}"], tmp_path,
                           {path.name, profile.name})


# --- generated: too big to commit, or measured ---------------------------------------


def test_ten_megabyte_single_line_profile_is_refused_at_once(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("model:\n  name_or_path: " + "x" * 10_000_000)
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        load_profile(path)
    assert time.monotonic() - started < 2
    assert "this file is 9.5 MiB; a profile is a few hundred bytes" in info.value.message
    with pytest.raises(UserError, match="a profile is a few hundred bytes"):
        parse_profile_text(path.read_text())
    result = run_cli("profile", "validate", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "a profile is a few hundred bytes" in result.stderr


def test_ten_megabyte_single_line_datasets(tmp_path):
    # A long cell is a dataset's business: CSV's 128 KiB cell limit is lifted.
    csv_file = tmp_path / "big.csv"
    csv_file.write_text("text\n" + "y" * 10_000_000 + "\n")
    assert len(load_dataset_file(csv_file, task="pretrain").records[0]["text"]) == 10_000_000
    # A 10 MB line that never closes its string is refused, naming the line.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": "' + "z" * 10_000_000 + "\n")
    with pytest.raises(UserError) as info:
        load_dataset_file(broken, task="pretrain")
    assert info.value.line == 2 and "Unterminated string" in info.value.message


def test_yaml_bomb_fails_fast_in_little_memory():
    text = (CORPUS / "profiles" / "yaml-bomb.yaml").read_text()
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(UserError, match="expands to more than"):
            parse_profile_text(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_aliases_within_bounds_still_work():
    text = "method:\n  type: lora\n  target_modules: &t [q_proj, v_proj]\n  modules_to_save: *t\n"
    assert parse_profile_text(text).method.modules_to_save == ["q_proj", "v_proj"]
    merged = "method:\n  <<: &base {type: lora, r: 4}\n  lora_alpha: 8\n"
    profile = parse_profile_text(merged)
    assert (profile.method.r, profile.method.lora_alpha) == (4, 8)


# --- across files: labels, chat template ----------------------------------------------


def test_validation_label_outside_the_training_labels():
    train = load_dataset_file(CORPUS / "data" / "train-labels.jsonl", task="classification")
    validation_path = CORPUS / "data" / "validation-unknown-label.jsonl"
    evaluation = load_dataset_file(validation_path, task="classification", evaluation=True)
    with pytest.raises(UserError) as info:
        check_validation_labels(train, evaluation)
    error = info.value
    assert error.message == "label 'neutral' is not among the training labels (neg, pos)"
    assert (error.file, error.line, error.field) == (str(validation_path), 2, "label")
    assert "train-labels.jsonl" in error.hint
    check_validation_labels(train, train)  # the same labels pass


def test_a_validation_file_may_hold_a_single_label(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "pos"}\n')
    with pytest.raises(UserError, match="at least two labels"):
        load_dataset_file(path, task="classification")
    assert load_dataset_file(path, task="classification", evaluation=True).labels == ("pos",)


@pytest.fixture(scope="module")
def model_without_chat_template(tmp_path_factory):
    from tuiwiz.demo.build import ensure_demo_model

    demo = ensure_demo_model()
    copy = tmp_path_factory.mktemp("models") / "no-template"
    shutil.copytree(demo, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config_file = copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    return demo, copy


def test_chat_data_for_a_model_without_chat_template(model_without_chat_template):
    from tuiwiz.run.preflight import check_chat_template

    demo, bare = model_without_chat_template
    chat = load_dataset_file(CORPUS / "data" / "chat.jsonl")
    check_chat_template(chat, demo)  # the demo model has one
    with pytest.raises(UserError) as info:
        check_chat_template(chat, bare)
    error = info.value
    assert f"holds chat messages, but the model in {bare} has no chat template" in error.message
    assert (error.file, error.field, error.kind) == (chat.path, "data.path", "data")
    assert "convert the data to alpaca" in error.hint
    alpaca = load_dataset_file(CORPUS / "data" / "train-labels.jsonl", task="pretrain")
    check_chat_template(alpaca, bare)  # only chat data needs a template
    # A template kept in tokenizer_config.json counts as much as chat_template.jinja.
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config["chat_template"] = (demo / "chat_template.jinja").read_text()
    keep = bare.parent / "inline-template"
    shutil.copytree(bare, keep)
    (keep / "tokenizer_config.json").write_text(json.dumps(config))
    check_chat_template(chat, keep)


def test_launch_preflight_refuses_unknown_validation_label(tmp_path):
    from tuiwiz.run.preflight import preflight

    for name in ("train-labels.jsonl", "validation-unknown-label.jsonl"):
        shutil.copyfile(CORPUS / "data" / name, tmp_path / name)
    profile = _data_profile(tmp_path, "train-labels.jsonl", "classification",
                            "  validation_path: validation-unknown-label.jsonl\n")
    try:
        preflight(load_profile(profile))
    except UserError as exc:
        assert "'neutral' is not among the training labels" in exc.message
    else:
        raise AssertionError("preflight let an unknown validation label through")


def test_launch_preflight_refuses_chat_data_without_template(tmp_path, model_without_chat_template):
    from tuiwiz.run.preflight import preflight

    _, bare = model_without_chat_template
    shutil.copyfile(CORPUS / "data" / "chat.jsonl", tmp_path / "chat.jsonl")
    profile = _data_profile(tmp_path, "chat.jsonl", "sft")
    profile.write_text(profile.read_text().replace("name_or_path: demo", f"name_or_path: {bare}"))
    try:
        preflight(load_profile(profile))
    except UserError as exc:
        assert "has no chat template" in exc.message
    else:
        raise AssertionError("preflight let chat data through for a model without a chat template")
