"""Reading datasets: JSON, JSONL, CSV, TSV and Parquet files, sniffed and normalised.

Every record becomes one of four shapes, whatever the file's column names:

- alpaca: ``{"instruction", "input", "output", "system"}``
- messages: ``{"messages": [{"role", "content"}, ...]}`` (ShareGPT's from/value too)
- text: ``{"text"}``
- classification: ``{"text", "label"}`` (labels as strings)

Bad data raises ``UserError`` naming the file, the line (or row) and the field.
No torch, no ``datasets`` here: the wizard reads files through this module too.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import UserError

FORMATS = ("alpaca", "messages", "text", "classification")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user",
                  "assistant": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}

# Column names recognised without a mapping, first match wins.
DEFAULT_COLUMNS = {
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "completion"),
    "system": ("system", "system_prompt"),
    "messages": ("messages", "conversations", "conversation"),
    "text": ("text", "content", "sentence"),
    "label": ("label", "labels", "category", "class"),
}
NEEDED = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "text": ("text",),
    "classification": ("text", "label"),
}


@dataclass(frozen=True)
class ColumnMap:
    """The user's column names (``data.columns`` in a profile); None means the defaults."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    system: str | None = None
    messages: str | None = None
    text: str | None = None
    label: str | None = None

    def find(self, role: str, keys: list[str]) -> str | None:
        """The column of ``keys`` that plays ``role``."""
        chosen = getattr(self, role)
        if chosen is not None:
            return chosen if chosen in keys else None
        return next((name for name in DEFAULT_COLUMNS[role] if name in keys), None)


@dataclass(frozen=True)
class LoadedData:
    path: str
    format: str
    records: list[dict]
    source_lines: list[int]  # the line (JSON, JSONL, CSV) or row (Parquet) of each record
    labels: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records)


def _error(message: str, path: Path | str, line: int | None = None, field: str | None = None,
           hint: str | None = None) -> UserError:
    return UserError(message, hint=hint, file=path, line=line, field=field, kind="data")


# --- reading rows ----------------------------------------------------------------

_UTF16_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
               b"\xfe\xff": "UTF-16"}


def _utf16_without_bom(sample: bytes) -> bool:
    """ASCII text saved as UTF-16: a zero byte in nearly every other position, and only there."""
    if len(sample) < 8:
        return False
    even, odd = sample[0::2], sample[1::2]
    return any(half.count(0) > 0.9 * len(half) and other.count(0) == 0
               for half, other in ((even, odd), (odd, even)))


def read_file_bytes(path: Path, kind: str = "data") -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read this file: {exc.strerror or exc}", file=path, kind=kind,
                        hint="check the file's permissions") from None


def decode_text(raw: bytes, path: Path | str, *, kind: str = "data",
                what: str = "JSON, JSONL or CSV text") -> str:
    """UTF-8 text (a BOM is skipped), or a UserError that names the encoding the file has.

    UTF-16 is refused rather than guessed: without a BOM it cannot be told apart reliably,
    and every other tool in the chain (tokenizers, the hub) expects UTF-8.
    """
    def refuse(message: str, line: int | None = None, hint: str | None = None) -> UserError:
        return UserError(message, hint=hint, file=path, line=line, kind=kind)

    head = raw[:4]
    for bom, name in _UTF16_BOMS.items():
        if head.startswith(bom):
            raise refuse(f"this file is {name} text (it starts with a {name} byte-order mark); tuiwiz reads UTF-8",
                         hint=f"convert it: iconv -f {name} -t UTF-8 FILE > NEW (or save as UTF-8 in your editor)")
    sample = raw[:65536]
    if _utf16_without_bom(sample):
        raise refuse("this file looks like UTF-16 text (a zero byte after every character); tuiwiz reads UTF-8",
                     hint="convert it: iconv -f UTF-16LE -t UTF-8 FILE > NEW")
    if b"\x00" in sample:
        raise refuse(f"this is a binary file, not {what}",
                     hint="give a .json, .jsonl, .csv, .tsv or .parquet file" if kind == "data" else None)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise refuse(f"not UTF-8 text (byte {exc.start})", line,
                     hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW)") from None


