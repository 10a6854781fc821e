"""The probe run: real steps at full length through the real runner, compared with the estimate."""

import dataclasses

import pytest
import yaml

from tuiwiz.plan.hardware import probe as probe_hardware
from tuiwiz.profile.io import load_profile
from tuiwiz.run.probe import probe

from .support.processes import run_cli
from .support.runs import write_profile

pytestmark = pytest.mark.slow


def test_probe_measures_the_peak_and_records_it(tmp_path):
    path = write_profile(tmp_path, "quickstart.yaml")
    out = tmp_path / "fitted.yaml"
    result = run_cli("probe", path, "--write", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fits: peak" in result.stdout
    fit = yaml.safe_load(out.read_text())["fit"]
    assert fit["device"] == "cpu" and fit["changes"] == []
    # A real peak RSS of a process that loaded torch and trained: hundreds of MiB, below the budget.
    assert 200 < fit["measured_peak_mb"] < fit["budget_mb"]
    assert 0.5 < fit["estimated_peak_mb"] / fit["measured_peak_mb"] < 2.0
    assert not any((tmp_path / "runs" / ".probes").iterdir())  # probe runs are cleaned away
    assert load_profile(out).profile.fit.measured_peak_mb == fit["measured_peak_mb"]


def test_probe_steps_down_when_the_budget_is_too_small(tmp_path):
    path = write_profile(tmp_path, "quickstart.yaml")
    machine = dataclasses.replace(probe_hardware(str(tmp_path)), ram_available_mb=100)  # less than torch itself
    result = probe(load_profile(path), steps=2, machine=machine, max_attempts=2)
    assert not result.fits
    assert len(result.attempts) == 2
    first, second = result.attempts
    assert first.measured_mb > 100 and first.status == "completed"
    halved = first.profile.training.per_device_train_batch_size // 2
    assert second.profile.training.per_device_train_batch_size == halved
    t = second.profile.training
    assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 8  # same effective batch
    assert result.changes and "micro-batch" in result.changes[0].lower()
