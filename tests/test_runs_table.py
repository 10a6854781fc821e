"""`tuiwiz runs` at 80 columns: every run id whole (it is what a user copies for attach, chat and
merge), one line a run, newest first, --limit and --all."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from rich.console import Console

from tuiwiz.cli.main import runs_table
from tuiwiz.run.rundir import RunDir, RunState, RunSummary, register, write_state

from .support import ROOT


def summary(run_id: str, started: float, model: str = "Qwen/Qwen2.5-0.5B-Instruct", step=120) -> RunSummary:
    return RunSummary(run_id, f"/runs/{run_id}", "completed", model, "qlora", "sft", step, 1500, 0.51234,
                      started, None)


def render(summaries, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(runs_table(summaries, width))
    return out.getvalue().rstrip("\n").splitlines()


def test_every_id_whole_on_one_line_at_80_columns():
    runs = [summary(f"llama3-8b-qlora-24gb-20261205-1246{i:02d}-bb3{i}", 1.7e9 + i) for i in range(3)]
    runs.append(summary("quickstart-20261205-124624-bb30", 1.7e9 + 9, model="/home/me/models/my-very-long-model"))
    lines = render(runs, 80)
    assert len(lines) == 1 + len(runs), lines  # a header and one line a run: nothing wraps
    assert all(len(line) <= 80 for line in lines), lines
    for run, line in zip(runs, lines[1:]):
        assert line.startswith(run.run_id + " "), line
    assert "status" in lines[0] and "step" in lines[0]


def test_wide_terminals_get_every_column_and_narrow_ones_keep_the_id():
    runs = [summary("quickstart-20261205-124624-bb30", 1.7e9)]
    wide = render(runs, 140)
    assert all(name in wide[0] for name in ("run", "status", "model", "method", "step", "loss", "started"))
    assert "Qwen/Qwen2.5-0.5B-Instruct" in wide[1]
    narrow = render(runs, 60)
    assert narrow[1].startswith("quickstart-20261205-124624-bb30 ") and "started" not in narrow[0]


def test_cli_lists_newest_first_with_limit_and_all(tmp_path, monkeypatch):
    monkeypatch.setenv("TUIWIZ_STATE_DIR", str(tmp_path / "state"))
    env = {**os.environ, "COLUMNS": "80"}
    for i, name in enumerate(["middle", "oldest", "newest"]):  # registered out of order
        run = RunDir(tmp_path / "runs" / f"{name}-20261205-12000{i}-abcd")
        run.path.mkdir(parents=True)
        created = {"oldest": 1.7e9, "middle": 1.7e9 + 1, "newest": 1.7e9 + 2}[name]
        write_state(run, RunState(run_id=run.run_id, status="completed", created=created))
        register(run)

    def runs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tuiwiz", "runs", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    listed = [row["run_id"].split("-")[0] for row in json.loads(runs("--json").stdout)]
    assert listed == ["newest", "middle", "oldest"]
    limited = runs("--limit", "2")
    assert limited.returncode == 0
    assert "newest-" in limited.stdout and "oldest-" not in limited.stdout
    assert "1 older runs not shown: tuiwiz runs --all" in limited.stdout
    assert "oldest-20261205-120001-abcd" in runs("--all").stdout


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`tuiwiz ... | head`: the pipe closes under the writer; the command ends quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "tuiwiz", "profile", "schema"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.readline()
    proc.stdout.close()  # before the rest of the schema is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
