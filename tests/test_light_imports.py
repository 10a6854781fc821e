"""The core and the light commands never load the training stack (nor Textual), checked in a fresh
interpreter. Every module of the core is found by walking the package, so a new one is covered
without editing this file; only the UI (tested in test_ui_light.py) and the training subprocess
(train/, which is where the stack belongs) are left out."""

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import tuiwiz

from .support import ROOT

HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "deepspeed", "datasets", "accelerate", "textual")
NOT_CORE = ("tuiwiz.ui", "tuiwiz.train")

CHECK = """
import json, sys, runpy
sys.argv = {argv!r}
code = 0
try:
    runpy.run_module("tuiwiz", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"exit": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}), file=sys.stderr)
"""


def core_modules() -> list[str]:
    found = [m.name for m in pkgutil.walk_packages(tuiwiz.__path__, "tuiwiz.")]
    return sorted(m for m in found if not m.startswith(NOT_CORE) and not m.endswith("__main__"))


def test_the_walk_finds_the_core():
    modules = core_modules()
    assert {"tuiwiz.cli.main", "tuiwiz.plan.memory", "tuiwiz.run.launch", "tuiwiz.post.merge",
            "tuiwiz.profile.io", "tuiwiz.methods"} <= set(modules)
    assert not any(m.startswith(NOT_CORE) for m in modules)


@pytest.mark.parametrize(
    "argv",
    [
        ["tuiwiz", "--help"],
        ["tuiwiz", "runs"],
        ["tuiwiz", "runs", "--json"],
        ["tuiwiz", "profile", "validate", "profiles/quickstart.yaml"],
        ["tuiwiz", "profile", "schema"],
        ["tuiwiz", "hw"],
        # the stack is imported in its child process only (seconds: slow-marked, as the other doctor tests)
        pytest.param(["tuiwiz", "doctor"], marks=pytest.mark.slow),
        ["tuiwiz", "estimate", "--config", "tests/fixtures/configs/llama3-8b.json", "--gpus", "1"],
    ],
)
def test_light_commands_import_no_training_stack(argv, tmp_path):
    env = {**os.environ, "TUIWIZ_STATE_DIR": str(tmp_path / "state"), "TUIWIZ_CACHE_DIR": str(tmp_path / "cache")}
    code = CHECK.format(argv=argv, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=env)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["exit"] in (0, None), f"{' '.join(argv)} exited {report['exit']}: {result.stderr[-2000:]}"
    assert report["heavy"] == [], f"{' '.join(argv)} imported {report['heavy']}"


@pytest.mark.parametrize("module", core_modules())
def test_core_modules_import_light(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"
