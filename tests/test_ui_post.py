"""After training, inside the app: the Chat screen streams from a real model process, merge and export
screens run the real commands. The model is the demo trained with LoRA (shared with test_merge)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tuiwiz.ui.app import TuiwizApp

from .support import ROOT
from .support.testing import SIZE, fixed_clock, on, screen_text, wait_for
from .support.trained_runs import copy_run

COW = "What sound does the cow make?"


def chat_app() -> TuiwizApp:
    return TuiwizApp(start="hardware", offer_attach=False, blink=False, clock=fixed_clock)


async def open_chat(app, pilot, run, *, compare: bool):
    from tuiwiz.ui.screens.chat import ChatScreen

    screen = ChatScreen(str(run.path), compare=compare, label=run.run_id)
    app.push_screen(screen)
    await wait_for(pilot, lambda: screen.ready, timeout=120)  # the model process loads peft and the model
    return screen


async def ask(pilot, screen, text: str, *, temperature: str = "0", max_tokens: str = "24") -> None:
    from textual.widgets import Input

    screen.query_one("#chat-temperature", Input).value = temperature
    screen.query_one("#chat-max", Input).value = max_tokens
    field = screen.query_one("#chat-input", Input)
    field.focus()
    field.value = text
    await pilot.press("enter")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_chat_streams_text_before_the_answer_ends(ui_env, trained_run):
    run = trained_run("lora")
    app = chat_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(app, pilot, run, compare=False)
        assert "ready on cpu" in screen_text(app) and screen.adapters == [run.run_id]
        # the base model (adapter off, chosen in the model list) has learned no end of answer: a long stream
        from textual.widgets import Select

        screen.query_one("#chat-adapter", Select).value = "base"
        await wait_for(pilot, lambda: screen.active == "base")
        assert "base model (adapter off)" in screen_text(app)
        # text is drawn while the model process still generates: every update of the answer's bubble is
        # recorded with whether the answer had ended (polling from the pilot cannot see this: its pauses
        # wait for the screen to be idle, which a fast stream only is once it has ended)
        updates: list[tuple[int, bool]] = []
        show = screen._show_tokens

        def recording(pieces: list[str]) -> None:
            if pieces and screen.current is not None:
                updates.append((len(screen.current[2].text) + len("".join(pieces)), bool(screen.finished)))
            show(pieces)

        screen._show_tokens = recording
        await ask(pilot, screen, COW, max_tokens="600")  # seconds of streaming, even on a quiet machine
        await wait_for(pilot, lambda: screen.finished, timeout=60)
        bubble = screen.query(".chat-answer").last()
        done = screen.finished[0]
        tokens = [e for e in screen.events if e["event"] == "token"]
        assert len(tokens) >= 3 and done["tokens"] >= len(tokens) and not done["stopped"]
        before_the_end = [size for size, ended in updates if not ended]
        assert len(before_the_end) >= 2 and before_the_end[0] < len(bubble.text), updates  # drawn in parts
        assert tokens[0]["_received"] < tokens[-1]["_received"] <= done["_received"]
        assert bubble.first_shown is not None and bubble.first_shown < done["_received"]
        # the column follows the answer's end: some of its last words are on the screen
        from tuiwiz.post.chat import printable

        await pilot.pause()
        last_words = [word for word in printable(bubble.text).split()[-12:] if len(word) >= 3]
        assert any(word in screen_text(app) for word in last_words), (last_words, screen_text(app))
        assert bubble.text == "".join(e["text"] for e in tokens)
        assert screen.histories["tuned"][-1] == {"role": "assistant", "content": bubble.text}
        # ctrl+l clears the conversation; the next answer starts from scratch
        await pilot.press("ctrl+l")
        assert screen.histories["tuned"] == [] and not screen.query(".chat-answer")
        # another run's adapter on the same base, picked with ctrl+o from the runs tuiwiz knows, then switched to
        from tuiwiz.run.rundir import register

        dora = trained_run("dora")
        register(dora)  # as every run tuiwiz starts is
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: on(app, "ChoiceDialog") and dora.run_id in screen_text(app))
        assert [label for _, label in app.screen.choices] == [dora.run_id]  # not the one loaded already
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: len(screen.adapters) == 2, timeout=60)
        select = screen.query_one("#chat-adapter", Select)
        assert [value for _, value in select._options][-3:] == [run.run_id, dora.run_id, "base"]
        select.value = dora.run_id
        await wait_for(pilot, lambda: screen.active == dora.run_id, timeout=30)
        await ask(pilot, screen, COW, max_tokens="12")
        await wait_for(pilot, lambda: len(screen.finished) == 2, timeout=60)
        assert screen.query(".chat-answer").last().who == dora.run_id
        await pilot.press("escape")
        await wait_for(pilot, lambda: not on(app, "ChatScreen"))
        await wait_for(pilot, lambda: screen.client.returncode is not None, timeout=30)
        assert screen.client.returncode == 0


@pytest.mark.slow
@pytest.mark.asyncio
async def test_chat_side_by_side_answers_differ_and_stop_ends_an_answer(ui_env, trained_run):
    run = trained_run("lora")
    app = chat_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_chat(app, pilot, run, compare=True)
        assert screen.query_one("#chat-base").display and screen.query_one("#chat-tuned").display
        await ask(pilot, screen, COW, max_tokens="16")
        await wait_for(pilot, lambda: len(screen.finished) == 2, timeout=90)
        base = screen.histories["base"][-1]["content"]
        tuned = screen.histories["tuned"][-1]["content"]
        requests = [e for e in screen.events if e["event"] == "done"]
        assert base != tuned, (base, tuned)
        # 30 steps teach the answers' shape ("The cow says moo."), as the engine's own test checks
        assert tuned.startswith("The") and not base.startswith("The"), (base, tuned)
        assert len(requests) == 2
        text = screen_text(app)
        assert "base model (adapter off)" in text and f"adapter {run.run_id}"[:30] in text
        # a long answer, stopped after its first tokens: the pair's second answer is not asked. Sampled hot and
        # from the whole vocabulary, the base model's answer rarely ends by itself early; when it does before
        # the stop arrives, the pair completes, and it is asked again.
        from textual.widgets import Input

        screen.query_one("#chat-top-p", Input).value = "1"
        for _ in range(4):  # seconds of streaming each: time for the stop to land
            asked = len(screen.finished)
            await ask(pilot, screen, "Tell me a long story about a cow.", temperature="2", max_tokens="2000")
            def pair_done(asked=asked) -> bool:
                return screen.current is None and not screen.pending and len(screen.finished) > asked

            await wait_for(pilot, lambda: pair_done() or (screen.current is not None
                                                          and len(screen.current[2].text) > 0), timeout=60)
            if not pair_done():
                await pilot.press("ctrl+s")
                await wait_for(pilot, pair_done, timeout=60)
            if screen.finished[-1]["stopped"]:
                break
        assert screen.finished[-1]["stopped"] and screen.finished[-1]["tokens"] < 2000, screen.finished[-1]
        await wait_for(pilot, lambda: "[stopped]" in screen_text(app), timeout=10)  # drawn at the next refresh
        assert screen.pending == [] and screen.current is None  # a stop ends the pair: nothing more is asked
        await pilot.press("escape")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_merge_and_export_screens_run_the_real_commands(ui_env, trained_run, tmp_path):
    run = trained_run("lora")
    copy = copy_run(run, tmp_path / "runs" / run.run_id).path  # merge into a copy: the trained run is shared
    app = TuiwizApp(attach=str(copy), offer_attach=False, blink=False, clock=fixed_clock)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None, timeout=30)
        await pilot.press("m")
        await wait_for(pilot, lambda: on(app, "JobScreen") and app.screen.result is not None, timeout=120)
        job = app.screen
        text = screen_text(app)
        assert "✓ Merged into" in text and "verified: logits within" in text, text
        assert job.result["max_diff"] <= job.result["tolerance"] and job.result["changed_diff"] > 0
        stages = [e["stage"] for e in job.events if e["event"] == "progress"]
        assert "merge" in stages and "verify" in stages
        assert (copy / "merged" / "model.safetensors.index.json").exists()
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "MonitorScreen"))
        # merging again: the folder exists, the app asks before replacing it
        before = (copy / "merged" / "tuiwiz.json").stat().st_mtime_ns
        await pilot.press("m")
        # the dialog is drawn a frame or more after it is pushed: wait for its words, not only the screen
        await wait_for(pilot, lambda: on(app, "ConfirmDialog") and "Replace it with a new merge?" in screen_text(app),
                       timeout=120)
        # the message names the folder, so where its lines wrap depends on the path: read it whole
        assert "already exists" in app.screen.message
        await pilot.press("y")
        await wait_for(pilot, lambda: on(app, "JobScreen") and app.screen.result is not None, timeout=120)
        assert app.screen.args[-1] == "--overwrite" and "✓ Merged into" in screen_text(app)
        assert (copy / "merged" / "tuiwiz.json").stat().st_mtime_ns > before
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "MonitorScreen"))
        # export the adapter alone
        await pilot.press("e")
        await wait_for(pilot, lambda: on(app, "ChoiceDialog"))
        await pilot.press("down", "enter")  # adapter
        await wait_for(pilot, lambda: on(app, "JobScreen") and app.screen.result is not None, timeout=120)
        assert "✓ Exported adapter" in screen_text(app)
        folder = copy / "export-adapter"
        assert (folder / "adapter_config.json").exists() and (folder / "README.md").exists()
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "MonitorScreen"))


def test_a_cancelled_job_removes_what_it_wrote(tmp_path):
    """SIGTERM (the screen's Cancel) interrupts a --jsonl job; its own cleanup runs; the app is told."""
    script = f"""
import shutil, sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from tuiwiz.post.jsonl import run_job
staging = Path({str(tmp_path / "staging")!r})
def job(channel):
    staging.mkdir()
    try:
        channel.progress("merge", 0, 3)
        print("a library printing to stdout", flush=True)
        time.sleep(60)
    except BaseException:
        shutil.rmtree(staging)
        raise
    return {{}}
sys.exit(run_job(job))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = json.loads(proc.stdout.readline())
    assert first == {"event": "progress", "stage": "merge", "done": 0, "total": 3}
    assert (tmp_path / "staging").exists()
    time.sleep(0.2)
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]  # the stray print went to stderr, not here
    assert events == [{"event": "error", "kind": "cancelled", "message": "cancelled; nothing was written",
                       "hint": None}]
    assert "a library printing to stdout" in err
    assert proc.returncode == 130 and not (tmp_path / "staging").exists()


class Flood:
    """Stands in for the model process: answers an ask with `count` token events at once, from a thread."""

    def __init__(self, count: int):
        self.count, self.returncode = count, None

    def __call__(self, args, on_event, **kwargs):
        import threading

        self.on_event = on_event
        threading.Thread(target=on_event, args=({"event": "ready", "adapters": [], "device": "cpu",
                                                 "chat_template": True},), daemon=True).start()
        return self

    def send(self, op: str, **fields) -> bool:
        import threading

        def answer() -> None:
            for i in range(self.count):
                self.on_event({"event": "token", "id": fields["id"], "text": f"t{i} "})
            self.on_event({"event": "done", "id": fields["id"], "tokens": self.count, "seconds": 1.0,
                           "tokens_per_second": float(self.count), "first_token_s": 0.01, "stopped": False})

        if op == "ask":
            threading.Thread(target=answer, daemon=True).start()
        return True

    running = property(lambda self: self.returncode is None)

    def cancel(self) -> None:
        self.returncode = 130

    def close(self, timeout: float = 5.0) -> int:
        self.returncode = 0
        return 0


@pytest.mark.asyncio
async def test_chat_takes_a_flood_of_tokens_together(ui_env):
    """Tokens that arrive while the screen draws are shown with one update, so a long answer cannot
    swamp the app (one update a token once left 2000 tokens still drawing a minute later)."""
    from tuiwiz.ui.screens.chat import Bubble, ChatScreen

    shown = []
    real_show = Bubble._show

    def counting_show(self, note: str = "") -> None:
        shown.append(len(self.text))
        real_show(self, note)

    app = chat_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = ChatScreen("runs/demo", label="demo", process=Flood(5000))
        app.push_screen(screen)
        await wait_for(pilot, lambda: screen.ready)
        Bubble._show = counting_show
        try:
            await ask(pilot, screen, COW, max_tokens="5000")
            await wait_for(pilot, lambda: screen.finished, timeout=60)
        finally:
            Bubble._show = real_show
        bubble = screen.query(".chat-answer").last()
        assert bubble.text == "".join(f"t{i} " for i in range(5000))  # every token, in order
        assert len([e for e in screen.events if e["event"] == "token"]) == 5000
        assert len(shown) < 500, len(shown)  # redraws, not 5000 (the user bubble and the note add two)
        assert screen.histories["tuned"][-1]["content"] == bubble.text
