"""The one exception type for what a user did wrong.

Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: a profile, a dataset, a model path, a run name.

    The message says what is wrong; ``file``, ``line`` and ``field`` say where;
    ``hint`` says how to fix it. ``kind`` is a short machine-readable class
    (``profile``, ``data``, ``model``, ``run``, ...) used in event logs.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        kind: str = "input",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.kind = kind

    @property
    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "hint": self.hint,
            "file": self.file,
            "line": self.line,
            "field": self.field,
        }
