"""The Chat screen as a newcomer meets it: typing at once works, "?" is a character there (help is
on F1), and a question typed while the model still loads is sent when it is ready.

The model process is a stand-in replaying a recorded real session (tests/support/recorded/chat.jsonl),
held back until the test lets it say "ready": the keys and the screen are what is tested here; the
real `tuiwiz chat --jsonl` process is driven by tests/test_ui_post.py.
"""

from __future__ import annotations

import threading

import pytest
from textual.widgets import Input

from tuiwiz.ui.app import TuiwizApp

from .support.testing import SIZE, Replay, fixed_clock, on, screen_text, wait_for

pytestmark = pytest.mark.asyncio


class HeldReplay(Replay):
    """The recorded session, whose first events (loading, ready) wait for ``release``."""

    def __init__(self, name: str):
        super().__init__(name)
        self.release = threading.Event()

    def _deliver(self, events: list[dict]) -> None:
        if events is self.start:
            self.release.wait(30)
        super()._deliver(events)


async def open_chat(pilot, process: HeldReplay):
    from tuiwiz.ui.screens.chat import ChatScreen

    screen = ChatScreen("runs/demo-lora", label="demo-lora", process=process)
    pilot.app.push_screen(screen)
    await wait_for(pilot, lambda: on(pilot.app, "ChatScreen"))
    await pilot.pause()
    return screen


async def test_a_question_with_a_question_mark_typed_at_once_gets_an_answer(ui_env):
    app = TuiwizApp(start="hardware", offer_attach=False, blink=False, clock=fixed_clock)
    process = HeldReplay("chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, process)
        field = screen.query_one("#chat-input", Input)
        assert screen.focused is field  # the message box has focus as the screen opens
        await pilot.press(*"Where does the cow live?")
        assert field.value == "Where does the cow live?"
        assert not on(app, "HelpScreen")  # "?" was typed, not taken as help
        await pilot.press("enter")  # before the model is ready: held, not lost
        await wait_for(pilot, lambda: "your message goes as soon as it is ready" in screen_text(app))
        assert process.sent == []
        process.release.set()
        await wait_for(pilot, lambda: screen.finished, timeout=10)
        asks = [s for s in process.sent if s["op"] == "ask"]
        assert len(asks) == 1 and asks[0]["messages"][0] == {"role": "user", "content": "Where does the cow live?"}
        assert field.value == ""
        assert "Where does the cow live?" in screen_text(app)


async def test_printable_keys_anywhere_on_the_screen_go_to_the_message_box(ui_env):
    app = TuiwizApp(start="hardware", offer_attach=False, blink=False, clock=fixed_clock)
    process = HeldReplay("chat")
    process.release.set()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, process)
        await wait_for(pilot, lambda: screen.ready)
        screen.query_one("#chat-tuned").focus()  # focus away from every text field
        await pilot.pause()
        await pilot.press("h", "i", "question_mark")
        field = screen.query_one("#chat-input", Input)
        assert screen.focused is field and field.value == "hi?"
        assert not on(app, "HelpScreen")
        await pilot.press("f1")
        await wait_for(pilot, lambda: on(app, "HelpScreen"))
