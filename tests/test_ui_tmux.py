"""A real terminal: tmux runs `tuiwiz`, keys walk the wizard on the demo model, the pane shows training.

CI needs tmux installed (apt-get install -y tmux) and fails without it; elsewhere the tests skip, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    # CI sets TUIWIZ_REQUIRE_TMUX=1: there a missing tmux fails these tests instead of skipping them
    pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("TUIWIZ_REQUIRE_TMUX"),
                       reason="tmux is not installed (apt-get install -y tmux)"),
]


def tuiwiz_command() -> list[str]:
    script = Path(sys.executable).parent / "tuiwiz"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tuiwiz"]


class Pane:
    def __init__(self, name: str, socket: Path) -> None:
        self.name, self.socket = name, str(socket)

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=check)

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str, gap: float = 0.3) -> None:
        """Type like a person: a key at a time (a burst can outrun a focus change in any Textual app)."""
        for key in keys:
            self.tmux("send-keys", "-t", self.name, key)
            time.sleep(gap)

    def wait(self, *needles: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{needles} not on the pane after {timeout} s:\n{text}")

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.name, check=False).returncode == 0


def test_tuiwiz_in_tmux_trains_the_demo(tmp_path, demo_built):
    work = tmp_path / "work"
    work.mkdir()
    hub = tmp_path / "hf"
    hub.mkdir()
    env = {"TUIWIZ_HARDWARE": "cpu-only", "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "TEXTUAL_ANIMATIONS": "none", "TUIWIZ_STATE_DIR": os.environ["TUIWIZ_STATE_DIR"],
           "TUIWIZ_CACHE_DIR": os.environ["TUIWIZ_CACHE_DIR"], "TERM": "xterm-256color"}
    command = " ".join(["env", *(f"{k}={v}" for k, v in env.items()), *tuiwiz_command()])
    pane = Pane("tuiwiz-test", tmp_path / "tmux.sock")
    pane.tmux("new-session", "-d", "-s", pane.name, "-x", "80", "-y", "24", "-c", str(work), command)
    try:
        pane.wait("1 Hardware", "no GPU: CPU training", timeout=30)
        pane.keys("C-n")
        pane.wait("2 Model", "LlamaForCausalLM", timeout=60)
        pane.keys("C-n")
        pane.wait("3 Data", "153 rows, alpaca", timeout=60)
        pane.keys("C-n")
        pane.wait("4 Method", "LoRA on the CPU", "★", timeout=30)
        pane.keys("Down")
        pane.wait("LoRA on the CPU  fits")
        pane.keys("C-n")
        pane.wait("5 Settings", "the profile is valid")
        pane.keys("Tab")  # profile name -> epochs: the status line names the focused field
        pane.wait("training.num_train_epochs")
        pane.keys("Tab")
        pane.wait("training.max_steps")
        pane.keys("Home", "C-k", "3")
        pane.wait("the profile is valid")
        pane.keys("C-n")
        pane.wait("6 Review", "tuiwiz --profile profiles/demo-lora.yaml", "Launch")
        pane.wait("Probe run: fits", "measured", timeout=180)  # it runs as the step opens; Launch waits for it
        pane.keys("C-n")
        pane.wait("Train monitor", timeout=60)
        # The demo's three steps can finish between two captures, so wait for the end and check
        # that the steps' events reached the monitor: the step counter and the last loss.
        text = pane.wait("COMPLETED", "✓ Completed", timeout=240)
        assert "step 3/3" in text
        assert re.search(r"loss \d+\.\d{4}", text), text
        assert "max_steps: 3" in (work / "profiles" / "demo-lora.yaml").read_text()
        # chat with what was just trained, in the same terminal: the model runs in its own process
        pane.keys("c")
        pane.wait("chat with the fine-tuned model")
        pane.keys("Enter")
        pane.wait("Chat · demo-lora", "ready on cpu", timeout=120)
        pane.keys("H", "i", "Enter", gap=0.1)
        pane.wait("ready · last answer", timeout=90)  # an answer streamed and ended
        # A long answer (up to 256 tokens from a model trained 3 steps) scrolls the question out of view:
        # Shift+Tab focuses the transcript, Home scrolls it to the top, where the question is.
        pane.keys("BTab", "Home")
        pane.wait("you › Hi", timeout=30)
        pane.keys("Escape")
        pane.wait("COMPLETED")
        pane.keys("C-q")
        deadline = time.monotonic() + 20
        while pane.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pane.alive(), pane.text()
    finally:
        pane.tmux("kill-server", check=False)


def test_tmux_kill_session_leaves_the_run_going_and_the_app_attaches(tmp_path, demo_built):
    """The terminal goes away twice: tmux kills the session of `tuiwiz --profile` mid-run, then that of
    the app that attached to it. The run trains on to completion both times."""
    import yaml

    from tuiwiz.run.events import read_events
    from tuiwiz.run.rundir import RunDir, read_state

    from .support import PROFILES
    from .support.processes import wait_for

    work = tmp_path / "work"
    work.mkdir()
    data = yaml.safe_load((PROFILES / "quickstart.yaml").read_text())
    data["training"].update(max_steps=1500, logging_steps=1, save_steps=100000, per_device_train_batch_size=2)
    data["output"]["runs_dir"] = str(work / "runs")
    (work / "p.yaml").write_text(yaml.safe_dump(data))
    env = {"TUIWIZ_HARDWARE": "cpu-only", "HF_HUB_OFFLINE": "1", "TEXTUAL_ANIMATIONS": "none",
           "TUIWIZ_STATE_DIR": os.environ["TUIWIZ_STATE_DIR"], "TUIWIZ_CACHE_DIR": os.environ["TUIWIZ_CACHE_DIR"],
           "OMP_NUM_THREADS": "1", "TERM": "xterm-256color"}
    prefix = ["env", *(f"{k}={v}" for k, v in env.items()), *tuiwiz_command()]
    # a tmux server each: killing the only session of a server ends it, and a new session started on its socket
    # while it shuts down fails ("server exited unexpectedly", seen once in CI)
    headless = Pane("tuiwiz-headless", tmp_path / "headless.sock")
    app = Pane("tuiwiz-app", tmp_path / "app.sock")
    try:
        headless.tmux("new-session", "-d", "-s", headless.name, "-x", "80", "-y", "24", "-c", str(work),
                      " ".join([*prefix, "--profile", "p.yaml"]))
        run = RunDir(wait_for(lambda: next((work / "runs").glob("p-*"), None) if (work / "runs").exists() else None))
        wait_for(lambda: any(e["type"] == "log" for e in read_events(run.events)), timeout=120)
        headless.wait("training", "/1500", "loss", timeout=30)  # its progress line at 80 columns, the total whole
        headless.tmux("kill-session", "-t", headless.name)
        assert not headless.alive()
        # a new terminal: the app offers to attach to the run that is still going
        app.tmux("new-session", "-d", "-s", app.name, "-x", "80", "-y", "24", "-c", str(work), " ".join(prefix))
        app.wait("Attach", run.run_id[:20], timeout=60)
        app.keys("Enter")
        app.wait("Train monitor", "RUNNING", timeout=60)
        step_then = max(e["step"] for e in read_events(run.events) if e["type"] == "log")
        app.tmux("kill-session", "-t", app.name)
        assert read_state(run).status == "running"
        wait_for(lambda: read_state(run).status in ("completed", "failed", "stopped"), timeout=300)
        assert read_state(run).status == "completed"
        steps = [e["step"] for e in read_events(run.events) if e["type"] == "log"]
        assert max(steps) == 1500 > step_then and steps == sorted(set(steps))
    finally:
        headless.tmux("kill-server", check=False)
        app.tmux("kill-server", check=False)
