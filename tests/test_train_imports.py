"""The runner leaves out the optional packages a run does not use (tuiwiz/train/imports.py): bitsandbytes
unless QLoRA, a bitsandbytes optimizer or an already quantized model needs it; wandb unless reported to."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuiwiz.profile.schema import Profile
from tuiwiz.train.imports import unused_packages


def profile(**fields) -> Profile:
    return Profile.model_validate({"model": {"name_or_path": "demo"}, **fields})


def test_what_a_run_does_not_use_is_left_out():
    assert unused_packages(profile()) == ["bitsandbytes", "wandb", "deepspeed"]
    assert unused_packages(profile(method={"type": "qlora"})) == ["wandb", "deepspeed"]
    assert unused_packages(profile(training={"optim": "paged_adamw_8bit"})) == ["wandb", "deepspeed"]
    assert unused_packages(profile(training={"optim": "adamw_8bit"})) == ["wandb", "deepspeed"]
    assert unused_packages(profile(output={"report_to": ["wandb"]})) == ["bitsandbytes", "deepspeed"]
    # DeepSpeed stays for the ZeRO strategies, and for them alone
    for strategy in ("zero2", "zero3"):
        zero = profile(distributed={"strategy": strategy, "num_processes": 2})
        assert "deepspeed" not in unused_packages(zero)
    assert "deepspeed" in unused_packages(profile(distributed={"strategy": "ddp", "num_processes": 2}))


def test_a_quantized_checkpoint_or_a_model_not_found_keeps_bitsandbytes(tmp_path):
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True}}))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "bitsandbytes" not in unused_packages(profile(model={"name_or_path": str(quantized)}))
    assert "bitsandbytes" in unused_packages(profile(model={"name_or_path": str(plain)}))
    assert "bitsandbytes" not in unused_packages(profile(model={"name_or_path": str(tmp_path / "missing")}))


@pytest.mark.slow  # imports the whole stack in a fresh interpreter
def test_left_out_packages_read_as_not_installed_to_the_stack():
    """In a fresh interpreter: after leave_out_unused, transformers, peft and accelerate take their "not
    installed" path, and importing the stack (peft, TRL's SFT trainer) imports neither package."""
    code = """
import json, sys
from tuiwiz.profile.schema import Profile
from tuiwiz.train.imports import leave_out_unused
left = leave_out_unused(Profile.model_validate({"model": {"name_or_path": "demo"}}))
import peft, transformers
from trl import SFTTrainer
from peft.import_utils import is_bnb_available
from transformers.integrations import is_wandb_available
from transformers.utils import is_bitsandbytes_available
from transformers.integrations.deepspeed import is_deepspeed_available
from accelerate.utils import extract_model_from_parallel
import torch
extract_model_from_parallel(torch.nn.Linear(2, 2))  # where accelerate imports DeepSpeed when it is there
print(json.dumps([left, is_bnb_available(), is_bitsandbytes_available(), is_wandb_available(),
                  bool(is_deepspeed_available()),
                  [m for m in ("bitsandbytes", "wandb", "deepspeed") if sys.modules.get(m) is not None]]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [["bitsandbytes", "wandb", "deepspeed"], False, False,
                                                                  False, False, []]


@pytest.mark.slow  # imports the whole stack in a fresh interpreter
def test_the_recipe_imports_with_the_collector_paused_and_the_stack_frozen():
    """In a fresh interpreter: import_recipe returns the task's recipe module; the collector made no pass
    while it imported (a gc.callbacks counter), the stack's objects are frozen afterwards, and the collector
    is on again, as it was (and stays off when it was off)."""
    code = """
import gc, json
from tuiwiz.train.imports import import_recipe
passes = []
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))
recipe = import_recipe("sft")
after = {"name": recipe.__name__, "passes": len(passes), "frozen": gc.get_freeze_count(),
         "enabled": gc.isenabled()}
gc.disable()
import_recipe("dpo")
after["enabled_when_off"] = gc.isenabled()
print(json.dumps(after))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["name"] == "tuiwiz.train.recipes.sft"
    assert seen["passes"] == 1  # the one full pass before the import, none during it
    assert seen["frozen"] > 100_000  # torch, transformers, TRL, peft: some hundreds of thousands of objects
    assert seen["enabled"] is True and seen["enabled_when_off"] is False


@pytest.mark.slow  # imports transformers in a fresh interpreter
def test_transformers_models_folder_is_scanned_once_with_the_same_result():
    """In a fresh interpreter: after scan_models_once, importing transformers.models finds the folder's scan
    that transformers' __init__ made (a cache hit, no second miss), and what it finds equals a fresh scan."""
    code = """
import json, os
from tuiwiz.train.imports import scan_models_once
patched = scan_models_once()
import transformers.utils.import_utils as iu
from transformers.utils.import_utils import define_import_structure
cached = iu.create_import_structure_from_path.__wrapped__  # transformers' own, with its lru_cache
before = cached.cache_info()
import transformers.models
after = cached.cache_info()
models = os.path.join(os.path.dirname(transformers.__file__), "models", "__init__.py")
reused = define_import_structure(models)
cached.cache_clear()
iu.create_import_structure_from_path = cached  # as transformers has it: a fresh scan
fresh = define_import_structure(models)
print(json.dumps({"patched": patched, "new_misses": after.misses - before.misses, "hits": after.hits - before.hits,
                  "equal": reused == fresh, "objects": sum(len(v) for v in fresh.values())}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["patched"] is True
    assert seen["hits"] >= 1 and seen["new_misses"] == 0  # transformers.models read nothing again
    assert seen["equal"] is True and seen["objects"] > 500
