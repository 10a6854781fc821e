"""Profiles with stages: parsed and checked per stage, run one after another by a detached driver, each
stage starting from the one before; stop and resume of a stage or of the whole pipeline."""

import json
import textwrap
import time
from pathlib import Path

import pytest

from tuiwiz.errors import UserError
from tuiwiz.profile.io import load_profile
from tuiwiz.profile.pipeline import load_pipeline, parse_pipeline_text
from tuiwiz.run.events import read_events
from tuiwiz.run.pipeline import PipelineDir
from tuiwiz.run.rundir import RunDir, read_state

from .support.processes import run_cli, wait_for

SHARED = """\
version: 1
model:
  name_or_path: demo
method:
  type: lora
  r: 8
training:
  max_steps: {steps}
  learning_rate: 0.002
  per_device_train_batch_size: 8
  logging_steps: 1
  save_steps: 2
output:
  runs_dir: {runs}
"""


def _pipeline(tmp_path: Path, stages: str, steps: int = 4) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(SHARED.format(steps=steps, runs=tmp_path / "runs") + textwrap.dedent(stages))
    return path


TWO_SFT = """\
stages:
  - name: first
    task: sft
    data: {path: "demo:alpaca", max_length: 64}
  - name: second
    task: sft
    data: {path: "demo:chat", max_length: 96}
    training: {learning_rate: 0.001}
"""


def test_a_stage_is_the_shared_sections_with_its_own_over_them(tmp_path):
    stages = load_pipeline(_pipeline(tmp_path, TWO_SFT)).stages
    first, second = (s.profile for s in stages)
    assert [s.name for s in stages] == ["first", "second"]
    assert (first.data.path, second.data.path) == ("demo:alpaca", "demo:chat")
    assert (first.training.learning_rate, second.training.learning_rate) == (0.002, 0.001)
    assert second.training.max_steps == 4 and second.method.r == 8  # shared values kept under the stage's own
    assert first.model.start_from is None
    assert second.model.start_from == "stage:first"  # the previous stage's output, by default


@pytest.mark.parametrize("stages, line, field, words", [
    ("stages:\n  - name: a\n    task: sft\n    training: {learning_rate: 5}\n", 18, "stages[0].training.learning_rate",
     "less than 1"),
    ("stages:\n  - name: a\n    task: sft\n  - name: a\n    task: sft\n", 18, "stages[1].name",
     "two stages are named a"),
    ("stages:\n  - task: sft\n", 16, "stages[0].name", "needs a name"),
    ("stages:\n  - name: a\n    task: sft\n    output: {runs_dir: x}\n", 16, "stages[0].output",
     "which the whole pipeline shares"),
    ("stages:\n  - name: a\n    task: sft\n    model: {start_from: 'stage:b'}\n  - name: b\n    task: sft\n", 16,
     "stages[0].model.start_from", "not an earlier stage"),
    ("stages: []\n", 15, "stages", "list of stages"),
    ("stages:\n  - name: a\n    task: dpo\n    data: {format: alpaca}\n", 18, "stages[0].data.format",
     "trains on preference data"),
])
def test_a_bad_stage_is_named_with_its_line_and_field(tmp_path, stages, line, field, words):
    path = _pipeline(tmp_path, stages)
    with pytest.raises(UserError) as info:
        load_pipeline(path)
    error = info.value
    assert words in error.message, error.message
    assert (error.file, error.line, error.field) == (str(path), line, field), error


def test_a_shared_task_section_goes_to_the_stages_that_read_it_and_a_stage_s_own_must_be_read(tmp_path):
    shared = "preference: {beta: 0.3}\n" + textwrap.dedent("""\
        stages:
          - name: sft
            task: sft
            data: {path: "demo:alpaca", max_length: 64}
          - name: dpo
            task: dpo
            data: {path: "demo:preference", max_length: 64}
        """)
    sft, dpo = (s.profile for s in load_pipeline(_pipeline(tmp_path, shared)).stages)
    assert (sft.preference.beta, dpo.preference.beta) == (0.1, 0.3)  # the sft stage keeps the defaults
    own = shared.replace("    task: sft\n", "    task: sft\n    preference: {beta: 0.5}\n")
    with pytest.raises(UserError) as info:
        load_pipeline(_pipeline(tmp_path, own))
    assert info.value.field == "stages[0].preference.beta" and "read by task" in info.value.message


def test_a_shared_section_error_points_at_the_shared_line(tmp_path):
    text = SHARED.format(steps=4, runs="runs").replace("r: 8", "r: 0") + TWO_SFT
    with pytest.raises(UserError) as info:
        parse_pipeline_text(text, "p.yaml")
    assert (info.value.line, info.value.field) == (6, "method.r")


def test_commands_that_take_one_run_s_profile_refuse_a_pipeline_with_the_way_to_run_it(tmp_path):
    with pytest.raises(UserError) as info:
        load_profile(_pipeline(tmp_path, TWO_SFT))
    assert "has stages" in info.value.message and "tuiwiz --profile" in info.value.hint
    result = run_cli("profile", "validate", _pipeline(tmp_path, TWO_SFT))
    assert result.returncode == 0, result.stderr
    assert "valid pipeline of 2 stages" in result.stdout and "from stage:first" in result.stdout


