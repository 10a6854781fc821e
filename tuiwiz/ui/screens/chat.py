"""Chat with a run's model inside the app, streamed from ``tuiwiz chat RUN --jsonl``.

The model lives in a subprocess (this process never imports torch); a reader thread hands each
token to the screen as it comes, so the app never waits on generation. Tokens that arrive while
the screen is busy drawing are taken together, so a long answer costs one redraw a frame, not one
a token. Side by side, each prompt
is answered first with the adapter off (the base model) and then on, from the one loaded model;
each column keeps its own conversation. Other runs' adapters on the same base can be added and
switched.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Checkbox, Footer, Input, Label, Select, Static

from tuiwiz.post.chat import printable
from tuiwiz.post.jsonl_client import JsonlProcess
from tuiwiz.ui.screens.base import ReportsWorkerErrors
from tuiwiz.ui.widgets import StepBar

BASE = "base"  # the adapter choice that answers with the adapter off
SETTINGS = (  # id, label, default, parse, check, what is allowed
    ("chat-temperature", "T", "0.7", float, lambda v: 0 <= v <= 2, "a number from 0 (greedy) to 2"),
    ("chat-top-p", "top-p", "0.9", float, lambda v: 0 < v <= 1, "a number above 0, at most 1"),
    ("chat-max", "max", "256", int, lambda v: 1 <= v <= 8192, "a whole number from 1 to 8192"),
)


class Bubble(Static):
    """One message. An answer grows as its tokens arrive."""

    def __init__(self, who: str, text: str = "", *, answer: bool = False) -> None:
        super().__init__("", markup=False, classes="chat-answer" if answer else "chat-user")
        self.who, self.text = who, text
        self.first_shown: float | None = None  # when the first piece of text was on screen
        self._show()

    def add(self, *pieces: str) -> None:
        self.text += "".join(pieces)
        self._show()
        if self.first_shown is None and self.text:
            self.first_shown = time.perf_counter()

    def finish(self, note: str) -> None:
        self._show(note)

    def _show(self, note: str = "") -> None:
        waiting = "…" if self.has_class("chat-answer") else ""
        line = Text.assemble((f"{self.who} › ", "bold"), printable(self.text) or waiting)
        if note:
            line.append("  ")  # plain gap: an SVG export drops a styled one
            line.append(note, style="dim")
        self.update(line)


class ChatScreen(ReportsWorkerErrors, Screen[None]):
    SCOPED_CSS = False
    DEFAULT_CSS = """
    #chat-status { height: 1; padding: 0 1; color: $text-muted; }
    #chat-settings, #chat-system-row { height: 1; padding: 0 1; }
    #chat-settings Label, #chat-system-row Label { padding: 0 1 0 0; }
    #chat-settings Input { width: 8; margin-right: 1; }
    #chat-settings Select { width: 1fr; }
    #chat-settings Checkbox { margin-right: 1; }
    #chat-system { width: 1fr; }
    #chat-columns { height: 1fr; }
    .chat-column { width: 1fr; height: 1fr; border: round $surface-lighten-2; border-title-color: $text-muted;
                   padding: 0 1; }
    .chat-user { color: $text; margin-top: 1; }
    .chat-answer { color: $text-accent; }
    #chat-input { margin: 0 1; }
    """
    AUTO_FOCUS = "#chat-input"
    BINDINGS = [
        Binding("ctrl+s", "stop", "Stop", id="stop", priority=True),
        Binding("ctrl+l", "clear", "Clear", id="clear", priority=True),
        Binding("ctrl+b", "toggle_compare", "Side by side", id="compare", priority=True),
        Binding("ctrl+o", "add_adapter", "Add adapter", id="add-adapter", priority=True),
        Binding("escape", "close", "Close", id="close"),
    ]

    def __init__(self, ref: str, *, compare: bool = False, label: str | None = None, process=JsonlProcess) -> None:
        super().__init__()
        self.process = process  # JsonlProcess, or a stand-in with its interface (tests/support/testing.py's Replay)
        self.ref, self.compare, self.label = str(ref), compare, label or str(ref).rstrip("/").rsplit("/", 1)[-1]
        self.client: JsonlProcess | None = None
        self.ready = False
        self.adapters: list[str] = []
        self.active: str | None = None
        self.histories: dict[str, list[dict]] = {"tuned": [], "base": []}
        self.pending: list[tuple[str, str]] = []  # (column, adapter) still to answer the last prompt
        self.current: tuple[int, str, Bubble] | None = None  # (request id, column, bubble) streaming now
        self.next_id = 0
        self.settings: dict = {}  # temperature, top_p, max_new_tokens of the prompt being answered
        self.system: str | None = None
        self.events: list[dict] = []  # every event, for tests
        self.finished: list[dict] = []  # (done events), for tests
        self._inbox: deque[dict] = deque()  # events the reader thread has handed over, not yet shown
        self._inbox_lock = threading.Lock()
        self._woken = False  # a Delivered message is on its way for what is in the inbox
        self._waiting = False  # Enter was pressed before the model was ready: send the box then

    class Delivered(Message):
        """Events wait in the inbox (one message for however many arrived meanwhile)."""

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield StepBar(title=f"Chat · {self.label}")
        yield Static("loading the model…", id="chat-status")
        with Horizontal(id="chat-settings"):
            for wid, label, default, parse, _, _ in SETTINGS:
                yield Label(label)
                yield Input(default, id=wid, compact=True, type="integer" if parse is int else "number")
            yield Checkbox("side by side", self.compare, id="chat-compare", compact=True)
            yield Select([], prompt="model", id="chat-adapter", compact=True, allow_blank=True, disabled=True)
        with Horizontal(id="chat-system-row"):
            yield Label("system")
            yield Input(placeholder="an optional system message", id="chat-system", compact=True)
        with Horizontal(id="chat-columns"):
            yield VerticalScroll(id="chat-base", classes="chat-column")
            yield VerticalScroll(id="chat-tuned", classes="chat-column")
        # enabled from the start: a question typed while the model loads is sent once it is ready
        yield Input(placeholder="Message · Enter sends", id="chat-input", compact=True, select_on_focus=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        if not getattr(self.app, "blink", True):  # tests and screenshots: a steady cursor
            for field in self.query(Input):
                field.cursor_blink = False
        self.query_one("#chat-base").border_title = "base model (adapter off)"
        self.query_one("#chat-tuned").border_title = self.label
        self._layout()
        self._start()

    def _start(self) -> None:
        self.client = self.process(["chat", self.ref], self._from_thread)  # a fork and exec: quick

    def _from_thread(self, event: dict) -> None:
        event["_received"] = time.perf_counter()
        with self._inbox_lock:
            self._inbox.append(event)
            if self._woken:
                return
            self._woken = True
        try:
            self.post_message(self.Delivered())  # thread-safe, and it does not wait for the screen
        except RuntimeError:  # the app has gone
            pass

    def on_chat_screen_delivered(self, _: Delivered) -> None:
        with self._inbox_lock:
            events, self._woken = list(self._inbox), False
            self._inbox.clear()
        pieces: list[str] = []  # consecutive tokens of the current answer: shown with one update
        for event in events:
            if event.get("event") == "token" and self.current and event.get("id") == self.current[0]:
                self.events.append(event)
                pieces.append(event["text"])
                continue
            self._show_tokens(pieces)
            self._on_event(event)
        self._show_tokens(pieces)

    def _show_tokens(self, pieces: list[str]) -> None:
        if pieces and self.current:
            self.current[2].add(*pieces)
            self.query_one(f"#chat-{self.current[1]}", VerticalScroll).scroll_end(animate=False)
        pieces.clear()

    def _layout(self) -> None:
        both = self.compare and bool(self.adapters)
        self.query_one("#chat-base").display = both
        self.query_one("#chat-tuned").border_title = self._tuned_title()

    def _tuned_title(self) -> str:
        if not self.adapters:
            return self.label
        return "base model (adapter off)" if self.active == BASE else f"adapter {self.active}"

    def _status(self, text: str) -> None:
        self.query_one("#chat-status", Static).update(text)

    # ---------------------------------------------------------------- events from the model process

    def _on_event(self, event: dict) -> None:
        self.events.append(event)
        kind = event.get("event")
        if kind == "ready":
            self.ready = True
            self.adapters = list(event.get("adapters") or [])
            self.active = event.get("active")
            self._fill_adapters()
            where = event.get("device", "?")
            what = f"{len(self.adapters)} adapter(s)" if self.adapters else "a whole model (no adapter)"
            template = "" if event.get("chat_template") else " · no chat template: prompts use the Alpaca layout"
            self._status(f"ready on {where} · {what}{template}")
            field = self.query_one("#chat-input", Input)
            field.focus()
            self._layout()
            if self._waiting:
                self._waiting = False
                self._submit(field)
        elif kind == "adapters":
            self.adapters = list(event.get("adapters") or [])
            self.active = event.get("active")
            self._fill_adapters()
            self._layout()
        elif kind == "done" and self.current and event.get("id") == self.current[0]:
            self.finished.append(event)
            _, column, bubble = self.current
            note = f"[stopped] {event['tokens']} tokens" if event.get("stopped") else \
                f"{event['tokens']} tokens, {event['tokens_per_second']:.0f}/s"
            bubble.finish(note)
            scroll = self.query_one(f"#chat-{column}", VerticalScroll)
            self.call_after_refresh(scroll.scroll_end, animate=False)  # the note under the answer, in view
            self.histories[column].append({"role": "assistant", "content": bubble.text})
            self.current = None
            if event.get("stopped"):
                self.pending.clear()
            self._next()
            if self.current is None:
                self._status(f"ready · last answer {event['tokens']} tokens in {event['seconds']:.1f} s, first "
                             f"after {1000 * (event.get('first_token_s') or 0):.0f} ms")
        elif kind == "error":
            message = event.get("message", "failed") + (f" ({event['hint']})" if event.get("hint") else "")
            if self.current and event.get("id") == self.current[0]:
                self.current[2].finish(f"[error] {message}")
                self.current = None
                self.pending.clear()
                self._next()
            elif not self.ready:
                self._status(f"✗ {message}")
            else:
                self.notify(message, severity="error", title="chat")
        elif kind == "exit":
            self.ready = False
            self.query_one("#chat-input", Input).disabled = True
            if event.get("code"):
                last = next((e for e in reversed(self.events) if e.get("event") == "error"), None)
                printed = (event.get("stderr") or "").strip().splitlines() or ["?"]
                why = last["message"] if last else printed[-1]
                self._status(f"✗ the model process ended (exit code {event['code']}): {why}")
        self.refresh_bindings()

    def _fill_adapters(self) -> None:
        select = self.query_one("#chat-adapter", Select)
        if not self.adapters:
            select.set_options([(self.label, self.label)])
            select.value = self.label
            select.disabled = True
            self.query_one("#chat-compare", Checkbox).disabled = True
            return
        select.set_options([(f"adapter {name}", name) for name in self.adapters]
                           + [("base model (adapter off)", BASE)])
        select.value = self.active or self.adapters[0]
        select.disabled = False

    # ---------------------------------------------------------------- asking

    def _settings(self) -> dict | None:
        values = {}
        for wid, label, _, parse, check, allowed in SETTINGS:
            raw = self.query_one(f"#{wid}", Input).value.strip()
            try:
                value = parse(raw)
                if not check(value):
                    raise ValueError
            except ValueError:
                self.notify(f"{label}: '{raw}' is not {allowed}", severity="error", title="settings")
                self.query_one(f"#{wid}", Input).focus()
                return None
            values[wid] = value
        return {"temperature": values["chat-temperature"], "top_p": values["chat-top-p"],
                "max_new_tokens": values["chat-max"]}

    def on_key(self, event: events.Key) -> None:
        """Printable keys typed anywhere on this screen go to the message box (help is on F1 here)."""
        field = self.query_one("#chat-input", Input)
        if event.is_printable and event.character and not isinstance(self.focused, Input) and not field.disabled:
            event.stop()
            event.prevent_default()
            field.focus()
            field.insert_text_at_cursor(event.character)

    @on(Input.Submitted, "#chat-input")
    def _send(self, event: Input.Submitted) -> None:
        self._submit(event.input)

    def _submit(self, field: Input) -> None:
        text = field.value.strip()
        if not text:
            return
        if not self.ready:
            self._waiting = True
            self._status("loading the model… your message goes as soon as it is ready")
            return
        if self.current is not None:
            self.notify("an answer is still coming: ctrl+s stops it", severity="warning")
            return
        settings = self._settings()
        if settings is None:
            return
        field.value = ""
        self.settings = settings
        self.system = self.query_one("#chat-system", Input).value.strip() or None
        both = self.compare and bool(self.adapters)
        columns = ["base", "tuned"] if both else ["tuned"]
        for column in columns:
            self.histories[column].append({"role": "user", "content": text})
            self.query_one(f"#chat-{column}", VerticalScroll).mount(Bubble("you", text))
        self.pending = [(column, BASE if column == "base" else (self.active or "active")) for column in columns]
        self._next()

    def _next(self) -> None:
        if self.current is not None or not self.pending or self.client is None:
            self.refresh_bindings()
            return
        column, adapter = self.pending.pop(0)
        self.next_id += 1
        who = "base" if adapter == BASE else (adapter if self.adapters else self.label)
        bubble = Bubble(who, answer=True)
        scroll = self.query_one(f"#chat-{column}", VerticalScroll)
        scroll.mount(bubble)
        scroll.scroll_end(animate=False)
        self.current = (self.next_id, column, bubble)
        self.client.send("ask", id=self.next_id, messages=self.histories[column], system=self.system,
                         adapter=adapter if self.adapters else "active", **self.settings)
        self._status("answering… ctrl+s stops")
        self.refresh_bindings()

    # ---------------------------------------------------------------- controls

    @on(Select.Changed, "#chat-adapter")
    def _adapter_chosen(self, event: Select.Changed) -> None:
        value = event.value
        if value == self.active or (value != BASE and value not in self.adapters):  # blank while refilled
            return
        if value == BASE:
            self.active = BASE
            self._layout()
        else:
            self.client.send("set_adapter", name=value)

    @on(Checkbox.Changed, "#chat-compare")
    def _compare_changed(self, event: Checkbox.Changed) -> None:
        self.compare = event.value
        self._layout()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":  # shown only while an answer streams (the footer is short at 80 columns)
            return self.current is not None
        if action in ("toggle_compare", "add_adapter"):
            return bool(self.ready and self.adapters)
        if action == "clear":
            return True if self.current is None else None
        return True

    def action_stop(self) -> None:
        if self.current is not None and self.client is not None:
            self.pending.clear()
            self.client.send("stop")

    def action_clear(self) -> None:
        if self.current is not None:
            return
        for column in ("base", "tuned"):
            self.histories[column].clear()
            self.query_one(f"#chat-{column}", VerticalScroll).remove_children()
        self.notify("conversation cleared")

    def action_toggle_compare(self) -> None:
        box = self.query_one("#chat-compare", Checkbox)
        box.value = not box.value

    @work
    async def action_add_adapter(self) -> None:
        from tuiwiz.ui.screens.dialogs import ChoiceDialog

        choices = await self._adapter_runs()
        if not choices:
            self.notify("no other completed adapter run on this base model", severity="warning")
            return
        path = await self.app.push_screen_wait(ChoiceDialog("Add an adapter (same base model)", choices))
        if path:
            self.client.send("add_adapter", ref=path)

    async def _adapter_runs(self) -> list[tuple[str, str]]:
        """Completed adapter runs not loaded yet (the model process checks the base when adding)."""
        import asyncio

        def scan() -> list[tuple[str, str]]:
            from tuiwiz.run.rundir import effective_status, registered_runs

            found = []
            for run in reversed(registered_runs()):
                if run.run_id in self.adapters or effective_status(run) != "completed":
                    continue
                if (run.path / "output" / "adapter_config.json").exists():
                    found.append((str(run.path), run.run_id))
            return found[:20]

        return await asyncio.to_thread(scan)

    def action_close(self) -> None:
        if self.current is not None:
            self.action_stop()
        client = self.client
        if client is not None:
            import threading

            threading.Thread(target=client.close, name="tuiwiz-chat-close", daemon=True).start()
        self.dismiss(None)
