"""The run dir's events: docs/events.md lists exactly the typed events, and readers survive any writer.

The table in docs/events.md is made from tuiwiz/run/event_types.py; after changing an event, rewrite it with
`python -m tests.test_event_contract`.
"""

import pytest

from tuiwiz.run.event_types import (
    EVENTS,
    ErrorEvent,
    EvalEvent,
    LogEvent,
    RunEndEvent,
    RunStartEvent,
    StatusEvent,
    UnknownEvent,
    events_table,
    parse_event,
)
from tuiwiz.run.events import EventWriter, read_events

from .support import ROOT

DOC = ROOT / "docs" / "events.md"
BEGIN = "<!-- events table: made by events_table() in tuiwiz/run/event_types.py -->\n"
END = "<!-- end of the events table -->\n"


def _table(text: str) -> str:
    assert BEGIN in text and END in text, f"{DOC} lost its table markers"
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def test_the_doc_lists_every_event_and_field_and_nothing_else():
    assert _table(DOC.read_text(encoding="utf-8")) == events_table(), \
        "docs/events.md is out of date: python -m tests.test_event_contract rewrites its table"


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_every_field_says_what_it_holds(kind):
    cls = EVENTS[kind]
    assert cls.__doc__, kind
    assert all(info.description for name, info in cls.model_fields.items() if name != "time"), kind


def test_a_written_event_reads_back_as_given(tmp_path):
    """On disk: type, time, and the fields the writer gave; one given as None is null, one left out absent."""
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    written = [
        StatusEvent(status="recovering", message="m", recovery=1, checkpoint=None, kept=None),
        StatusEvent(status="loading", resume=False),
        LogEvent(step=1, max_steps=2, loss=float("nan"), memory={"rss_mb": 1.5}),
        EvalEvent(step=2, eval_loss=0.5, eval_accuracy=1.0),
        ErrorEvent(kind="crash", message="boom", hint=None, traceback=None),
        RunEndEvent(status="failed", error_kind="crash"),
    ]
    for event in written:
        writer.emit(event)
    writer.close()
    raws = read_events(path)
    assert [list(raw)[:2] for raw in raws] == [["type", "time"]] * len(written)
    assert raws[0]["checkpoint"] is None and "step" not in raws[0] and "resume" not in raws[0]
    assert raws[3] == {"type": "eval", "time": raws[3]["time"], "step": 2, "eval_loss": 0.5, "eval_accuracy": 1.0}
    read = [parse_event(raw) for raw in raws]
    assert [type(e) for e in read] == [type(e) for e in written]
    assert [e.fields() for e in read[:2] + read[3:]] == [e.fields() for e in written[:2] + written[3:]]
    assert read[3].metrics == {"eval_loss": 0.5, "eval_accuracy": 1.0}
    assert all(isinstance(e.time, float) for e in read)


def test_the_writer_refuses_what_no_class_names(tmp_path):
    writer = EventWriter(tmp_path / "events.jsonl")
    with pytest.raises(ValueError, match="no field mesage"):
        writer.emit(StatusEvent(status="running", mesage="a typo"))
    with pytest.raises(ValueError, match="unknown event type"):
        writer.emit(parse_event({"type": "progress"}))
    writer.close()
    assert (tmp_path / "events.jsonl").read_text() == ""


def test_readers_take_what_an_older_or_newer_writer_left():
    newer = parse_event({"type": "log", "time": 1.0, "step": 3, "max_steps": 9, "loss": 2.0, "perplexity": 7.4})
    assert isinstance(newer, LogEvent) and newer.step == 3 and newer.extra == {"perplexity": 7.4}
    assert newer.grad_norm is None  # not written: None, as for every field an older writer did not write
    older = parse_event({"type": "run_start", "run_id": "r", "model": "demo"})
    assert isinstance(older, RunStartEvent) and older.model == "demo" and older.dtype is None and older.time is None
    odd = parse_event({"type": "log", "step": "three"})  # not validated: the reader decides what to do with it
    assert odd.step == "three" and odd.loss is None
    unknown = parse_event({"type": "gpu_sample", "time": 2.0, "watts": 300})
    assert isinstance(unknown, UnknownEvent) and unknown.raw["watts"] == 300
    assert isinstance(parse_event({}), UnknownEvent)


def test_a_blank_event_stands_in_before_the_first():
    blank = LogEvent.blank()
    assert (blank.step, blank.memory, blank.fields()) == (None, None, {})


def _rewrite_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + events_table() + END + rest.split(END, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    _rewrite_doc()