def _pipeline_dir(tmp_path: Path) -> PipelineDir:
    folders = [p for p in (tmp_path / "runs").iterdir() if (p / "pipeline.json").exists()]
    assert len(folders) == 1, folders
    return PipelineDir(folders[0])


@pytest.mark.slow
def test_stages_run_in_order_and_hand_over_their_output(tmp_path):
    result = run_cli("--profile", _pipeline(tmp_path, TWO_SFT), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    pipe = _pipeline_dir(tmp_path)
    state = pipe.read()
    assert state.status == "completed" and [s.status for s in state.stages] == ["completed", "completed"]
    first, second = (RunDir(Path(s.run)) for s in state.stages)
    assert first.path.parent == second.path.parent == pipe.path
    # the second stage loaded the first one's adapter merged into the base, and records that as its base
    start = second.path / "start-model"
    assert (start / ".complete").read_text().startswith(f"merged from {first.run_id}")
    meta = json.loads((second.output / "tuiwiz.json").read_text())
    assert Path(meta["base_model"]) == start
    begun = next(e for e in read_events(second.events) if e["type"] == "run_start")
    assert Path(begun["model_path"]) == start
    assert "== stage first (sft)" in result.stdout and "== stage second (sft)" in result.stdout
    assert f"pipeline {pipe.pipeline_id}: completed (2 of 2 stages completed" in result.stdout
    runs = run_cli("runs", "--all", env={"COLUMNS": "160"}).stdout.splitlines()
    where = next(i for i, line in enumerate(runs) if line.startswith(pipe.pipeline_id))
    assert "sft>sft" in runs[where]
    assert runs[where + 1].strip().startswith(first.run_id) and runs[where + 2].strip().startswith(second.run_id)


THREE = """\
stages:
  - name: one
    task: sft
    data: {path: "demo:alpaca", max_length: 64}
  - name: two
    task: sft
    data: {path: "demo:alpaca", max_length: 64}
    training: {max_steps: 40}
  - name: three
    task: sft
    data: {path: "demo:chat", max_length: 96}
"""


@pytest.mark.slow
def test_a_middle_stage_stopped_stops_the_pipeline_and_resume_goes_on_from_its_checkpoint(tmp_path):
    started = run_cli("--profile", _pipeline(tmp_path, THREE), "--detach")
    assert started.returncode == 0, started.stderr
    pipe = _pipeline_dir(tmp_path)
    assert started.stdout.strip() == pipe.pipeline_id

    def two_checkpointed():
        entry = pipe.read().stages[1]
        return entry.run and RunDir(Path(entry.run)).last_checkpoint() is not None

    wait_for(two_checkpointed, timeout=240)
    two = RunDir(Path(pipe.read().stages[1].run))
    stopped = run_cli("stop", two.run_id)  # the stage by its own id: the pipeline stops with it
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: pipe.read().status == "stopped", timeout=120)
    state = pipe.read()
    assert [s.status for s in state.stages] == ["completed", "stopped", "pending"]
    assert state.stages[2].run is None  # nothing of the third stage was made
    listing = run_cli("runs", "--all", env={"COLUMNS": "160"}).stdout
    assert f"{pipe.pipeline_id}-three" in listing and "pending" in listing

    resumed = run_cli("resume", pipe.pipeline_id, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    state = pipe.read()
    assert state.status == "completed" and [s.status for s in state.stages] == ["completed"] * 3
    starts = [e for e in read_events(two.events) if e["type"] == "run_start"]
    assert starts[-1]["resumed_from"], "the stopped stage continued from its checkpoint, not from step 0"
    assert read_state(RunDir(Path(state.stages[2].run))).status == "completed"


FAILING = """\
stages:
  - name: good
    task: sft
    data: {path: "demo:alpaca", max_length: 64}
  - name: bad
    task: sft
    data: {path: "demo:alpaca", max_length: 64}
    method: {type: adalora, tinit: 50, tfinal: 50}
  - name: never
    task: sft
    data: {path: "demo:alpaca", max_length: 64}
"""


@pytest.mark.slow
def test_a_failed_stage_stops_the_pipeline_with_that_stage_s_error(tmp_path):
    result = run_cli("--profile", _pipeline(tmp_path, FAILING, steps=2), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    state = _pipeline_dir(tmp_path).read()
    assert state.status == "failed"
    assert [s.status for s in state.stages] == ["completed", "failed", "pending"]
    assert state.error.startswith("stage bad failed: ") and "AdaLoRA needs tinit + tfinal" in state.error, state.error
    assert "stage bad failed: " in result.stdout and "continue with: tuiwiz resume" in result.stdout


def test_stop_and_resume_name_what_they_cannot_do_to_a_finished_pipeline(tmp_path):
    from tuiwiz.run.pipeline import PipelineState, StageState

    folder = tmp_path / "runs" / "p-1"
    folder.mkdir(parents=True)
    pipe = PipelineDir(folder)
    pipe.write(PipelineState("p-1", "completed", [StageState("a", "sft", status="completed")]))
    stop = run_cli("stop", str(folder))
    assert stop.returncode == 0 and "is not running (completed)" in stop.stdout
    resume = run_cli("resume", str(folder))
    assert resume.returncode == 2 and "only a stopped or failed pipeline resumes" in resume.stderr
    assert time.time() - pipe.read().updated < 60
