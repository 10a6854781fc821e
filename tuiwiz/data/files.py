"""A dataset file's raw rows with their line numbers: UTF-8 text (a wrong encoding is named, not
guessed), then JSON, JSONL, CSV/TSV or Parquet. Bad files raise UserError naming the file and line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.text_files import decode_text, read_file_bytes


def data_error(message: str, path: Path | str, line: int | None = None, field: str | None = None,
           hint: str | None = None) -> UserError:
    return UserError(message, hint=hint, file=path, line=line, field=field, kind="data")


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


def jsonl_rows(path: Path, text: str) -> list[tuple[int, object]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, _json_value(json.loads, line)))
        except _BadJSON as exc:
            raise data_error(exc.message, path, number,
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
                return jsonl_rows(path, text)
            raise data_error(exc.message, path, exc.lineno or 1) from None
        if isinstance(whole, dict):
            lists = [key for key, value in whole.items() if isinstance(value, list)]
            if len(lists) == 1:
                return [(1, item) for item in whole[lists[0]]]
        raise data_error("a .json dataset is an array of records", path, 1,
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
            raise data_error("the JSON array is not closed", path, line, hint="end the file with ]")
        if text[position] == "]":
            break
        try:
            item, position = _json_value(decoder.raw_decode, text, position)
        except _BadJSON as exc:
            raise data_error(exc.message, path, exc.lineno or line) from None
        rows.append((line, item))
    rest = text[position + 1:]
    if rest.strip():
        line += text.count("\n", counted, position + 1 + len(rest) - len(rest.lstrip()))
        raise data_error("unexpected text after the JSON array's closing ]", path, line,
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
        return data_error(f"not valid CSV: {exc}", path, start, hint=hint)

    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise bad_csv(exc) from None
    header = [name.strip() for name in header]
    if len(set(header)) != len(header) or not all(header):
        raise data_error("the header row has empty or repeated column names", path, 1, hint="name every column once")
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
            raise data_error(
                f"this row has {len(values)} fields, the header has {len(header)}", path, start,
                hint="quote fields that contain the delimiter or line breaks",
            )
        rows.append((start, dict(zip(header, values))))
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, object]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise data_error("reading Parquet needs pyarrow", path, hint="pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise data_error(f"not a readable Parquet file: {exc}", path) from None
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def read_rows(path: Path) -> list[tuple[int, object]]:
    """The raw rows of a data file with their line numbers. Raises UserError."""
    if not path.exists():
        raise data_error("no such dataset file", path,
                         hint="check data.path; relative paths start at the profile's folder")
    if path.is_dir():
        raise data_error("this is a folder, not a dataset file", path,
                         hint="name a .jsonl, .json, .csv or .parquet file")
    if not path.is_file():
        raise data_error("this is not a regular file (a device or a pipe)", path, hint="name a dataset file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    text = decode_text(read_file_bytes(path), path)
    if not text.strip():
        raise data_error("the dataset file is empty", path, hint="add records, one per line for .jsonl")
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _json_rows(path, text)
    return jsonl_rows(path, text)
