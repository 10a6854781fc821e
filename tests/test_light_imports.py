"""The core and the light commands never load the training stack."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "deepspeed", "datasets", "textual")

CHECK = """
import json, sys, runpy
sys.argv = {argv!r}
try:
    runpy.run_module("tuiwiz", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["tuiwiz", "--help"],
        ["tuiwiz", "runs"],
        ["tuiwiz", "runs", "--json"],
        ["tuiwiz", "profile", "validate", "profiles/quickstart.yaml"],
        ["tuiwiz", "profile", "schema"],
    ],
)
def test_light_commands_import_no_training_stack(argv):
    from .conftest import ROOT

    code = CHECK.format(argv=argv, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    loaded = json.loads(result.stderr.strip().splitlines()[-1])
    assert loaded == [], f"{' '.join(argv)} imported {loaded}"


@pytest.mark.parametrize(
    "module",
    ["tuiwiz.cli", "tuiwiz.profile_io", "tuiwiz.runs", "tuiwiz.events", "tuiwiz.launch", "tuiwiz.follow",
     "tuiwiz.builtin_models", "tuiwiz.data", "tuiwiz.demo", "tuiwiz.rendering", "tuiwiz.distributed",
     "tuiwiz.probe", "tuiwiz.preflight", "tuiwiz.hardware", "tuiwiz.modelinfo", "tuiwiz.memory", "tuiwiz.recommend",
     "tuiwiz.fit_cli", "tuiwiz.merge", "tuiwiz.export", "tuiwiz.chat", "tuiwiz.modelcard", "tuiwiz.post_cli",
     "tuiwiz.export_onnx", "tuiwiz.hub", "tuiwiz.chat_server",
     "tuiwiz.architectures", "tuiwiz.weights", "tuiwiz.merge_shards", "tuiwiz.merge_verify",
     "tuiwiz.profile_yaml", "tuiwiz.data_files"],
)
def test_core_modules_import_light(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"
