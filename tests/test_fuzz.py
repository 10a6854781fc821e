"""Property tests: whatever a profile or a dataset holds, the only exception that escapes is UserError.

Inputs: random text, YAML-ish token soup, random nested mappings dumped to YAML, mutations of the
shipped profiles (key typos, value type swaps, lines dropped or re-indented); random bytes,
JSON Lines, JSON arrays and CSV for the dataset readers. Where a load succeeds, its result must
keep its promises (a profile round-trips; records have their format's shape). Examples are
bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tuiwiz.data.datasets import DEFAULT_COLUMNS, load_dataset_file
from tuiwiz.errors import UserError
from tuiwiz.profile.io import dump_profile, parse_profile_text
from tuiwiz.profile.schema import ColumnsConfig, Profile

from .support import PROFILES

# TUIWIZ_FUZZ_EXAMPLES=5000 for a long hunt; the default keeps the file under a minute.
FAST = settings(max_examples=int(os.environ.get("TUIWIZ_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SHIPPED = {p.name: yaml.safe_load(p.read_text()) for p in sorted(PROFILES.glob("*.yaml"))}


def _keys_of(model: type, prefix: str = "") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and hasattr(arg, "model_fields"):
                names |= _keys_of(arg)
    return names


SCHEMA_KEYS = sorted(_keys_of(Profile) | {"model", "data", "method", "training", "output", "r", "type"})


def check_profile_text(text: str) -> None:
    """Parse; a UserError must point inside the text; a success must round-trip."""
    try:
        profile = parse_profile_text(text, file="fuzz.yaml")
    except UserError as error:
        assert error.file == "fuzz.yaml"
        assert error.kind == "profile"
        assert error.message
        if error.line is not None:
            assert 1 <= error.line <= text.count("\n") + 2, (error.line, text)
        str(error)  # renders
        return
    assert parse_profile_text(dump_profile(profile)) == profile


# --- profiles ---------------------------------------------------------------------------


@FAST
@given(st.text(max_size=300))
def test_random_text(text):
    check_profile_text(text)


YAML_TOKENS = st.sampled_from([
    ":", ": ", "- ", "-", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b", "<<: ", "!!str ", "!!int ",
    "!!python/object:os.system ", "!x ", "? ", "|", ">", "'", '"', "#", "\n", "\n  ", "\n    ", "\t", " ",
    "---\n", "...\n", "%YAML 1.1\n", "~", "null", "true", "no", "1", "-1", "0x1f", "1e9", ".nan", ".inf",
    "2024-01-01", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "\\ud800", "\\x00", "\u00e9", "\ufeff",
    *SCHEMA_KEYS,
])


@FAST
@given(st.lists(YAML_TOKENS, max_size=60).map("".join))
@example("!!int ")  # found by this test: PyYAML's int constructor indexes an empty string
@example("\x1f")  # found by test_random_text: PyYAML checks characters when the loader is made
def test_yaml_token_soup(text):
    check_profile_text(text)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(SCHEMA_KEYS),
)
KEYS = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=12), st.integers(-5, 5), st.booleans())
NESTED = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=25,
)


@FAST
@given(st.dictionaries(st.sampled_from(SCHEMA_KEYS + ["version", "task"]), NESTED, max_size=6))
def test_random_nested_mappings(data):
    check_profile_text(yaml.safe_dump(data, allow_unicode=True))


def _typo(key: str, data) -> str:
    kind = data.draw(st.sampled_from(["drop", "double", "swap", "case", "space"]))
    i = data.draw(st.integers(0, max(0, len(key) - 1)))
    if kind == "drop":
        return key[:i] + key[i + 1:]
    if kind == "double":
        return key[:i] + key[i:i + 1] * 2 + key[i + 1:]
    if kind == "swap" and len(key) > 1:
        i = min(i, len(key) - 2)
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    if kind == "case":
        return key.upper()
    return key + " "


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))


@FAST
@given(st.sampled_from(sorted(SHIPPED)), st.data())
def test_mutated_shipped_profiles(name, data):
    profile = json.loads(json.dumps(SHIPPED[name]))  # a deep copy
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(profile))
        path = data.draw(st.sampled_from(paths))
        parent = profile
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = data.draw(st.sampled_from(["typo", "swap_type", "delete", "add"]))
        if action == "typo":
            parent[_typo(str(key), data)] = parent.pop(key)
        elif action == "swap_type":
            parent[key] = data.draw(NESTED)
        elif action == "delete":
            del parent[key]
        else:
            parent[data.draw(st.sampled_from(SCHEMA_KEYS))] = data.draw(NESTED)
    check_profile_text(yaml.safe_dump(profile, sort_keys=False))


@FAST
@given(st.sampled_from(sorted(PROFILES.glob("*.yaml"))), st.data())
def test_mutated_shipped_profile_lines(path, data):
    lines = path.read_text().splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "duplicate", "indent", "dedent", "tab", "truncate"]))
        if action == "drop":
            lines.pop(i)
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "indent":
            lines[i] = "  " + lines[i]
        elif action == "dedent":
            lines[i] = lines[i].lstrip()
        elif action == "tab":
            lines[i] = "\t" + lines[i]
        else:
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
        if not lines:
            break
    check_profile_text("\n".join(lines) + "\n")


# --- datasets ---------------------------------------------------------------------------

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
TASKS = ("sft", "pretrain", "classification")
FORMATS = ("auto", "alpaca", "messages", "text", "classification")
COLUMN_NAMES = sorted({name for names in DEFAULT_COLUMNS.values() for name in names} | {"role", "from", "value"})

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                         st.text(max_size=15))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(COLUMN_NAMES), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries({
    "role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "bot"]), JSON_VALUES),
    "content": st.one_of(st.text(max_size=10), JSON_SCALARS),
})
RECORD = st.dictionaries(
    st.sampled_from(COLUMN_NAMES),
    st.one_of(JSON_SCALARS, st.lists(MESSAGE, max_size=4), JSON_VALUES),
    max_size=5,
)
OPTIONS = st.fixed_dictionaries({
    "task": st.sampled_from(TASKS),
    "format": st.sampled_from(FORMATS),
    "limit": st.one_of(st.none(), st.integers(1, 5)),
    "columns": st.one_of(st.just(None), st.builds(ColumnsConfig, instruction=st.sampled_from([None, "q", "prompt"]),
                                                  label=st.sampled_from([None, "y", "class"]))),
})

_DIR = tempfile.TemporaryDirectory(prefix="tuiwiz-fuzz-")


def _file(suffix: str, content: bytes) -> Path:
    path = Path(_DIR.name) / f"data{suffix}"
    path.write_bytes(content)
    return path


def check_dataset(path: Path, options: dict) -> None:
    """Load; a UserError names the file; a success keeps its format's shape."""
    try:
        data = load_dataset_file(path, **options)
    except UserError as error:
        assert error.kind == "data" and error.message
        assert error.file == str(path)
        str(error)
        return
    assert data.records and len(data.records) == len(data.source_lines)
    for record in data.records:
        if data.format == "alpaca":
            assert set(record) == {"instruction", "input", "output", "system"}
            assert record["instruction"].strip() and record["output"].strip()
        elif data.format == "messages":
            assert record["messages"] and any(m["role"] == "assistant" for m in record["messages"])
            assert all(m["role"] in ("system", "user", "assistant", "tool") for m in record["messages"])
        elif data.format == "text":
            assert set(record) == {"text"} and record["text"].strip()
        else:
            assert set(record) == {"text", "label"} and record["label"] in data.labels
        for value in json.loads(json.dumps(record)).values():  # strings that JSON and UTF-8 can hold
            (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")


@FAST
@given(st.sampled_from(SUFFIXES), st.binary(max_size=400), OPTIONS)
def test_random_bytes(suffix, content, options):
    check_dataset(_file(suffix, content), options)


@FAST
@given(st.lists(st.one_of(RECORD.map(json.dumps), JSON_VALUES.map(json.dumps), st.text(max_size=20)), max_size=8),
       OPTIONS)
def test_random_json_lines(lines, options):
    check_dataset(_file(".jsonl", "\n".join(lines).encode("utf-8", "surrogatepass")), options)


@FAST
@given(st.lists(RECORD, max_size=6), st.sampled_from(["array", "wrapped", "mangled"]), st.data(), OPTIONS)
def test_random_json_arrays(records, shape, data, options):
    indent = data.draw(st.sampled_from([None, 2]))
    text = json.dumps(records if shape != "wrapped" else {"data": records}, indent=indent)
    if shape == "mangled" and text:
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut] + data.draw(st.sampled_from(["", ",", "]", "}", "\n", "x", '"'])) + text[cut:]
    check_dataset(_file(".json", text.encode("utf-8", "surrogatepass")), options)


CELL = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", '"', '""', ",", "\t", "\n", "\r\n", "1", "1.0"]))


@FAST
@given(st.lists(st.sampled_from(COLUMN_NAMES + ["", "x"]), min_size=1, max_size=4),
       st.lists(st.lists(CELL, max_size=5), max_size=6), st.sampled_from([",", "\t"]),
       st.booleans(), OPTIONS)
def test_random_csv(header, rows, delimiter, raw, options):
    if raw:  # cells joined without quoting: broken quotes, stray delimiters
        text = "\n".join(delimiter.join(r) for r in [header, *rows])
    else:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=delimiter).writerows([header, *rows])
        text = buffer.getvalue()
    check_dataset(_file(".tsv" if delimiter == "\t" else ".csv", text.encode("utf-8", "surrogatepass")), options)


@FAST
@given(st.lists(RECORD, min_size=1, max_size=6), OPTIONS)
def test_random_parquet(records, options):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in records]
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        assume(False)
    path = Path(_DIR.name) / "data.parquet"
    pq.write_table(table, path)
    check_dataset(path, options)
