"""Atomic writes: a reader sees the old file (or folder) or the new one, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def staged_folder(final: str | Path, *, create: bool = True) -> Iterator[Path]:
    """Build a folder in a hidden sibling of ``final`` (``.NAME.PID.tmp``), then put it in ``final``'s place.

    Yields the staging path, made empty (or left absent with ``create=False``, for a caller that
    copies a tree there). When the block ends, an old ``final`` is removed and the staging folder
    renamed to it with ``os.replace``; when the block raises anything (KeyboardInterrupt and
    SystemExit included), the staging folder is removed, ``final`` is left as it was, and the
    exception goes on.
    """
    final = Path(final)
    staging = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process that had this pid
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        if create:
            staging.mkdir()
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
