"""Offline W&B for real: with WANDB_MODE=offline and no API key, a run's W&B files land in its run folder
(nothing in the working directory), and its .wandb log, read back with W&B's own reader
(`wandb leet inspect --json`, which runs wandb-core locally, no network), holds the losses in events.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .support.processes import run_cli, wait_for
from .support.runs import losses, make_profile, only_run


def _our_wandb_cores(marker: str) -> list:
    """The wandb-core service processes this test started (they carry its WANDB_CACHE_DIR)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "wandb-core" and proc.environ().get("WANDB_CACHE_DIR") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _records(wandb_file, env: dict[str, str]) -> list[dict]:
    """Every record of a .wandb transaction log, decoded by wandb-core's inspector (offline: no telemetry)."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(540)  # above run_cli (300 s) + the service ending (60 s) + the reader (120 s)
def test_an_offline_wandb_run_logs_the_losses_into_the_run_folder(tmp_path, demo_built, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL",
                 "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    # wandb-core's own service log goes to WANDB_CACHE_DIR (default ~/.cache/wandb): kept in the test's folder
    home = tmp_path / "wandb-home"
    env = {"TUIWIZ_CACHE_DIR": str(demo_built), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_CONFIG_DIR": str(home / "config")}
    profile = make_profile(tmp_path, "quickstart.yaml", training={"max_steps": 6, "logging_steps": 1,
                                                                  "save_steps": 100},
                           output={"report_to": ["wandb"]})
    try:
        result = run_cli("--profile", profile, cwd=tmp_path, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        # the service ends with the training process that started it
        wait_for(lambda: not _our_wandb_cores(env["WANDB_CACHE_DIR"]), timeout=60)
    finally:
        for proc in _our_wandb_cores(env["WANDB_CACHE_DIR"]):  # a hung service must not outlive the test
            proc.kill()

    run = only_run(tmp_path)
    # W&B wrote into the run folder, not the working directory
    assert not (tmp_path / "wandb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.yaml", "runs", "wandb-home"]
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    wandb_files = list(offline[0].glob("run-*.wandb"))
    assert len(wandb_files) == 1 and wandb_files[0].stat().st_size > 0, wandb_files
    # outside the run folder only wandb-core's service logs: no run data
    assert all(p.suffix == ".log" for p in home.rglob("*") if p.is_file())

    records = _records(wandb_files[0], env)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    scalars = {int(item["train/global_step"]): item["train/loss"] for item in history if "train/loss" in item}
    logged = losses(run)
    assert sorted(scalars) == sorted(logged) == list(range(1, 7))
    assert all(abs(scalars[step] - logged[step]) <= 1e-4 * max(1.0, abs(logged[step])) for step in logged)
    assert records[-1]["type"] == "exit" and records[-1]["exit"].get("exit_code", 0) == 0
    assert [r["run"]["run_id"] for r in records if r["type"] == "run"] == [wandb_files[0].stem.removeprefix("run-")]
