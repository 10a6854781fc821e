"""Bad datasets and model paths: one clear message naming file, line and field; exit 2; no run left behind."""

import json

import pytest

from tuiwiz.data.datasets import load_dataset_file, split_validation
from tuiwiz.errors import UserError
from tuiwiz.profile.schema import ColumnsConfig

from .support.processes import run_cli

LONG = "word " * 300

BAD_DATA = [
    # (file name, content, task, line, field, message fragment, hint fragment)
    ("a.jsonl", '{"instruction": "hi", "output": "yo"}\n{"instruction": oops}\n', "sft", 2, None,
     "not valid JSON", "one complete JSON object"),
    ("a.jsonl", "", "sft", None, None, "the dataset file is empty", "add records"),
    ("a.jsonl", "\n\n   \n", "sft", None, None, "the dataset file is empty", None),
    ("a.jsonl", '{"question2": "hi", "output": "yo"}\n', "sft", 1, None, "cannot tell the format",
     "data.columns"),
    ("a.jsonl", '{"instruction": "hi", "output": "yo"}\n{"instruction": "hi"}\n', "sft", 2, "output",
     "lacks output", "data.columns.output"),
    ("a.jsonl", '{"instruction": "hi", "output": ""}\n', "sft", 1, "output", "'output' is empty", None),
    ("a.jsonl", '[1, 2]\n', "sft", 1, None, "not a list", None),
    ("a.jsonl", '{"messages": [{"role": "wizard", "content": "x"}]}\n', "sft", 1, "messages[0].role",
     "unknown role 'wizard'", "roles are"),
    ("a.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', "sft", 1, "messages",
     "no assistant message", None),
    ("a.jsonl", '{"messages": "hello"}\n', "sft", 1, "messages", "non-empty list of messages", None),
    ("a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "classification", None, "label",
     "at least two labels", None),
    ("a.jsonl", '{"text": "a"}\n', "classification", 1, None, "text and label", None),
    ("a.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": 3,\n', "sft", None, None,
     "not valid JSON", None),
    ("a.json", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "sft", 2, "output", "lacks output",
     None),
    ("a.json", '"just a string"', "sft", 1, None, "array of records", None),
    ("a.csv", "instruction,output\nhi,yo\nthree,fields,here\n", "sft", 3, None, "has 3 fields, the header has 2",
     "quote fields"),
    ("a.csv", "instruction,instruction\nhi,yo\n", "sft", 1, None, "repeated column names", None),
    ("a.tsv", "text\tlabel\nhello\n", "classification", 2, None, "has 1 fields, the header has 2", None),
    ("a.jsonl", None, "sft", None, None, "no such dataset file", "relative paths"),
]


@pytest.mark.parametrize("name,content,task,line,field,message,hint", BAD_DATA)
def test_bad_datasets_name_file_line_field(tmp_path, name, content, task, line, field, message, hint):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_dataset_file(path, task=task)
    error = info.value
    assert error.file == str(path)
    assert error.kind == "data"
    assert message in error.message, error.message
    if line is not None:
        assert error.line == line
    if field is not None:
        assert error.field == field
    if hint is not None:
        assert hint in (error.hint or "")


def test_binary_and_wrong_encoding(tmp_path):
    garbage = tmp_path / "g.jsonl"
    garbage.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(UserError, match="binary file"):
        load_dataset_file(garbage)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError) as info:
        load_dataset_file(latin, task="pretrain")
    assert info.value.line == 2 and "UTF-8" in info.value.message


def test_json_array_records_keep_their_line_numbers(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n\n  {"instruction": "c",\n   "output": "d"}\n]\n')
    data = load_dataset_file(path)
    assert data.format == "alpaca" and data.source_lines == [2, 4]


