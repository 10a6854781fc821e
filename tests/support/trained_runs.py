"""Completed runs for the post-training tests (merge, export, chat, hub, the app's post screens).

Each recipe is trained once per test session: the first process to ask trains it under a file lock
in a folder every xdist worker shares (see the ``trained_run`` fixture in tests/conftest.py), and
every later ask, from any worker, reads it.
The tests treat these runs as read-only: what a test changes, it changes in a copy (``copy_run``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from tuiwiz.run.rundir import RunDir, read_state

from . import PROFILES
from .processes import run_cli

# name -> (shipped profile, overrides; None removes a key); steps kept small: the suite must stay fast.
# These train on the demo base saved in several shards (what the shard-by-shard merge is tested on).
RECIPES = {
    "lora": ("quickstart.yaml", {"training": {"max_steps": 30, "save_steps": 1000}}),
    "dora": ("demo-lora-dora.yaml", {"training": {"max_steps": 8, "save_steps": 1000}}),
    "ia3": ("demo-ia3.yaml", {"training": {"max_steps": 10, "save_steps": 1000}}),
}
# These train the profile's own model.
OWN_MODEL_RECIPES = {
    "minilm-classifier": ("minilm-classification.yaml", {
        "data": {"validation_split": 0.0},
        "training": {"max_steps": 2, "logging_steps": 1, "save_steps": 1000, "eval_steps": None}}),
}


def _isolated(root: Path) -> dict[str, str]:
    """The trained runs' own cache (demo model and data) and registry: a session fixture can ask for a run
    before a test's isolation is in place, and one worker's run must not depend on another's folders."""
    return {"TUIWIZ_CACHE_DIR": str(root / "cache"), "TUIWIZ_STATE_DIR": str(root / "state"),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def sharded_demo_base(root: Path) -> Path:
    """The demo model saved again in at least four shards (made once under ``root``)."""
    folder = root / "demo-sharded"
    with FileLock(root / "demo-sharded.lock"):
        if not (folder / "model.safetensors.index.json").exists():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from tuiwiz.demo.build import ensure_demo_model

            with pytest.MonkeyPatch.context() as env:
                for key, value in _isolated(root).items():
                    env.setenv(key, value)
                source = ensure_demo_model()
            staging = root / "demo-sharded.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            AutoModelForCausalLM.from_pretrained(source).save_pretrained(staging, max_shard_size="1MB")
            AutoTokenizer.from_pretrained(source).save_pretrained(staging)
            staging.rename(folder)
    return folder


def train_once(root: Path, name: str) -> RunDir:
    """A completed run of RECIPES[name] or OWN_MODEL_RECIPES[name] under ``root``: trained by the first
    caller, reused by every other (in any process); an attempt that failed is trained again by the next."""
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{name}.lock"):
        runs = root / name / "runs"
        done = [p for p in runs.glob("[!.]*") if (p / "state.json").exists()] if runs.exists() else []
        if done and read_state(RunDir(done[0])).status == "completed":
            return RunDir(done[0])
        shutil.rmtree(root / name, ignore_errors=True)
        profile_name, overrides = RECIPES[name] if name in RECIPES else OWN_MODEL_RECIPES[name]
        data = yaml.safe_load((PROFILES / profile_name).read_text())
        if name in RECIPES:
            data["model"]["name_or_path"] = str(sharded_demo_base(root))
        data["output"]["runs_dir"] = str(runs)
        data["training"].pop("num_train_epochs", None)  # max_steps decides
        for section, values in overrides.items():
            for key, value in values.items():
                if value is None:
                    data.get(section, {}).pop(key, None)
                else:
                    data.setdefault(section, {})[key] = value
        (root / name).mkdir(parents=True)
        profile = root / name / "profile.yaml"
        profile.write_text(yaml.safe_dump(data))
        result = run_cli("--profile", profile, env=_isolated(root))
        run = RunDir(next(runs.glob("[!.]*")))
        assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
        return run


MERGE_LOCK = ".tests-merge.lock"


def merged_once(run: RunDir) -> Path:
    """The run's verified merge in RUN/merged (where exports look for it), made once."""
    from tuiwiz.post.merge import merge_run

    with FileLock(run.path / MERGE_LOCK):
        if not (run.path / "merged" / "tuiwiz.json").exists():
            merge_run(str(run.path))
    return run.path / "merged"


def copy_run(run: RunDir, dest: Path, **meta_changes) -> RunDir:
    """A copy of a run (without its checkpoints, merge and exports) whose output/tuiwiz.json has some fields
    changed, e.g. for refusal tests."""
    with FileLock(run.path / MERGE_LOCK):  # not while another process stages RUN/merged in it
        shutil.copytree(run.path, dest, ignore=shutil.ignore_patterns("checkpoints", "merged*", "export*", ".*"))
    meta_path = dest / "output" / "tuiwiz.json"
    meta = json.loads(meta_path.read_text())
    meta.update(meta_changes)
    meta_path.write_text(json.dumps(meta))
    return RunDir(dest)


def merged_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def assert_streamed_equals_loaded(run: RunDir, folder: Path, *, adapter: bool, random_head: bool = False) -> None:
    """A model streamed block by block from disk gives the logits of the model loaded whole (with the
    adapter off too, unless the base has a ``random_head`` that each load initialises its own way)."""
    import torch
    from transformers import AutoTokenizer

    from tuiwiz.post.merge_plan import plan_merge
    from tuiwiz.post.merge_verify import _logits, load_model, streamed_model

    source = plan_merge(str(run.path)).source
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    loaded = load_model(folder, source, adapter=source.path if adapter else None)
    streamed = streamed_model(folder, source, adapter=source.path if adapter else None)
    pairs = [(_logits(loaded, tokenizer), _logits(streamed, tokenizer))]
    if adapter and not random_head:
        with loaded.disable_adapter(), streamed.model.disable_adapter():
            pairs.append((_logits(loaded, tokenizer), _logits(streamed, tokenizer)))
    for whole, streamed_logits in pairs:
        for a, b in zip(whole, streamed_logits):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    if len(pairs) == 2:
        assert not torch.equal(pairs[0][0][0], pairs[1][0][0])  # the adapter did change the answer
    real = [name for name, param in streamed.model.named_parameters() if not param.is_meta]
    held = ("lora_", "ia3_", "modules_to_save", "score", "classifier")
    # between forward passes only the adapter (and a new head) is held
    assert bool(real) == adapter and all(any(part in n for part in held) for n in real), real[:5]
