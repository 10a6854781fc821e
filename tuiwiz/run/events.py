"""The event log: one JSON object per line in ``events.jsonl``.

The trainer appends typed events (tuiwiz.run.event_types); every front end reads the
objects back and types them with ``parse_event``. Readers take complete lines only,
so a torn last line (a writer mid-write, or killed) is left for the next read.
The event types and their fields are documented in docs/events.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tuiwiz.run.event_types import EVENTS, Event


class EventWriter:
    """Appends events; each line is written with one ``write`` and flushed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def emit(self, event: Event, *, durable: bool = False) -> Event:
        """Append ``event`` stamped with the time; ``durable`` fsyncs it. Returns it as written."""
        if EVENTS.get(event.type) is not type(event):
            raise ValueError(f"unknown event type {event.type!r}")  # an UnknownEvent is read, never written
        if event.unknown_fields():
            raise ValueError(f"{event.type} event has no field {', '.join(event.unknown_fields())}")
        now = round(time.time(), 3)
        line = {"type": event.type, "time": now, **event.fields()}
        self._handle.write(json.dumps(line, default=str, allow_nan=True) + "\n")
        self._handle.flush()
        if durable:
            os.fsync(self._handle.fileno())
        return event.model_copy(update={"time": now})

    def close(self) -> None:
        self._handle.close()


class EventTail:
    """Reads new complete events from a growing log, from where it left off."""

    def __init__(self, path: str | Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset
        self.skipped = 0  # lines that were not valid JSON

    def read(self, max_bytes: int | None = None) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read() if max_bytes is None else handle.read(max_bytes)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        complete = chunk[: end + 1]
        self.offset += len(complete)
        events = []
        for line in complete.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.skipped += 1
                continue
            if isinstance(event, dict):
                events.append(event)
            else:
                self.skipped += 1
        return events


def read_events(path: str | Path) -> list[dict]:
    """All complete events of a log."""
    return EventTail(path).read()


def iter_tail_events(path: str | Path, nbytes: int = 65536) -> Iterator[dict]:
    """The complete events in the last ``nbytes`` of a log, oldest first.

    Cheap whatever the log's length: used for run summaries.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return iter(())
    start = max(0, size - nbytes)
    if start > 0:
        # Begin after the first newline at or past start-1: the partial line before it is a fragment.
        with open(path, "rb") as handle:
            handle.seek(start - 1)
            head = handle.read(nbytes)
        cut = head.find(b"\n")
        start = start - 1 + cut + 1 if cut >= 0 else size
    return iter(EventTail(path, offset=start).read())
