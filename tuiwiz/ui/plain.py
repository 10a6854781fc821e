"""``tuiwiz --plain``: the wizard's six steps as plain prompts (questionary), for terminals where a
full-screen app is unwelcome. Same state, same profile, same launch and the headless follower.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.ui.choices import (
    DEMO_DATA_FOR_TASK,
    FOLLOW_UP_TASKS,
    FORMATS,
    TASKS,
    WizardState,
    check_data,
    check_profile_name,
    default_profile_name,
    default_start,
    draft_profile,
    form_fields,
    form_values,
    headless_command,
    node_commands_for,
    profile_from_form,
    recommend_for,
    relative,
    save_and_launch,
    start_candidates,
    suggested_max_length,
)
from tuiwiz.units import count, mib, size

CUSTOM = "another model: a local folder or a hub id…"


class Cancelled(Exception):
    """The user pressed Ctrl-C or Ctrl-D at a prompt."""


class Prompts:
    """questionary with optional input/output (tests pass a pipe); every answer None means cancel."""

    def __init__(self, **io) -> None:
        self.io = io

    def _ask(self, question):
        answer = question.ask(patch_stdout=False)
        if answer is None:
            raise Cancelled()
        return answer

    def select(self, message: str, choices: list, default=None):
        import questionary

        return self._ask(questionary.select(message, choices=choices, default=default, **self.io))

    def text(self, message: str, default: str = "", validate=None) -> str:
        import questionary

        return self._ask(questionary.text(message, default=default, validate=validate, **self.io))

    def confirm(self, message: str, default: bool = True) -> bool:
        import questionary

        return self._ask(questionary.confirm(message, default=default, **self.io))


def _print(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def _hardware(state: WizardState) -> None:
    from tuiwiz.plan.hardware import probe

    m = probe(state.workdir)
    state.machine = m
    _print("", "1 Hardware")
    _print(f"  CPU   {m.cpu_model} ({m.cpu_count_logical} threads)",
           f"  RAM   {mib(m.ram_available_mb)} available of {mib(m.ram_total_mb)}",
           f"  Disk  {mib(m.disk_free_mb)} free" if m.disk_free_mb is not None else "  Disk  unknown")
    for g in m.gpus:
        _print(f"  GPU {g.index} {g.name}: {mib(g.memory_used_mb)} used of {mib(g.memory_total_mb)}, "
               f"compute {g.compute_capability[0]}.{g.compute_capability[1]}, bf16 {'yes' if g.bf16 else 'no'}")
    if not m.has_gpu:
        _print("  CPU only: training runs on the CPU (fine for the demo and small models).")
    if m.notice:
        _print(f"  ({m.notice})")


def _inspect(name: str):
    from tuiwiz.plan.modelinfo import inspect_model
    from tuiwiz.ui.choices import ensure_demo_model_subprocess

    try:
        return inspect_model(name, online=True)
    except UserError as exc:
        if name in ("demo", "demo-t5") and "not built" in exc.message:
            _print("  building the demo model (once, about ten seconds)…")
            ensure_demo_model_subprocess()
            return inspect_model(name, online=True)
        raise


def _model(state: WizardState, ask: Prompts) -> None:
    from tuiwiz.demo.builtin import BUILTIN_MODELS
    from tuiwiz.plan.modelinfo import cached_models

    _print("", "2 Model")
    choices = list(BUILTIN_MODELS) + [m.repo_id for m in cached_models()] + [CUSTOM]
    while True:
        name = ask.select("Model", choices, default=state.model_name if state.model_name in choices else None)
        if name == CUSTOM:
            name = ask.text("Folder or hub id (the hub model must be in the Hugging Face cache)").strip()
        try:
            info = _inspect(name)
        except UserError as exc:
            _print(f"  {exc}")
            continue
        state.model_name, state.model_info = name, info
        _print(f"  {info.architecture} ({info.model_type}), {count(info.num_parameters)} parameters, "
               f"{size(info.size_on_disk)} on disk, {info.dtype or '?'}, context {info.context_length or '?'}, "
               f"license {info.license or 'not stated'}")
        return


def _start(state: WizardState, ask: Prompts) -> None:
    """A follow-up task (DPO after SFT) may start from a completed run of the model: the newest SFT one unless
    the user picks another, or the model itself."""
    state.start_from = None
    if state.task not in FOLLOW_UP_TASKS:
        return
    candidates = start_candidates(state)
    if not candidates:
        return
    itself = "the model itself"
    labels = {c.label: c.path for c in candidates}
    default = next((c.label for c in candidates if c.path == default_start(state, candidates)), itself)
    chosen = ask.select("Start from", [*labels, itself], default=default)
    state.start_from = labels.get(chosen)


def _data(state: WizardState, ask: Prompts) -> None:
    from rich.console import Console
    from rich.text import Text

    from tuiwiz.ui.render import example_view

    _print("", "3 Data")
    state.task = ask.select("Task", list(TASKS), default=state.task)
    _start(state, ask)
    while True:
        state.data_path = ask.text("Data: a file, a hub dataset id, or demo:NAME",
                                   default=DEMO_DATA_FOR_TASK[state.task]).strip()
        state.data_format = ask.select("Format", list(FORMATS), default=state.data_format)
        check = check_data(state, max_length=2048)
        if check.error is not None:
            _print(f"  problem: {check.error}")
            continue
        break
    state.data, state.length_stats = check.data, check.stats
    if check.note:
        _print(f"  note: {check.note}")
    if check.data is None:
        return
    _print(f"  {len(check.data):,} examples, format {check.data.format}")
    console = Console()
    if check.stats is not None:
        from tuiwiz.data.rendering import ModelText

        text = ModelText(state.model_info.path)
        for i, record in enumerate(check.data.records[:3]):
            console.print(Text(f"  example {i + 1} (line {check.data.source_lines[i]}); trained part in bold",
                               style="dim"))
            console.print(example_view(record, check.data.format, text))
        suggested = suggested_max_length(state)
        _print(f"  token lengths: p50 {check.stats.p50}, p95 {check.stats.p95}, max {check.stats.max}; "
               f"suggested max length {suggested}")


def _method(state: WizardState, ask: Prompts) -> None:
    import questionary

    _print("", "4 Method")
    rec = recommend_for(state)
    state.recommendation = rec
    choices = []
    for o in rec.options:
        mark = "★" if o is rec.best else ("✓" if o.fits else "✗")
        title = f"{mark} {o.title}: needs {size(o.needed)}" + (f" ({o.rejected})" if o.rejected else "")
        choices.append(questionary.Choice(title, value=o.key, disabled=None if o.fits else "does not fit"))
    if rec.best is None:
        raise UserError("no option fits this machine", hint="pick a smaller model or shorter max length",
                        kind="input")
    state.option_key = ask.select("Method (★ recommended)", choices, default=rec.best.key)
    _print(f"  {state.option().reason}")


def _settings(state: WizardState, ask: Prompts) -> None:
    _print("", "5 Settings (Enter keeps a value; the profile schema checks each one)")
    profile = draft_profile(state)
    fields = form_fields(profile)
    values = form_values(profile, fields)
    advanced = False
    for f in fields:
        if f.advanced and not advanced:
            if not ask.confirm("Change the advanced settings?", default=False):
                break
            advanced = True

        def valid(text: str, key: str = f.key):
            try:
                profile_from_form(profile, {**values, key: text})
            except UserError as exc:
                return exc.message if exc.field == key or not exc.field else f"{exc.field}: {exc.message}"
            return True

        if f.kind == "flag":
            values[f.key] = ask.confirm(f.key, default=bool(values[f.key]))
        elif f.kind == "choice":
            values[f.key] = ask.select(f.key, list(f.choices), default=values[f.key] or None)
        else:
            values[f.key] = ask.text(f.key, default=str(values[f.key]), validate=valid)
    state.profile = profile_from_form(profile, values)
    name = default_profile_name(state, state.profile)
    state.profile_name = ask.text("Profile name", default=name,
                                  validate=lambda t: check_profile_name(t.strip()) or True).strip()


def _review(state: WizardState, ask: Prompts) -> int:
    from tuiwiz.profile.io import dump_profile
    from tuiwiz.run.follow import follow, print_result

    _print("", "6 Review", "")
    _print(dump_profile(state.profile))
    from tuiwiz.ui.choices import profile_path

    _print(f"saved as   {relative(profile_path(state, state.profile_name), state.workdir)}",
           f"headless   {headless_command(state, state.profile_name)}")
    for rank, command in enumerate(node_commands_for(state, state.profile_name, state.profile) or []):
        _print(f"node {rank}     {command}")
    if not ask.confirm("Save the profile and launch the run?", default=True):
        _print("not launched")
        return 0
    run, proc, _path = save_and_launch(state, state.profile, state.profile_name)
    _print(f"run {run.run_id} in {run.path}",
           "Ctrl-C stops it (a checkpoint is saved); the run does not depend on this terminal.")
    # sys.stdout as it is now (follow's default is bound when tuiwiz.run.follow is first imported)
    result = follow(run, proc, out=sys.stdout)
    print_result(run, result, out=sys.stdout)
    return result.exit_code


def run_plain(state: WizardState | None = None, **io) -> int:
    """The wizard as prompts. ``io`` (input=, output=) goes to every questionary prompt."""
    state = state or WizardState(workdir=Path.cwd())
    ask = Prompts(**io)
    try:
        _hardware(state)
        _model(state, ask)
        _data(state, ask)
        _method(state, ask)
        _settings(state, ask)
        return _review(state, ask)
    except Cancelled:
        _print("cancelled")
        return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
