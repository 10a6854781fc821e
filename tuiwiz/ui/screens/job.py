"""Merge and export inside the app: the command runs as ``tuiwiz ... --jsonl`` in a subprocess.

The screen shows its stages with a progress bar, then the result (where it went, what was
verified) or the error with its hint. Escape while it runs asks to cancel: the command is sent
SIGTERM and removes its staging folder, so nothing half-written is left.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar, Static

from tuiwiz.post.jsonl_client import JsonlProcess
from tuiwiz.ui.screens.base import ReportsWorkerErrors
from tuiwiz.ui.widgets import StepBar

STAGES = {"merge": "merging shards", "verify": "verifying the merge", "gguf": "writing GGUF tensors",
          "onnx": "exporting ONNX"}


def _result_text(what: str, result: dict) -> Text:
    text = Text()
    text.append("✓ ", style="bold green")
    if what == "merge":
        text.append(f"Merged into {result['out']}\n", style="bold")
        text.append(f"verified: logits within {result['max_diff']:.2g} of base + adapter "
                    f"(tolerance {result['tolerance']:.0e}); the adapter moves them by up to "
                    f"{result['changed_diff']:.3g}\n")
        text.append(f"peak memory {result['peak_rss_mb']:.0f} MiB merging, {result['verify_peak_rss_mb']:.0f} MiB "
                    f"verifying; {result['seconds']:.1f} s")
    else:
        text.append(f"Exported {result['format']}: {result['location']}\n", style="bold")
        names = [name.rsplit("/", 1)[-1] for name in result.get("files", [])]
        text.append(f"{len(names)} file(s): " + ", ".join(names[:6]) + (" …" if len(names) > 6 else ""))
        text.append(f"  ({result['seconds']:.1f} s)")
    for note in result.get("notes", []):
        text.append(f"\nnote: {note}", style="dim")
    return text


class JobScreen(ReportsWorkerErrors, Screen[dict | None]):
    """Runs one merge or export; answers its result (or None)."""

    SCOPED_CSS = False
    DEFAULT_CSS = """
    #job-what { padding: 0 1; height: auto; }
    #job-stage { padding: 0 1; height: 1; color: $text-muted; }
    #job-progress { padding: 0 1; height: 1; }
    #job-outcome { padding: 0 1; margin-top: 1; height: auto; border: round $success; }
    #job-outcome.failed { border: round $error; }
    #job-notes { padding: 0 1; height: 1fr; color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "close", "Close", id="close")]

    def __init__(self, what: str, args: list[str], *, title: str, cwd: str | None = None,
                 process=JsonlProcess) -> None:
        super().__init__()
        self.process = process  # JsonlProcess, or a stand-in with its interface (tests/support/testing.py's Replay)
        self.what, self.args, self.title_text, self.cwd = what, list(args), title, cwd
        self.client: JsonlProcess | None = None
        self.result: dict | None = None
        self.error: dict | None = None
        self.events: list[dict] = []  # every event, for tests

    def compose(self) -> ComposeResult:
        yield StepBar(title=self.title_text)
        yield Static(Text(f"$ tuiwiz {' '.join(self.args)}", style="dim"), id="job-what")
        yield Static("starting…", id="job-stage")
        yield ProgressBar(id="job-progress", show_eta=False)
        yield Static("", id="job-outcome")
        yield Static("", id="job-notes")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#job-outcome").display = False
        self._start()

    @property
    def running(self) -> bool:
        """Working: neither its result nor its error has come (the process exits right after)."""
        return self.client is not None and self.client.running and self.result is None and self.error is None

    def _start(self) -> None:
        self.client = self.process(self.args, self._from_thread, cwd=self.cwd)  # a fork and exec: quick

    def _from_thread(self, event: dict) -> None:
        try:
            self.app.call_from_thread(self._on_event, event)
        except RuntimeError:  # the app has gone
            pass

    def _on_event(self, event: dict) -> None:
        self.events.append(event)
        kind = event.get("event")
        stage = self.query_one("#job-stage", Static)
        if kind == "plan":
            note = f" · {event['note']}" if event.get("note") else ""
            stage.update(f"{event['method']} adapter of {event['run']} into {event['base']}: {event['shards']} "
                         f"shard(s), {event['base_mib']:.0f} MiB{note}")
        elif kind == "progress":
            bar = self.query_one("#job-progress", ProgressBar)
            bar.update(total=max(1, event["total"]), progress=event["done"])
            stage.update(f"{STAGES.get(event['stage'], event['stage'])}: {event['done']}/{event['total']}")
        elif kind == "result":
            self.result = event
            self._outcome(_result_text(self.what, event), failed=False)
            stage.update("done")
            bar = self.query_one("#job-progress", ProgressBar)
            bar.update(total=bar.total or 1, progress=bar.total or 1)
        elif kind == "error":
            self.error = event
            text = Text("✗ ", style="bold red")
            text.append(event.get("message") or "failed", style="bold")
            if event.get("hint"):
                text.append(f"\nhint: {event['hint']}")
            self._outcome(text, failed=True)
            stage.update("failed" if event.get("kind") != "cancelled" else "cancelled")
            if event.get("kind") == "output" and "--overwrite" not in self.args:
                self._offer_overwrite(event.get("message") or "")
        elif kind == "exit":
            if self.result is None and self.error is None:  # died without a word: show what it printed
                tail = (event.get("stderr") or "").strip().splitlines()[-8:]
                self.error = {"kind": "crashed", "message": f"the command ended with exit code {event['code']}"}
                self._outcome(Text("✗ " + self.error["message"] + "\n" + "\n".join(tail), style="red"), failed=True)
            self.refresh_bindings()

    @work
    async def _offer_overwrite(self, message: str) -> None:
        """The destination exists: replace it (the command again with --overwrite), or leave it be."""
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        replace = await self.app.push_screen_wait(ConfirmDialog(
            "Replace it?", f"{message}. Replace it with a new {self.what}?", yes="Replace", danger=True))
        if not replace or self.running:
            return
        self.args.append("--overwrite")
        self.result = self.error = None
        self.query_one("#job-what", Static).update(Text(f"$ tuiwiz {' '.join(self.args)}", style="dim"))
        self.query_one("#job-outcome").display = False
        self.query_one("#job-stage", Static).update("starting again…")
        self._start()

    def _outcome(self, text: Text, *, failed: bool) -> None:
        outcome = self.query_one("#job-outcome", Static)
        outcome.update(text)
        outcome.display = True
        outcome.set_class(failed, "failed")

    @work
    async def action_close(self) -> None:
        if self.running:
            from tuiwiz.ui.screens.dialogs import ConfirmDialog

            sure = await self.app.push_screen_wait(ConfirmDialog(
                f"Cancel the {self.what}?", "The command stops and removes what it had written so far.",
                yes="Cancel it", no="Keep going", danger=True))
            if not sure or not self.running:
                return
            self.client.cancel()
            return  # the error event ("cancelled") arrives; Escape again closes
        self.dismiss(self.result)
