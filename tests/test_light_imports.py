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
    ["tuiwiz.cli.main", "tuiwiz.profile.io", "tuiwiz.run.rundir", "tuiwiz.run.events", "tuiwiz.run.launch", "tuiwiz.run.follow",
     "tuiwiz.demo.builtin", "tuiwiz.data.datasets", "tuiwiz.demo.build", "tuiwiz.data.rendering", "tuiwiz.run.distributed",
     "tuiwiz.run.probe", "tuiwiz.run.preflight", "tuiwiz.plan.hardware", "tuiwiz.plan.modelinfo", "tuiwiz.plan.memory", "tuiwiz.plan.recommend",
     "tuiwiz.cli.plan", "tuiwiz.post.merge", "tuiwiz.post.export", "tuiwiz.post.chat", "tuiwiz.post.modelcard", "tuiwiz.cli.post",
     "tuiwiz.post.export_onnx", "tuiwiz.post.hub", "tuiwiz.post.chat_server",
     "tuiwiz.plan.architectures", "tuiwiz.plan.weights", "tuiwiz.post.merge_shards", "tuiwiz.post.merge_verify",
     "tuiwiz.profile.yaml_tree", "tuiwiz.data.files"],
)
def test_core_modules_import_light(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"