class _BadJSON(Exception):
    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno  # in the decoded string, where the json module knows it


def _json_value(decode, *args):
    """``decode(*args)``, with every way the json module fails turned into _BadJSON."""
    try:
        return decode(*args)
    except json.JSONDecodeError as exc:
        raise _BadJSON(f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise _BadJSON("not valid JSON here: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise _BadJSON(f"not valid JSON here: {exc}".split(";")[0]) from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, object]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, _json_value(json.loads, line)))
        except _BadJSON as exc:
            raise _error(exc.message, path, number,
                         hint="each line of a .jsonl file is one complete JSON object") from None
    return rows


def _json_rows(path: Path, text: str) -> list[tuple[int, object]]:
    """A JSON array of records, with the line each record starts on."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        try:
            whole = _json_value(json.loads, text)
        except _BadJSON as exc:
            if exc.message.startswith("not valid JSON: Extra data"):  # JSON Lines saved as .json
                return _jsonl_rows(path, text)
            raise _error(exc.message, path, exc.lineno or 1) from None
        if isinstance(whole, dict):
            lists = [key for key, value in whole.items() if isinstance(value, list)]
            if len(lists) == 1:
                return [(1, item) for item in whole[lists[0]]]
        raise _error("a .json dataset is an array of records", path, 1,
                     hint='write [{"instruction": ..., "output": ...}, ...] or use JSON Lines')
    rows = []
    position = start + 1
    line, counted = 1, 0  # line number at text[counted]; counted forward only (a big array stays linear)
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        line += text.count("\n", counted, position)
        counted = position
        if position >= len(text):
            raise _error("the JSON array is not closed", path, line, hint="end the file with ]")
        if text[position] == "]":
            break
        try:
            item, position = _json_value(decoder.raw_decode, text, position)
        except _BadJSON as exc:
            raise _error(exc.message, path, exc.lineno or line) from None
        rows.append((line, item))
    rest = text[position + 1:]
    if rest.strip():
        line += text.count("\n", counted, position + 1 + len(rest) - len(rest.lstrip()))
        raise _error("unexpected text after the JSON array's closing ]", path, line,
                     hint="a .json dataset is one array; remove what follows it")
    return rows


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, object]]:
    # A long text cell is normal in a dataset: lift the csv module's 128 KiB cell limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1

    def bad_csv(exc: csv.Error) -> UserError:
        hint = None
        if "end of data" in str(exc):
            hint = f"a quoted field that starts on line {start} is never closed with a \""
        elif "expected after" in str(exc):
            hint = 'a quote inside a quoted field is written twice: "say ""hi"""'
        return _error(f"not valid CSV: {exc}", path, start, hint=hint)

    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise bad_csv(exc) from None
    header = [name.strip() for name in header]
    if len(set(header)) != len(header) or not all(header):
        raise _error("the header row has empty or repeated column names", path, 1, hint="name every column once")
    rows = []
    while True:
        start = reader.line_num + 1  # the line a record starts on (a quoted cell may span lines)
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise bad_csv(exc) from None
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise _error(
                f"this row has {len(values)} fields, the header has {len(header)}", path, start,
                hint="quote fields that contain the delimiter or line breaks",
            )
        rows.append((start, dict(zip(header, values))))
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, object]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise _error("reading Parquet needs pyarrow", path, hint="pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise _error(f"not a readable Parquet file: {exc}", path) from None
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def read_rows(path: Path) -> list[tuple[int, object]]:
    """The raw rows of a data file with their line numbers. Raises UserError."""
    if not path.exists():
        raise _error("no such dataset file", path, hint="check data.path; relative paths start at the profile's folder")
    if path.is_dir():
        raise _error("this is a folder, not a dataset file", path, hint="name a .jsonl, .json, .csv or .parquet file")
    if not path.is_file():
        raise _error("this is not a regular file (a device or a pipe)", path, hint="name a dataset file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    text = decode_text(read_file_bytes(path), path)
    if not text.strip():
        raise _error("the dataset file is empty", path, hint="add records, one per line for .jsonl")
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _json_rows(path, text)
    return _jsonl_rows(path, text)


# --- normalising ------------------------------------------------------------------

def sniff_format(keys: list[str], columns: ColumnMap, task: str) -> str | None:
    """The format that a record with these keys has, or None."""
    has = {role: columns.find(role, keys) is not None for role in DEFAULT_COLUMNS}
    if task == "classification":
        return "classification" if has["text"] and has["label"] else None
    if task == "pretrain":
        return "text" if has["text"] else None
    if has["messages"]:
        return "messages"
    if has["instruction"] and has["output"]:
        return "alpaca"
    if has["text"] and not has["label"]:
        return "text"
    return None


def _kind_of(value) -> str:
    """What a JSON-ish value is, in the words a user would use."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number",
            bytes: "binary data"}.get(type(value), f"a {type(value).__name__}")


def _text(value, path, line, field) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise _error(f"'{field}' is empty", path, line, field)
    if isinstance(value, (dict, list, tuple, bytes, bytearray)):
        raise _error(f"'{field}' should be text, not {_kind_of(value)}", path, line, field)
    try:
        text = str(value)
        text.encode("utf-8")
    except (UnicodeEncodeError, ValueError):  # a lone surrogate (JSON "\ud800"); an int too long to print
        raise _error(f"'{field}' holds a value that is not valid text (a lone \\u surrogate escape, or a "
                     "number thousands of digits long)", path, line, field) from None
    if not text.strip():
        raise _error(f"'{field}' is empty", path, line, field, hint="remove the row or fill in the field")
    return text


def _messages(value, path, line, field) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, list) or not value:
        raise _error(f"'{field}' should be a non-empty list of messages", path, line, field,
                     hint='[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _error(f"{where} should be an object with role and content", path, line, where)
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if not isinstance(role, str) or role not in SHAREGPT_ROLES:
            raise _error(f"{where} has an unknown role {role!r}", path, line, f"{where}.role",
                         hint="roles are " + ", ".join(ROLES) + " (ShareGPT's human/gpt work too)")
        if not isinstance(content, str):
            raise _error(f"{where} has no text content", path, line, f"{where}.content")
        content = _text(content, path, line, f"{where}.content") if content.strip() else content
        out.append({"role": SHAREGPT_ROLES[role], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise _error("this conversation has no assistant message to learn from", path, line, field,
                     hint="each conversation needs at least one assistant turn")
    return out


def _normalise(item, fmt: str, columns: ColumnMap, path: Path, line: int) -> dict:
    if not isinstance(item, dict):
        raise _error(f"a record should be an object, not {_kind_of(item)}", path, line)
    keys = list(item)
    col = {role: columns.find(role, keys) for role in DEFAULT_COLUMNS}
    missing = [role for role in NEEDED[fmt] if col[role] is None]
    if missing:
        wanted = ", ".join(getattr(columns, r) or "/".join(DEFAULT_COLUMNS[r]) for r in missing)
        raise _error(
            f"this {fmt} record lacks {wanted}; it has {', '.join(map(str, keys)) or 'no fields'}", path, line,
            field=missing[0], hint=f"map your column with data.columns.{missing[0]}: NAME",
        )
    if fmt == "alpaca":
        record = {"instruction": _text(item[col["instruction"]], path, line, col["instruction"]),
                  "output": _text(item[col["output"]], path, line, col["output"]), "input": "", "system": ""}
        for role in ("input", "system"):
            value = item.get(col[role]) if col[role] else None
            if value not in (None, "") and not (isinstance(value, float) and value != value):
                record[role] = _text(value, path, line, col[role])
        return record
    if fmt == "messages":
        messages = _messages(item[col["messages"]], path, line, col["messages"])
        system = item.get(col["system"]) if col["system"] else None
        if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages}
    if fmt == "text":
        return {"text": _text(item[col["text"]], path, line, col["text"])}
    label = item[col["label"]]
    if isinstance(label, float) and label.is_integer():  # 1.0 from a CSV or pandas is the label "1"
        label = int(label)
    return {"text": _text(item[col["text"]], path, line, col["text"]), "label": _text(label, path, line, col["label"])}


def normalise_rows(rows: list[tuple[int, object]], path: Path | str, *, format: str = "auto",
                   columns: ColumnMap | None = None, task: str = "sft", limit: int | None = None,
                   evaluation: bool = False) -> LoadedData:
    """Sniff the format (unless given) and normalise every row. Raises UserError.

    ``evaluation``: a validation file, whose labels need not number two or more
    (check_validation_labels compares them with the training labels).
    """
    path = Path(path)
    columns = columns or ColumnMap()
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise _error("the dataset has no records", path, hint="add records, or check data.limit")
    first_line, first = rows[0]
    if format == "auto":
        if not isinstance(first, dict):
            raise _error(f"a record should be an object, not {_kind_of(first)}", path, first_line)
        format = sniff_format(list(first), columns, task)
        if format is None:
            expected = {"classification": "text and label", "pretrain": "text"}.get(
                task, "instruction+output (alpaca), messages (chat) or text")
            raise _error(
                f"cannot tell the format: task {task} needs {expected} columns; "
                f"the first record has {', '.join(map(str, first)) or 'no fields'}",
                path, first_line, hint="map your columns under data.columns, or set data.format",
            )
    records = [_normalise(item, format, columns, path, line) for line, item in rows]
    labels: tuple[str, ...] = ()
    if format == "classification":
        labels = tuple(sorted({r["label"] for r in records}))
        if len(labels) < 2 and not evaluation:
            raise _error(f"classification needs at least two labels; every row is '{labels[0]}'", path,
                         field=columns.label or "label")
    return LoadedData(str(path), format, records, [line for line, _ in rows], labels)


def load_dataset_file(path: Path | str, *, format: str = "auto", columns: ColumnMap | None = None,
                      task: str = "sft", limit: int | None = None, evaluation: bool = False) -> LoadedData:
    """Read, sniff and normalise a dataset file. Raises UserError on bad data."""
    path = Path(path)
    return normalise_rows(read_rows(path), path, format=format, columns=columns, task=task, limit=limit,
                          evaluation=evaluation)


def check_validation_labels(train: LoadedData, evaluation: LoadedData, *, label_column: str | None = None) -> None:
    """Every evaluation label must be one the classifier is trained on: its head has no output for others."""
    if train.format != "classification" or evaluation.format != "classification":
        return
    known = set(train.labels)
    for record, line in zip(evaluation.records, evaluation.source_lines):
        if record["label"] not in known:
            raise _error(
                f"label '{record['label']}' is not among the training labels ({', '.join(train.labels)})",
                evaluation.path, line, label_column or "label",
                hint=f"every evaluation label must also occur in the training data ({train.path})",
            )


def load_hub_dataset(name: str, *, revision: str | None = None, split: str = "train", format: str = "auto",
                     columns: ColumnMap | None = None, task: str = "sft", limit: int | None = None,
                     evaluation: bool = False) -> LoadedData:
    """A hub dataset through ``datasets`` (the runner only: it imports the datasets stack)."""
    import datasets

    try:
        table = datasets.load_dataset(name, revision=revision, split=split)
    except Exception as exc:  # offline, missing, gated: all end the same way for the user
        raise UserError(
            f"cannot load the hub dataset '{name}': {exc}", field="data.path", kind="data",
            hint="check the id; offline, it must already be in the Hugging Face cache (HF_HUB_OFFLINE=1)",
        ) from None
    rows = [(i + 1, row) for i, row in enumerate(table)]
    return normalise_rows(rows, f"hub:{name}", format=format, columns=columns, task=task, limit=limit,
                          evaluation=evaluation)


def split_validation(data: LoadedData, fraction: float, seed: int) -> tuple[LoadedData, LoadedData]:
    """A seeded random split; the held-out part has at least one record."""
    order = list(range(len(data.records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * fraction))
    if n_eval >= len(order):
        raise _error(f"validation_split {fraction} leaves no training rows from {len(order)}", data.path,
                     field="data.validation_split", hint="lower data.validation_split or add rows")
    held, kept = sorted(order[:n_eval]), sorted(order[n_eval:])

    def pick(indices: list[int]) -> LoadedData:
        return replace(data, records=[data.records[i] for i in indices],
                       source_lines=[data.source_lines[i] for i in indices])

    return pick(kept), pick(held)

