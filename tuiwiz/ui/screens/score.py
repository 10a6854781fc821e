"""Score replies with a reward model (a run of task reward): what the app offers instead of chat.

A prompt and a reply go to the real ``tuiwiz score RUN --prompt P --completion C`` in a subprocess (a
worker thread waits on it), so the app never imports torch; each score is listed under the last ones.
The model loads for each score: a reward model is scored now and then, not chatted with.
"""

from __future__ import annotations

import subprocess
import sys

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from tuiwiz.ui.screens.base import ReportsWorkerErrors
from tuiwiz.ui.widgets import StepBar


def score_command(run_path: str, prompt: str, completion: str) -> list[str]:
    return [sys.executable, "-m", "tuiwiz", "score", run_path, "--prompt", prompt, "--completion", completion]


class ScoreScreen(ReportsWorkerErrors, Screen[None]):
    SCOPED_CSS = False
    DEFAULT_CSS = """
    #score-prompt, #score-reply { margin: 0 1; }
    #score-status { padding: 0 1; height: 1; color: $text-muted; }
    #score-list { height: 1fr; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "close", "Close", id="close")]

    def __init__(self, run_path: str, *, label: str, command=score_command) -> None:
        super().__init__()
        self.run_path, self.label, self.command = run_path, label, command
        self.scores: list[tuple[str, str, float]] = []  # (prompt, reply, score), for tests
        self.busy = False

    def compose(self) -> ComposeResult:
        yield StepBar(title=f"Score with the reward model · {self.label}")
        yield Input(placeholder="prompt, e.g. What is two plus three?", id="score-prompt")
        yield Input(placeholder="a reply to score; Enter scores it", id="score-reply")
        yield Static("Higher is better. Each score loads the model in a child process.", id="score-status")
        with VerticalScroll(id="score-list"):
            yield Static("", id="score-results")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#score-prompt", Input).focus()

    @on(Input.Submitted, "#score-prompt")
    def _to_reply(self) -> None:
        self.query_one("#score-reply", Input).focus()

    @on(Input.Submitted, "#score-reply")
    def _submitted(self) -> None:
        prompt = self.query_one("#score-prompt", Input).value.strip()
        reply = self.query_one("#score-reply", Input).value.strip()
        status = self.query_one("#score-status", Static)
        if not prompt or not reply:
            status.update(Text("give a prompt and a reply", style="yellow"))
            return
        if self.busy:
            return
        self.busy = True
        status.update("scoring…")
        self._score(prompt, reply)

    @work(thread=True, exclusive=True, exit_on_error=False, group="score")
    def _score(self, prompt: str, reply: str) -> None:
        result = subprocess.run(self.command(self.run_path, prompt, reply), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=600)
        self.app.call_from_thread(self._show, prompt, reply, result.returncode, result.stdout, result.stderr)

    def _show(self, prompt: str, reply: str, code: int, out: str, err: str) -> None:
        self.busy = False
        if not self.is_attached:
            return
        status = self.query_one("#score-status", Static)
        try:
            value = float(out.strip().splitlines()[-1]) if code == 0 else None
        except (ValueError, IndexError):
            value = None
        if value is None:
            message = (err.strip().splitlines() or ["the score command failed"])[-1]
            status.update(Text(message.removeprefix("error: "), style="red"))
            return
        self.scores.append((prompt, reply, value))
        lines = Text()
        for p, r, v in reversed(self.scores):
            lines.append(f"{v:+.4f}  ", style="bold green" if v >= 0 else "bold red")
            lines.append(p, style="dim")
            lines.append(" → ")
            lines.append(r + "\n")
        self.query_one("#score-results", Static).update(lines)
        status.update("scored; change the reply and press Enter again")
        self.query_one("#score-reply", Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)
