"""Reading datasets: JSON, JSONL, CSV, TSV and Parquet files, sniffed and normalised.

Every record becomes one of these shapes, whatever the file's column names:

- alpaca: ``{"instruction", "input", "output", "system"}``
- messages: ``{"messages": [{"role", "content"}, ...]}`` (ShareGPT's from/value too)
- text: ``{"text"}``
- classification: ``{"text", "label"}`` (labels as strings)
- preference, unpaired, prompt, seq2seq: the tasks past SFT (tuiwiz.data.preference)

Bad data raises ``UserError`` naming the file, the line (or row) and the field; find_problems
collects every such problem instead (the wizard's Problems view), through the same checks.
No torch, no ``datasets`` here: the wizard reads files through this module too. The
files' raw rows (decoding and parsing) come from data_files.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tuiwiz.data.files import data_error, jsonl_rows, read_rows
from tuiwiz.data.preference import NORMALISERS
from tuiwiz.errors import UserError
from tuiwiz.profile.schema import ColumnsConfig
from tuiwiz.tasks import TASKS
from tuiwiz.text_files import decode_text, read_file_bytes

FORMATS = ("alpaca", "messages", "text", "classification", "preference", "unpaired", "prompt", "seq2seq")
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
    "prompt": ("prompt", "question", "instruction", "query", "problem"),
    "chosen": ("chosen", "chosen_response", "response_chosen"),
    "rejected": ("rejected", "rejected_response", "response_rejected"),
    "completion": ("completion", "response", "output"),
    "answer": ("answer", "solution", "ground_truth", "reference"),
    "source": ("input", "source", "text", "document", "article"),
    "target": ("target", "output", "summary", "translation"),
}
NEEDED = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "text": ("text",),
    "classification": ("text", "label"),
    "preference": ("chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
    "seq2seq": ("source", "target"),
}


EXPECTED = {  # what a task's data needs, as the message for unknown columns says it
    "classification": "text and label", "pretrain": "text",
    "reward": "chosen and rejected (with a prompt, or as conversations)",
    "dpo": "chosen and rejected (with a prompt, or as conversations)",
    "orpo": "chosen and rejected (with a prompt, or as conversations)",
    "simpo": "chosen and rejected (with a prompt, or as conversations)",
    "kto": "prompt, completion and label (true/false), or chosen and rejected",
    "grpo": "prompt (and answer, for exact-answer rewards)", "seq2seq": "input and target",
}


def find_column(columns: ColumnsConfig, role: str, keys: list[str]) -> str | None:
    """The column of ``keys`` that plays ``role``: the one ``data.columns`` names, else a default name."""
    chosen = getattr(columns, role)
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


# --- normalising ------------------------------------------------------------------

def sniff_format(keys: list[str], columns: ColumnsConfig, task: str) -> str | None:
    """The format that a record with these keys has, or None."""
    has = {role: find_column(columns, role, keys) is not None for role in DEFAULT_COLUMNS}
    if task not in ("sft", "pretrain", "classification"):  # the tasks past SFT: the first format that fits
        return next((fmt for fmt in TASKS[task].formats if all(has[role] for role in NEEDED[fmt])), None)
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
        raise data_error(f"'{field}' is empty", path, line, field)
    if isinstance(value, (dict, list, tuple, bytes, bytearray)):
        raise data_error(f"'{field}' should be text, not {_kind_of(value)}", path, line, field)
    try:
        text = str(value)
        text.encode("utf-8")
    except (UnicodeEncodeError, ValueError):  # a lone surrogate (JSON "\ud800"); an int too long to print
        raise data_error(f"'{field}' holds a value that is not valid text (a lone \\u surrogate escape, or a "
                     "number thousands of digits long)", path, line, field) from None
    if not text.strip():
        raise data_error(f"'{field}' is empty", path, line, field, hint="remove the row or fill in the field")
    return text


def _messages(value, path, line, field, need_assistant: bool = True) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, list) or not value:
        raise data_error(f"'{field}' should be a non-empty list of messages", path, line, field,
                     hint='[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise data_error(f"{where} should be an object with role and content", path, line, where)
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if not isinstance(role, str) or role not in SHAREGPT_ROLES:
            raise data_error(f"{where} has an unknown role {role!r}", path, line, f"{where}.role",
                         hint="roles are " + ", ".join(ROLES) + " (ShareGPT's human/gpt work too)")
        if not isinstance(content, str):
            raise data_error(f"{where} has no text content", path, line, f"{where}.content")
        content = _text(content, path, line, f"{where}.content") if content.strip() else content
        out.append({"role": SHAREGPT_ROLES[role], "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise data_error("this conversation has no assistant message to learn from", path, line, field,
                     hint="each conversation needs at least one assistant turn")
    return out


def _normalise(item, fmt: str, columns: ColumnsConfig, path: Path, line: int) -> dict:
    if not isinstance(item, dict):
        raise data_error(f"a record should be an object, not {_kind_of(item)}", path, line)
    keys = list(item)
    col = {role: find_column(columns, role, keys) for role in DEFAULT_COLUMNS}
    missing = [role for role in NEEDED[fmt] if col[role] is None]
    if missing:
        wanted = ", ".join(getattr(columns, r) or "/".join(DEFAULT_COLUMNS[r]) for r in missing)
        raise data_error(
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
    if fmt in NORMALISERS:
        return NORMALISERS[fmt](item, col, path, line, _text, _messages)
    label = item[col["label"]]
    if isinstance(label, float) and label.is_integer():  # 1.0 from a CSV or pandas is the label "1"
        label = int(label)
    return {"text": _text(item[col["text"]], path, line, col["text"]), "label": _text(label, path, line, col["label"])}


def normalise_rows(rows: list[tuple[int, object]], path: Path | str, *, format: str = "auto",
                   columns: ColumnsConfig | None = None, task: str = "sft", limit: int | None = None,
                   evaluation: bool = False, on_problem: Callable[[UserError], None] | None = None) -> LoadedData:
    """Sniff the format (unless given) and normalise every row. Raises UserError.

    ``evaluation``: a validation file, whose labels need not number two or more
    (check_validation_labels compares them with the training labels).
    ``on_problem``: called with each bad record's UserError, which is then left out, instead of
    raising the first (problems of the whole dataset still raise).
    """
    path = Path(path)
    columns = columns or ColumnsConfig()
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise data_error("the dataset has no records", path, hint="add records, or check data.limit")
    first_line, first = rows[0]
    if format == "auto":
        if not isinstance(first, dict):
            raise data_error(f"a record should be an object, not {_kind_of(first)}", path, first_line)
        format = sniff_format(list(first), columns, task)
        if format is None:
            expected = EXPECTED.get(task, "instruction+output (alpaca), messages (chat) or text")
            raise data_error(
                f"cannot tell the format: task {task} needs {expected} columns; "
                f"the first record has {', '.join(map(str, first)) or 'no fields'}",
                path, first_line, hint="map your columns under data.columns, or set data.format",
            )
    records, lines = [], []
    for line, item in rows:
        try:
            records.append(_normalise(item, format, columns, path, line))
        except UserError as exc:
            if on_problem is None:
                raise
            on_problem(exc)
            continue
        lines.append(line)
    labels: tuple[str, ...] = ()
    if format == "classification" and records:  # no records: only when every one was a problem
        labels = tuple(sorted({r["label"] for r in records}))
        if len(labels) < 2 and not evaluation:
            raise data_error(f"classification needs at least two labels; every row is '{labels[0]}'", path,
                         field=columns.label or "label")
    return LoadedData(str(path), format, records, lines, labels)


def load_dataset_file(path: Path | str, *, format: str = "auto", columns: ColumnsConfig | None = None,
                      task: str = "sft", limit: int | None = None, evaluation: bool = False) -> LoadedData:
    """Read, sniff and normalise a dataset file. Raises UserError on bad data."""
    path = Path(path)
    return normalise_rows(read_rows(path), path, format=format, columns=columns, task=task, limit=limit,
                          evaluation=evaluation)


PROBLEM_CAP = 50  # problems kept (by line) for the wizard; the rest are counted


@dataclass(frozen=True)
class DataProblems:
    """The problems in a dataset: the first ``cap`` by line (file-wide ones first), and how many in all."""

    problems: tuple[UserError, ...]
    total: int

    @property
    def more(self) -> int:
        """Problems counted but not kept."""
        return self.total - len(self.problems)


class _ProblemSink:
    """Counts every problem, keeps the ``cap`` with the lowest lines. Reading and normalising each
    report theirs in line order, one after the other, so the kept list is sorted now and then."""

    def __init__(self, cap: int) -> None:
        self.cap, self.total, self.kept = cap, 0, []

    def __call__(self, exc: UserError) -> None:
        self.total += 1
        self.kept.append(exc)
        if len(self.kept) > 2 * self.cap:  # bounded memory for a file that is bad on every line
            self._trim()

    def _trim(self) -> None:
        self.kept.sort(key=lambda exc: exc.line or 0)
        del self.kept[self.cap:]

    def result(self) -> DataProblems:
        self._trim()
        return DataProblems(tuple(self.kept), self.total)


def _rows_past_bad_json(path: Path, on_problem: Callable[[UserError], None]) -> list[tuple[int, object]]:
    """read_rows, except that JSON Lines carry on past a line that is not JSON. Other files stop at
    their first problem: after a broken JSON array or CSV quote nothing that follows can be trusted."""
    try:
        return read_rows(path)
    except UserError as exc:
        if exc.line is None or path.suffix.lower() in (".parquet", ".csv", ".tsv", ".json"):
            raise
    text = decode_text(read_file_bytes(path), path)  # raises again if the text itself is the problem
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):  # the numbering jsonl_rows uses
        try:
            rows += [(number, item) for _, item in jsonl_rows(path, line)]
        except UserError as exc:
            exc.line = number  # jsonl_rows saw a file of this one line
            on_problem(exc)
    return rows


def find_problems(path: Path | str, *, format: str = "auto", columns: ColumnsConfig | None = None,
                  task: str = "sft", limit: int | None = None, evaluation: bool = False,
                  cap: int = PROBLEM_CAP) -> DataProblems:
    """Every problem load_dataset_file would raise, not only the first: the same reading and checks,
    going on past each bad line. Raises nothing for bad data."""
    path = Path(path)
    sink = _ProblemSink(cap)
    try:
        rows = _rows_past_bad_json(path, sink)
        if rows or not sink.total:  # "no records" says nothing new when every line was bad JSON
            normalise_rows(rows, path, format=format, columns=columns, task=task, limit=limit,
                           evaluation=evaluation, on_problem=sink)
    except UserError as exc:  # the file as a whole: unreadable, no format to tell, one label
        sink(exc)
    return sink.result()


def check_validation_labels(train: LoadedData, evaluation: LoadedData, *, label_column: str | None = None) -> None:
    """Every evaluation label must be one the classifier is trained on: its head has no output for others."""
    if train.format != "classification" or evaluation.format != "classification":
        return
    known = set(train.labels)
    for record, line in zip(evaluation.records, evaluation.source_lines):
        if record["label"] not in known:
            raise data_error(
                f"label '{record['label']}' is not among the training labels ({', '.join(train.labels)})",
                evaluation.path, line, label_column or "label",
                hint=f"every evaluation label must also occur in the training data ({train.path})",
            )


HUB_DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")


def cached_hub_dataset_files(name: str, split: str = "train", *, cache_dir: str | Path | None = None) -> list[Path]:
    """The data files of hub dataset ``name`` already in the Hugging Face cache for ``split``, without a
    download or the ``datasets`` stack (what the wizard previews); [] when it is not cached.

    Splits follow ``datasets``' file naming: a file or folder named after the split
    (``data/train-00000-of-00001.parquet``, ``test.jsonl``); files that name no split are the train split.
    """
    import re

    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, repo_type="dataset", local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached (or no such repo): nothing to preview
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in HUB_DATA_SUFFIXES)
    names = {p: p.relative_to(folder).as_posix().lower() for p in files}
    named = re.compile(r"(^|[/_.-])(train|training|test|testing|validation|valid|dev|eval)([/_.-]|$)")
    matching = [p for p in files if re.search(rf"(^|[/_.-]){re.escape(split.lower())}([/_.-]|$)", names[p])]
    if matching or split != "train":
        return matching
    return [p for p in files if not named.search(names[p])]


def load_hub_dataset(name: str, *, revision: str | None = None, split: str = "train", format: str = "auto",
                     columns: ColumnsConfig | None = None, task: str = "sft", limit: int | None = None,
                     evaluation: bool = False) -> LoadedData:
    """A hub dataset through ``datasets`` (the runner only: it imports the datasets stack).

    Offline, ``datasets`` reloads only what it prepared itself; files that sit in the Hugging Face
    cache without that (downloaded with ``hf download``, say) are read directly, as the wizard
    previewed them.
    """
    import datasets

    try:
        table = datasets.load_dataset(name, revision=revision, split=split)
        rows = [(i + 1, row) for i, row in enumerate(table)]
    except Exception as exc:  # offline, missing, gated: all end the same way for the user
        files = [] if revision else cached_hub_dataset_files(name, split)
        if not files:
            raise UserError(
                f"cannot load the hub dataset '{name}': {exc}", field="data.path", kind="data",
                hint="check the id; offline, it must already be in the Hugging Face cache (HF_HUB_OFFLINE=1)",
            ) from None
        if len(files) == 1:
            return load_dataset_file(files[0], format=format, columns=columns, task=task, limit=limit,
                                     evaluation=evaluation)
        rows = [(i + 1, row) for i, (_, row) in enumerate(r for f in files for r in read_rows(f))]
    return normalise_rows(rows, f"hub:{name}", format=format, columns=columns, task=task, limit=limit,
                          evaluation=evaluation)


def split_validation(data: LoadedData, fraction: float, seed: int) -> tuple[LoadedData, LoadedData]:
    """A seeded random split; the held-out part has at least one record."""
    order = list(range(len(data.records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * fraction))
    if n_eval >= len(order):
        raise data_error(f"validation_split {fraction} leaves no training rows from {len(order)}", data.path,
                     field="data.validation_split", hint="lower data.validation_split or add rows")
    held, kept = sorted(order[:n_eval]), sorted(order[n_eval:])

    def pick(indices: list[int]) -> LoadedData:
        return replace(data, records=[data.records[i] for i in indices],
                       source_lines=[data.source_lines[i] for i in indices])

    return pick(kept), pick(held)

