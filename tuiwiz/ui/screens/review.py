"""Step 6: the profile as it will be saved, where, the command that runs it again without the
wizard, and the launch. Launching saves the profile, makes the run dir and starts the detached runner.
"""

from __future__ import annotations

from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from tuiwiz.errors import UserError
from tuiwiz.ui.choices import headless_command, node_commands_for, profile_path, relative
from tuiwiz.ui.screens.base import StepScreen

PROBE_STEPS = 3


def probe_text(result) -> Text:
    """Estimated against measured peak memory, per attempt, and what was changed to fit."""
    where = "GPU" if result.device == "cuda" else "RAM"
    text = Text("Probe run: ", style="bold")
    text.append("fits" if result.fits else "does not fit", style="bold green" if result.fits else "bold red")
    text.append(f" ({result.budget_mb:,.0f} MiB of {where} available)")
    for attempt in result.attempts:
        measured = f"{attempt.measured_mb:,.0f} MiB" if attempt.measured_mb is not None else "-"
        t = attempt.profile.training
        text.append(f"\n  estimated {attempt.estimated_mb:,.0f} MiB, measured {measured} "
                    f"(micro-batch {t.per_device_train_batch_size}, max length {attempt.profile.data.max_length})")
        if attempt.error_kind:
            text.append(f" {attempt.error_kind}", style="red")
    for change in result.changes:
        text.append(f"\n  changed: {change}", style="yellow")
    if result.needs_consent:
        text.append(f"\n  would need: {result.needs_consent} (go Back to Settings to shorten it)", style="yellow")
    return text


MAX_NODE_LINES = 4  # more nodes than this would push the profile off an 80x24 screen


def node_lines(profile, commands: list[str]) -> Text:
    """One line per node with the command to run there; past MAX_NODE_LINES the middle ones, which
    differ only in their rank, are summed up in one line (--print-launch lists them all)."""
    from tuiwiz.run.distributed import main_port

    nodes = profile.distributed.nodes
    text = Text.assemble(("\nHeadless    ", "bold"), f"one command on each of {nodes.count} machines, "
                                                     f"main {nodes.main_address}:{main_port(profile)}")
    shown = list(enumerate(commands))
    if len(shown) > MAX_NODE_LINES:
        shown = [*shown[:MAX_NODE_LINES - 2], None, shown[-1]]
    for item in shown:
        if item is None:
            text.append(f"\n{'':12}… nodes {MAX_NODE_LINES - 2} to {nodes.count - 2} alike, each with its own "
                        "--node-rank", style="dim")
            continue
        rank, command = item
        text.append(f"\n{'Node ' + str(rank):<12}", style="bold")
        text.append(command, style="cyan")
    return text


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

    #review-probe {
        height: auto;
        max-height: 8;
        padding: 0 1;
    }

    #review-problem {
        height: auto;
        max-height: 6;
        padding: 0 1;
    }
    """
    STEP = "review"
    AUTO_FOCUS = "#review-yaml"
    BINDINGS = [Binding("p", "probe", "Probe run", id="probe")]
    NEXT_LABEL = "Launch ▶"

    def body(self) -> ComposeResult:
        yield Static("", id="review-where")
        with VerticalScroll(id="review-yaml", classes="panel") as box:
            box.border_title = "Profile"
            yield Static("", id="review-profile")
        yield Static("", id="review-probe")
        yield Static("", id="review-problem")

    def on_mount(self) -> None:
        super().on_mount()
        self.launching = False
        self.probing = False
        self.probe_result = None
        if self.state.profile is None:
            self.query_one("#review-profile", Static).update(Text("No valid profile yet: go back to Settings.",
                                                                  style="red"))
            self.update_nav()
            return
        self._show_profile()
        if self.state.probe_first:
            self.action_probe()  # Launch waits for it: the fit is measured before the real run
        else:
            self.say("Launch saves the profile and starts the run (p first: a probe run checks it fits)")
            self.update_nav()

    def _show_profile(self) -> None:
        from tuiwiz.profile.io import dump_profile

        profile = self.state.profile
        name = self.state.profile_name or "profile"
        nodes = node_commands_for(self.state, name, profile)
        command = (Text.assemble(("\nHeadless    ", "bold"), (headless_command(self.state, name), "cyan"))
                   if nodes is None else node_lines(profile, nodes))
        where = Text.assemble(("Saved as    ", "bold"), relative(profile_path(self.state, name), self.state.workdir),
                              command, ("\nRuns go to  ", "bold"), self._runs_dir(profile))
        self.query_one("#review-where", Static).update(where)
        self.query_one("#review-profile", Static).update(
            Syntax(dump_profile(profile), "yaml", theme="ansi_dark", background_color="default"))

    def _runs_dir(self, profile) -> str:
        from pathlib import Path

        folder = (self.state.profiles_dir / Path(profile.output.runs_dir)).resolve()
        return relative(folder, self.state.workdir.resolve()) + "/"

    def ready(self) -> bool:
        return (self.state.profile is not None and not getattr(self, "launching", False)
                and not getattr(self, "probing", False))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "probe":
            return (self.state.profile is not None and not getattr(self, "probing", False)
                    and not getattr(self, "launching", False)) or None
        return super().check_action(action, parameters)

    # ---------------------------------------------------------------- the probe run

    def action_probe(self) -> None:
        """A few real steps at full length in the real runner: the measured peak against the estimate."""
        self.probing = True
        self.update_nav()
        self.query_one("#review-probe", Static).update(Text(
            f"Probe run: {PROBE_STEPS} real steps at the longest length, in the runner, before the launch…",
            style="italic"))
        self.say("probing: Launch is ready when the probe has measured the fit")
        state, profile, name = self.state, self.state.profile, self.state.profile_name

        def job() -> None:
            from tuiwiz.profile.io import LoadedProfile, resolve_paths
            from tuiwiz.run.probe import probe

            loaded = LoadedProfile(resolve_paths(profile, state.profiles_dir), profile_path(state, name))
            try:
                result = probe(loaded, steps=PROBE_STEPS, on_run=self.app.probe_runs.append)
            except UserError as exc:
                self.app.call_from_thread(self._probed, None, exc)
                return
            self.app.call_from_thread(self._probed, result, None)

        # The app owns the probe: it runs the trainer, and must not die with a screen.
        self.app.run_worker(job, thread=True, group="probe", exclusive=True, exit_on_error=False)

    def _probed(self, result, error: UserError | None) -> None:
        self.probing = False
        self.probe_result = result
        panel = self.query_one("#review-probe", Static) if self.is_attached else None
        if error is not None:
            if panel is not None:
                panel.update(Text(f"Probe run failed: {error}", style="red"))
                self.say("the probe failed (see above): Back to change the settings, p to probe again")
                self.update_nav()
            return
        text = probe_text(result)
        if result.fits:
            # keep the user's choices, add what the probe measured (and any step-down it needed)
            self.state.profile = result.profile
        if panel is not None:
            panel.update(text)
            self._show_profile()
            self.say("the probe fits: launch when ready" if result.fits else "the probe says it does not fit")
            self.update_nav()



    async def advance(self) -> None:
        self.launching = True
        self.update_nav()
        self.say("saving the profile and starting the runner…")
        self._launch()

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def _launch(self) -> None:
        from tuiwiz.ui.choices import save_and_launch

        try:
            run, proc, _path = save_and_launch(self.state, self.state.profile, self.state.profile_name)
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