def test_sniffing_and_column_mapping(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,extra\nWhy?,Because.,x\n")
    data = load_dataset_file(path)
    assert data.format == "alpaca"
    assert data.records[0]["instruction"] == "Why?" and data.records[0]["output"] == "Because."
    mapped = tmp_path / "m.jsonl"
    mapped.write_text(json.dumps({"q": "Why?", "a": "Because."}) + "\n")
    data = load_dataset_file(mapped, columns=ColumnsConfig(instruction="q", output="a"))
    assert data.records[0] == {"instruction": "Why?", "output": "Because.", "input": "", "system": ""}
    sharegpt = tmp_path / "s.jsonl"
    sharegpt.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                                      {"from": "gpt", "value": "hello"}]}) + "\n")
    data = load_dataset_file(sharegpt)
    assert data.format == "messages"
    assert data.records[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_parquet_and_limit_and_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(50)], "label": [i % 3 for i in range(50)]}), path)
    data = load_dataset_file(path, task="classification", limit=40)
    assert len(data) == 40 and data.labels == ("0", "1", "2")
    train, held = split_validation(data, 0.1, seed=1)
    assert len(held) == 4 and len(train) == 36
    assert not {r["text"] for r in held.records} & {r["text"] for r in train.records}
    assert split_validation(data, 0.1, seed=1)[1].records == held.records  # seeded


def test_ten_megabyte_single_line(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "x" * 10_000_000}) + "\n")
    assert len(load_dataset_file(path, task="pretrain").records[0]["text"]) == 10_000_000


def _profile(tmp_path, data_line: str, model_line: str = "") -> str:
    path = tmp_path / "p.yaml"
    path.write_text(f"{model_line}data:\n  {data_line}\n  max_length: 64\ntraining:\n  max_steps: 2\n"
                    f"output:\n  runs_dir: runs\n")
    return path


CLI_CASES = [
    # (dataset content or None, model line, message fragment)
    ('{"instruction": "hi", "output": "yo"}\n{"instruction": oops}\n', "", "d.jsonl:2: not valid JSON"),
    (None, "", "d.jsonl: no such dataset file"),
    ('{"instruction": "hi", "output": "yo"}\n', "model:\n  name_or_path: ./nomodel\n", "has no config.json"),
    ('{"instruction": "hi", "output": "yo"}\n', "model:\n  name_or_path: ./absent\n", "does not exist"),
    ("".join(json.dumps({"instruction": LONG, "output": "ok"}) + "\n" for _ in range(5)), "",
     "data.max_length: every example's prompt is at least data.max_length=64 tokens"),
]


@pytest.mark.slow  # the real CLI, a fresh interpreter a case
@pytest.mark.parametrize("content,model_line,message", CLI_CASES)
def test_cli_refuses_bad_input_with_exit_2_and_no_run(tmp_path, content, model_line, message):
    (tmp_path / "nomodel").mkdir()
    if content is not None:
        (tmp_path / "d.jsonl").write_text(content)
    if "max_length" in message:  # needs the demo's tokenizer
        run_cli("demo")
    profile = _profile(tmp_path, "path: d.jsonl", model_line)
    result = run_cli("--profile", profile, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("long_rows,short_rows,refused", [(20, 0, True), (20, 1, False), (0, 30, False)])
def test_preflight_refuses_prompts_that_fill_max_length_only_when_every_one_does(
        tmp_path, monkeypatch, demo_built, long_rows, short_rows, refused):
    """The preflight looks at the first rows' prompts before the whole set: a set whose first 16 prompts
    (and more) are too long but one later row fits passes; a set where none fits is refused, naming the
    field and the file."""
    from tuiwiz.demo.build import demo_model_dir
    from tuiwiz.profile.schema import Profile
    from tuiwiz.run import preflight

    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(demo_built))
    assert long_rows == 0 or long_rows > preflight.PROMPTS_FIRST  # the later row lies past the first look
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": LONG, "output": "ok"}] * long_rows + [{"instruction": "hi", "output": "ok"}] * short_rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = Profile.model_validate({"model": {"name_or_path": "demo"},
                                      "data": {"path": str(path), "max_length": 64}})
    data = load_dataset_file(path, format="auto", task="sft")
    if refused:
        with pytest.raises(UserError) as caught:
            preflight._check_lengths(profile, data, demo_model_dir())
        assert caught.value.field == "data.max_length" and str(path) in str(caught.value.file)
    else:
        preflight._check_lengths(profile, data, demo_model_dir())
