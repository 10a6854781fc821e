"""Experiment tracking: every run writes TensorBoard events by default, whose scalars equal the losses
in events.jsonl (read back with TensorBoard's own reader); a tracker whose package is missing is
refused before the run starts; the summary ends with the next commands, the run's id in each."""

from __future__ import annotations

import pytest

from .support.processes import run_cli
from .support.runs import losses, make_profile, only_run


@pytest.mark.slow
def test_a_run_writes_tensorboard_events_equal_to_its_event_log(tmp_path, demo_built):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    profile = make_profile(tmp_path, "quickstart.yaml", training={"max_steps": 6, "logging_steps": 1,
                                                                  "save_steps": 100})
    result = run_cli("--profile", profile, env={"TUIWIZ_CACHE_DIR": str(demo_built)})
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    board = EventAccumulator(str(run.tensorboard))
    board.Reload()
    scalars = {e.step: e.value for e in board.Scalars("train/loss")}
    logged = losses(run)
    assert sorted(scalars) == sorted(logged) == list(range(1, 7))
    assert all(abs(scalars[step] - logged[step]) < 1e-4 * max(1.0, abs(logged[step])) for step in logged)
    summary = result.stdout
    assert f"tensorboard --logdir {run.tensorboard}" in summary
    for command in (f"tuiwiz chat {run.run_id}", f"tuiwiz merge {run.run_id}",
                    f"tuiwiz export {run.run_id} --format gguf"):
        assert command in summary
    assert all(len(line) <= 80 for line in summary.split("next:")[1].splitlines() if "#" in line)


def test_a_tracker_whose_package_is_missing_is_refused_before_the_run(tmp_path):
    profile = make_profile(tmp_path, "quickstart.yaml", output={"report_to": ["tensorboard", "neptune"]})
    result = run_cli("--profile", profile)
    assert result.returncode == 2
    assert "output.report_to names neptune, but its package neptune is not installed" in result.stderr
    assert "pip install neptune" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_misspelt_tracker_is_refused_with_the_names_it_could_be(tmp_path):
    profile = make_profile(tmp_path, "quickstart.yaml", output={"report_to": ["tensorbord"]})
    result = run_cli("profile", "validate", profile)
    assert result.returncode == 2
    assert "output.report_to" in result.stderr and "did you mean 'tensorboard'?" in result.stderr
