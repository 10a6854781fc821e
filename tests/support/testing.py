"""Helpers for the UI's tests, screenshots and benchmarks: fixed run data, screen text, waiting.

Nothing here runs in the app itself: it lives with the tests (bench/ui_events.py imports it from the repo root).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

FIXED_TIME = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: the clock of snapshot tests


def fixed_clock() -> float:
    return FIXED_TIME + 95.0


SIZE = (80, 24)  # the terminal the UI is designed for


def app_at(state, step: str, **kwargs):
    """The app opened at ``step`` of ``state``, as a screen test wants it: no attach offer, no blink, fixed clock."""
    from tuiwiz.ui.app import TuiwizApp

    return TuiwizApp(state, start=step, offer_attach=False, blink=False, clock=fixed_clock, **kwargs)


def on(app, name: str) -> bool:
    """The app shows the screen of class ``name``."""
    return type(app.screen).__name__ == name


def screen_text(app) -> str:
    """What the terminal shows now, as plain text (for assertions)."""
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, color_system=None)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def widget_text(widget, width: int = 400) -> str:
    """A Static's content as plain text, unwrapped (lines as wide as ``width``)."""
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None, legacy_windows=False)
    content = getattr(widget, "content", None)
    console.print(content if content is not None and not isinstance(content, str) else widget.render())
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def wait_for(pilot, predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    """Pause the pilot until ``predicate()`` holds; fail with the screen's text when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            await pilot.pause()  # let the screen draw what made the predicate true
            return
        await pilot.pause(step)
    raise AssertionError(f"timed out after {timeout} s; the screen shows:\n{screen_text(pilot.app)}")


def _log(step: int, max_steps: int, t: float) -> dict:
    loss = 2.0 + 6.0 * math.exp(-step / 30) + 0.15 * math.sin(step / 3)
    lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / max_steps))
    return {"type": "log", "time": round(t, 3), "step": step, "max_steps": max_steps, "epoch": round(step / 20, 4),
            "loss": round(loss, 4), "learning_rate": lr, "grad_norm": 1.5, "tokens_seen": step * 224,
            "tokens_per_second": 250.0, "memory": {"rss_mb": 610.5}}


def write_fixture_run(runs_dir: Path, run_id: str = "demo-lora-20260101-000000-beef", *, status: str = "completed",
                      steps: int = 120, max_steps: int | None = None, host: str | None = None,
                      register: bool = True) -> Path:
    """A run dir with a fixed events.jsonl, train.log and state.json (no process behind it).

    ``status`` is what the state file says. A completed run ends at its last step; the others
    stop at ``steps`` of ``max_steps`` (200 unless given). A "running" run shows as running only
    while ``state.json`` names a live process: see ``hold_running``.
    """
    import socket

    from tuiwiz.run.rundir import RunDir
    from tuiwiz.run.rundir import register as register_run

    if max_steps is None:
        max_steps = steps if status == "completed" else 200
    path = Path(runs_dir) / run_id
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    t0 = FIXED_TIME
    events = [
        {"type": "status", "time": t0, "status": "loading", "resume": False},
        {"type": "run_start", "time": t0 + 2, "run_id": run_id, "task": "sft", "method": "lora", "model": "demo",
         "learning_rate": 0.002, "resumed_from": None, "pid": 4242, "model_path": "demo", "precision": "fp32",
         "device": "cpu", "world_size": 1, "params_total": 1206656, "params_trainable": 155648,
         "train_examples": 153, "eval_examples": 17, "data_format": "alpaca", "labels": None},
        {"type": "status", "time": t0 + 3, "status": "running", "step": 0, "max_steps": max_steps},
    ]
    for step in range(1, steps + 1):
        if step == 1 or step % 5 == 0:
            events.append(_log(step, max_steps, t0 + 3 + step * 0.5))
        if step % 40 == 0:
            events.append({"type": "eval", "time": t0 + 3 + step * 0.5, "step": step,
                           "eval_loss": round(2.4 + 5.0 * math.exp(-step / 30), 4), "eval_runtime": 0.4})
        if step % 100 == 0:
            events.append({"type": "checkpoint", "time": t0 + 3 + step * 0.5, "step": step,
                           "path": str(path / "checkpoints" / f"checkpoint-{step}")})
    end = t0 + 3 + steps * 0.5
    if status == "completed":
        events.append({"type": "run_end", "time": end, "status": "completed", "step": steps,
                       "metrics": {"train_runtime": steps * 0.5, "train_loss": 3.1, "tokens_seen": steps * 224,
                                   "train_tokens_per_second": 448.0}, "output": str(path / "output")})
        events.append({"type": "status", "time": end, "status": "completed"})
    elif status == "failed":
        events.append({"type": "error", "time": end, "kind": "oom", "message": "CUDA out of memory at step 120",
                       "hint": "lower training.per_device_train_batch_size or turn on gradient_checkpointing"})
        events.append({"type": "run_end", "time": end, "status": "failed", "error_kind": "oom"})
        events.append({"type": "status", "time": end, "status": "failed"})
    elif status == "stopped":
        events.append({"type": "checkpoint", "time": end, "step": steps,
                       "path": str(path / "checkpoints" / f"checkpoint-{steps}")})
        events.append({"type": "status", "time": end, "status": "stopped", "step": steps})
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    log_lines = [f"{{'loss': '{_log(s, max_steps, 0)['loss']}', 'epoch': '{s / 20:.2f}'}}"
                 for s in range(5, steps + 1, 5)]
    (path / "train.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    (path / "profile.yaml").write_text(
        "version: 1\ntask: sft\nmodel:\n  name_or_path: demo\ndata:\n  path: demo:alpaca\n  max_length: 128\n"
        f"method:\n  type: lora\ntraining:\n  max_steps: {max_steps}\n", encoding="utf-8")
    state = {"run_id": run_id, "status": status, "host": host or socket.gethostname(), "pid": None, "pgid": None,
             "create_time": None, "created": t0, "updated": end, "exit_code": 0 if status != "failed" else 1,
             "error": "CUDA out of memory at step 120" if status == "failed" else None}
    (path / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    if register:
        register_run(RunDir(path))
    return path


def hold_running(run_dir: Path, pid: int, create_time: float) -> None:
    """Point a fixture run's state at a live process (e.g. a ``sleep``), so it shows as running."""
    state_file = Path(run_dir) / "state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    state.update(status="running", pid=pid, pgid=pid, create_time=create_time, exit_code=None, error=None)
    state_file.write_text(json.dumps(state, indent=2), encoding="utf-8")


def prepared_state(workdir: Path, *, until: str = "review", model: str = "demo", data: str = "demo:alpaca",
                   option: str | None = None, max_steps: int | None = None, probe_first: bool = False):
    """A WizardState filled in up to (not including) the step ``until``, by the functions the steps use.

    Needs the demo model built (``tuiwiz demo``) when ``model`` is "demo". The Review step's automatic
    probe is off unless asked for: a screen test or a screenshot shows the step as it opens, not a
    probe's timing (the whole-flow tests start from a fresh WizardState, with the probe on).
    """
    from tuiwiz.plan.hardware import probe
    from tuiwiz.plan.modelinfo import inspect_model
    from tuiwiz.ui.choices import STEPS, WizardState, check_data, default_profile_name, draft_profile, recommend_for

    state = WizardState(workdir=Path(workdir), probe_first=probe_first)
    stop = STEPS.index(until)
    if stop > 0:
        state.machine = probe(state.workdir)
    if stop > 1:
        state.model_name, state.model_info = model, inspect_model(model)
    if stop > 2:
        state.data_path = data
        check = check_data(state, max_length=128)
        state.data, state.length_stats = check.data, check.stats
    if stop > 3:
        state.recommendation = recommend_for(state)
        state.option_key = option or state.recommendation.best.key
    if stop > 4:
        profile = draft_profile(state)
        if max_steps is not None:
            profile = profile.model_copy(update={"training": profile.training.model_copy(
                update={"max_steps": max_steps, "logging_steps": 1})})
        state.profile = profile
        state.profile_name = default_profile_name(state, profile)
    return state


RECORDED = Path(__file__).parent / "recorded"  # events of real `--jsonl` sessions on the demo (see Replay)


class Replay:
    """Stands in for JsonlProcess with the events of a real session recorded in recorded/NAME.jsonl.

    The events without a request id come at the start (``ready``, ``progress``, ``result``); those of the
    n-th recorded request come when the screen sends its n-th ``ask`` (renumbered to its id). Delivered
    from a thread, as the real reader does. For scenes and layout tests: what the real command says is
    tested in tests/test_ui_post.py.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, args, on_event, **kwargs):
        import threading

        self.args, self.on_event, self.returncode = list(args), on_event, None
        events = [json.loads(line) for line in (RECORDED / f"{self.name}.jsonl").read_text("utf-8").splitlines()]
        self.start = [e for e in events if "id" not in e]
        ids = sorted({e["id"] for e in events if "id" in e})
        self.answers = [[e for e in events if e.get("id") == i] for i in ids]
        self.sent: list[dict] = []
        self._thread = threading.Thread(target=self._deliver, args=(self.start,), daemon=True)
        self._thread.start()
        return self

    def _deliver(self, events: list[dict]) -> None:
        for event in events:
            self.on_event(dict(event))
        if self.start and self.start[-1].get("event") in ("result", "error") and events is self.start:
            self.returncode = 0 if self.start[-1]["event"] == "result" else 2
            self.on_event({"event": "exit", "code": self.returncode, "stderr": ""})

    def send(self, op: str, **fields) -> bool:
        import threading

        self.sent.append({"op": op, **fields})
        if op == "ask" and self.answers:
            answer = [{**e, "id": fields["id"]} for e in self.answers.pop(0)]
            self._thread = threading.Thread(target=self._deliver, args=(answer,), daemon=True)
            self._thread.start()
        return True

    @property
    def running(self) -> bool:
        return self.returncode is None

    def cancel(self) -> None:
        self.returncode = 130

    def close(self, timeout: float = 5.0) -> int:
        self.returncode = 0 if self.returncode is None else self.returncode
        return self.returncode


async def settle(pilot, *, quiet: float = 0.15, timeout: float = 5.0) -> None:
    """Wait until the screen stops changing (two identical frames ``quiet`` seconds apart): a loaded
    machine can finish a layout pass (a scrollbar, a focus scroll) after a scene says it is ready."""
    deadline = time.monotonic() + timeout
    before = screen_text(pilot.app)
    while time.monotonic() < deadline:
        await pilot.pause(quiet)
        now = screen_text(pilot.app)
        if now == before:
            return
        before = now
