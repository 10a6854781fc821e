"""`tuiwiz doctor`: the stack's versions as installed, its kernels tried for real, each problem with
its fix and exit 1, the heavy imports kept in a child process (see also test_light_imports.py)."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from .support.processes import run_cli


@pytest.mark.slow  # imports the whole training stack in a child process
def test_doctor_reports_the_stack_as_installed_and_tries_the_kernels(tmp_path):
    result = run_cli("doctor", "--json", "--runs-dir", tmp_path / "runs", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    for name in ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "deepspeed"):
        assert checks[name]["status"] == "ok", checks[name]
        assert checks[name]["detail"].startswith(version(name)), checks[name]
    assert checks["torch"]["detail"].startswith(version("torch"))
    assert "4-bit kernels run on the CPU" in checks["bitsandbytes"]["detail"]  # a real NF4 round trip
    assert "cpu_adam" in checks["deepspeed"]["detail"]
    assert checks["nvml"]["status"] == "info" and "training runs on the CPU" in checks["nvml"]["detail"]
    assert str(tmp_path / "runs") in checks["disk (runs folder)"]["detail"]


@pytest.mark.slow  # imports the whole training stack in a child process
def test_a_broken_package_is_a_problem_with_its_fix(tmp_path):
    shadow = tmp_path / "shadow"  # a peft that fails on import, found before the real one
    (shadow / "peft").mkdir(parents=True)
    (shadow / "peft" / "__init__.py").write_text("raise ImportError('peft is broken here')\n")
    result = run_cli("doctor", "--runs-dir", tmp_path / "runs", cwd=tmp_path, env={"PYTHONPATH": str(shadow)},
                     timeout=300)
    assert result.returncode == 1
    assert "ImportError: peft is broken here" in result.stdout
    assert "fix: pip install -U peft" in result.stdout
    assert "1 problem stands in the way of training here" in result.stdout
