"""Step 6: the profile as it will be saved, where, the command that runs it again without the
wizard, and the launch. Launching saves the profile, makes the run dir and starts the detached runner.
"""

from __future__ import annotations

from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from ...errors import UserError
from ..choices import headless_command, profile_path, relative
from .base import StepScreen


class ReviewScreen(StepScreen):
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #review-where {
        height: auto;
        padding: 0 1;
    }

    #review-yaml {
        height: 1fr;
    }

    #review-problem {
        height: auto;
        max-height: 6;
        padding: 0 1;
    }
    """
    STEP = "review"
    AUTO_FOCUS = "#review-yaml"
    NEXT_LABEL = "Launch ▶"

    def body(self) -> ComposeResult:
        yield Static("", id="review-where")
        with VerticalScroll(id="review-yaml", classes="panel") as box:
            box.border_title = "Profile"
            yield Static("", id="review-profile")
        yield Static("", id="review-problem")

    def on_mount(self) -> None:
        super().on_mount()
        self.launching = False
        profile = self.state.profile
        name = self.state.profile_name or "profile"
        if profile is None:
            self.query_one("#review-profile", Static).update(Text("No valid profile yet: go back to Settings.",
                                                                  style="red"))
            self.update_nav()
            return
        from ...profile_io import dump_profile

        where = Text.assemble(("Saved as    ", "bold"), relative(profile_path(self.state, name), self.state.workdir),
                              ("\nHeadless    ", "bold"), (headless_command(self.state, name), "cyan"),
                              ("\nRuns go to  ", "bold"), self._runs_dir(profile))
        self.query_one("#review-where", Static).update(where)
        self.query_one("#review-profile", Static).update(
            Syntax(dump_profile(profile), "yaml", theme="ansi_dark", background_color="default"))
        self.say("Launch saves the profile and starts the run; it keeps going if you quit")
        self.update_nav()

    def _runs_dir(self, profile) -> str:
        from pathlib import Path

        folder = (self.state.profiles_dir / Path(profile.output.runs_dir)).resolve()
        return relative(folder, self.state.workdir.resolve()) + "/"

    def ready(self) -> bool:
        return self.state.profile is not None and not getattr(self, "launching", False)

    async def advance(self) -> None:
        self.launching = True
        self.update_nav()
        self.say("saving the profile and starting the runner…")
        self._launch()

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def _launch(self) -> None:
        from ..choices import save_and_launch

        try:
            run, proc, path = save_and_launch(self.state, self.state.profile, self.state.profile_name)
        except UserError as exc:
            self.app.call_from_thread(self._failed, exc)
            return
        self.app.call_from_thread(self._launched, run, proc)

    def _failed(self, exc: UserError) -> None:
        self.launching = False
        text = Text("Not launched: ", style="bold red")
        text.append(str(exc))
        self.query_one("#review-problem", Static).update(text)
        self.say("fix the problem (Back) and launch again")
        self.update_nav()

    def _launched(self, run, proc) -> None:
        self.app.launched.append(run)
        self.app.processes.append(proc)
        self.dismiss("launched")
