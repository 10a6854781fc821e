"""The runner leaves out the optional packages a run does not use (tuiwiz/train/imports.py): bitsandbytes
unless QLoRA, a bitsandbytes optimizer or an already quantized model needs it; wandb unless reported to."""

from __future__ import annotations

import json
import os
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


SCANS = """
import json, os, sys
from pathlib import Path
from tuiwiz.train.models_scan import remember_scans
remember_scans(Path(sys.argv[1]))
import transformers.utils.import_utils as iu
from transformers.utils.import_utils import define_import_structure
own = iu.create_import_structure_from_path.__wrapped__  # transformers' own scan, with its lru_cache
import transformers.models
from transformers import AutoModelForCausalLM
models = os.path.join(os.path.dirname(transformers.__file__), "models")
used = define_import_structure(os.path.join(models, "__init__.py"))
calls = own.cache_info().misses  # folders transformers' scan read in this process
own.cache_clear()
iu.create_import_structure_from_path = own  # as transformers has it: a fresh scan
fresh = define_import_structure(os.path.join(models, "__init__.py"))
print(json.dumps({"own_scans": calls, "equal": used == fresh, "objects": sum(len(v) for v in fresh.values()),
                  "kept": len(os.listdir(sys.argv[1]))}))
"""


@pytest.mark.slow  # imports transformers in fresh interpreters
def test_transformers_models_scan_is_kept_and_gives_the_same_structure(tmp_path):
    """The first process scans transformers' models folder once (not twice) and keeps the result; the next
    one reads nothing of the folder (transformers' own scan never runs); both see the structure a fresh
    scan gives."""
    store = tmp_path / "scans"
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCANS, str(store)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["equal"] and second["equal"] and first["objects"] > 500
    assert first["kept"] >= 1 and second["kept"] == first["kept"]  # one file per folder asked for, not per model
    assert first["own_scans"] > 100  # the models folder and each model's subfolder, once
    assert second["own_scans"] == 0


def test_a_kept_scan_follows_the_folder_and_survives_a_damaged_file(tmp_path):
    """A model folder added changes the key (rescanned, the new model seen); a damaged kept file is scanned
    again and rewritten."""
    from tuiwiz.train import models_scan

    folder = tmp_path / "models"
    (folder / "alpha").mkdir(parents=True)
    (folder / "alpha" / "configuration_alpha.py").write_text('__all__ = ["AlphaConfig"]\n')
    store = tmp_path / "scans"
    calls = []

    def scan(path):
        calls.append(path)
        return {name: {frozenset(): {f"configuration_{name}": {f"{name.title()}Config"}}}
                for name in sorted(os.listdir(path))}

    first = models_scan._stored(str(folder), scan, store)
    assert models_scan._stored(str(folder), scan, store) == first and len(calls) == 1  # kept
    (folder / "beta").mkdir()
    (folder / "beta" / "configuration_beta.py").write_text('__all__ = ["BetaConfig"]\n')
    again = models_scan._stored(str(folder), scan, store)
    assert len(calls) == 2 and "beta" in again and "beta" not in first
    kept = store / f"{models_scan.scan_key(str(folder))}.marshal"
    kept.write_bytes(b"\x00broken")
    assert models_scan._stored(str(folder), scan, store) == again and len(calls) == 3
    assert models_scan._stored(str(folder), scan, store) == again and len(calls) == 3  # rewritten whole
