"""Score replies with a reward model (a run of task reward): what the app offers instead of chat.

The screen starts the real ``tuiwiz score RUN --jsonl`` in a subprocess when it opens: the model loads
once, while the user types, and each prompt and reply sent to it comes back as a score, listed under the
last ones. The app never imports torch; closing the screen ends the subprocess.
"""

from __future__ import annotations

import threading

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from tuiwiz.post.jsonl_client import JsonlProcess
from tuiwiz.ui.widgets import StepBar


def score_args(run_path: str) -> list[str]:
    """The command the screen serves from (JsonlProcess adds ``--jsonl``)."""
    return ["score", run_path]


class ScoreScreen(Screen[None]):
    SCOPED_CSS = False
    DEFAULT_CSS = """
    #score-prompt, #score-reply { margin: 0 1; }
    #score-status { padding: 0 1; height: 1; color: $text-muted; }
    #score-list { height: 1fr; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "close", "Close", id="close")]

    def __init__(self, run_path: str, *, label: str, process=JsonlProcess) -> None:
        super().__init__()
        self.run_path, self.label = run_path, label
        self.process = process  # JsonlProcess, or a stand-in with its interface (tests)
        self.client: JsonlProcess | None = None
        self.ready = False
        self.failed = False
        self.scores: list[tuple[str, str, float]] = []  # (prompt, reply, score), for tests
        self.asked: dict[int, tuple[str, str]] = {}  # request id -> (prompt, reply) not yet scored
        self.waiting: tuple[str, str] | None = None  # Enter pressed while the model loads: sent when ready
        self.next_id = 0

    def compose(self) -> ComposeResult:
        yield StepBar(title=f"Score with the reward model · {self.label}")
        yield Input(placeholder="prompt, e.g. What is two plus three?", id="score-prompt")
        yield Input(placeholder="a reply to score; Enter scores it", id="score-reply")
        yield Static("loading the reward model…", id="score-status")
        with VerticalScroll(id="score-list"):
            yield Static("", id="score-results")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#score-prompt", Input).focus()
        self.client = self.process(score_args(self.run_path), self._from_thread)

    def _from_thread(self, event: dict) -> None:
        try:
            self.app.call_from_thread(self._event, event)
        except RuntimeError:  # the app has closed
            pass

    @property
    def busy(self) -> bool:
        return bool(self.asked) or self.waiting is not None

    def _status(self, text: str, style: str | None = None) -> None:
        self.query_one("#score-status", Static).update(Text(text, style=style or ""))

    def _event(self, event: dict) -> None:
        if not self.is_attached:
            return
        kind = event.get("event")
        if kind == "ready":
            self.ready = True
            self._status(f"ready ({event.get('device', 'cpu')}); higher is better. Enter scores the reply")
            if self.waiting is not None:
                prompt, reply = self.waiting
                self.waiting = None
                self._send(prompt, reply)
        elif kind == "score":
            prompt, reply = self.asked.pop(event.get("id"), ("?", "?"))
            self._add(prompt, reply, float(event["score"]))
        elif kind == "error":
            self.asked.pop(event.get("id"), None)
            if not self.ready:
                self.failed, self.waiting = True, None
            hint = event.get("hint")
            self._status(event.get("message", "the score command failed") + (f" ({hint})" if hint else ""), "red")
        elif kind == "exit" and not self.failed and event.get("code"):
            self.failed, self.waiting = True, None
            self.asked.clear()
            tail = (event.get("stderr") or "").strip().splitlines()
            self._status((tail or [f"the score command ended with code {event.get('code')}"])[-1], "red")

    @on(Input.Submitted, "#score-prompt")
    def _to_reply(self) -> None:
        self.query_one("#score-reply", Input).focus()

    @on(Input.Submitted, "#score-reply")
    def _submitted(self) -> None:
        prompt = self.query_one("#score-prompt", Input).value.strip()
        reply = self.query_one("#score-reply", Input).value.strip()
        if not prompt or not reply:
            self._status("give a prompt and a reply", "yellow")
        elif self.failed:
            return
        elif self.busy:
            self._status("still scoring the last reply…", "yellow")
        elif not self.ready:
            self.waiting = (prompt, reply)
            self._status("the reward model is loading; the reply is scored when it is ready")
        else:
            self._send(prompt, reply)

    def _send(self, prompt: str, reply: str) -> None:
        self.next_id += 1
        self.asked[self.next_id] = (prompt, reply)
        self._status("scoring…")
        if not self.client.send("score", id=self.next_id, prompt=prompt, completion=reply):
            self.asked.pop(self.next_id, None)
            self.failed = True
            self._status("the score command is no longer running", "red")

    def _add(self, prompt: str, reply: str, value: float) -> None:
        self.scores.append((prompt, reply, value))
        lines = Text()
        for p, r, v in reversed(self.scores):
            lines.append(f"{v:+.4f}  ", style="bold green" if v >= 0 else "bold red")
            lines.append(p, style="dim")
            lines.append(" → ")
            lines.append(r + "\n")
        self.query_one("#score-results", Static).update(lines)
        self._status("scored; change the reply and press Enter again")
        self.query_one("#score-reply", Input).focus()

    def action_close(self) -> None:
        client = self.client
        if client is not None:  # closing waits for the process: not on the event loop
            threading.Thread(target=client.close, name="tuiwiz-score-close", daemon=True).start()
        self.dismiss(None)
