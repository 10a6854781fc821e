"""Shipped profiles rewritten for a test, and the runs they make read back."""

from __future__ import annotations

from pathlib import Path

import yaml

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir

from . import PROFILES


def write_profile(tmp_path: Path, base: str, **overrides) -> Path:
    """A shipped profile with its runs sent to tmp_path and some fields changed (``section__key=value``)."""
    data = yaml.safe_load((PROFILES / base).read_text())
    data.setdefault("output", {})["runs_dir"] = str(tmp_path / "runs")
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    path = tmp_path / base
    path.write_text(yaml.safe_dump(data))
    return path


def make_profile(tmp_path: Path, base: str, **sections) -> Path:
    """A shipped profile with sections merged in (``method`` replaced whole), runs sent to tmp_path."""
    data = yaml.safe_load((PROFILES / base).read_text())
    for name, values in sections.items():
        data[name] = values if name == "method" else {**data.get(name, {}), **values}
    data.setdefault("output", {})["runs_dir"] = str(tmp_path / "runs")
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def only_run(tmp_path: Path) -> RunDir:
    runs = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return RunDir(runs[0])


def losses(run: RunDir) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run.events) if e["type"] == "log"}


def last_step(run: RunDir) -> int:
    steps = [e["step"] for e in read_events(run.events) if e["type"] == "log"]
    return max(steps) if steps else 0


def generate(output: Path, prompt: str = "Hello") -> str:
    """A few greedy tokens from a trained output folder (an adapter or whole weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    if (output / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(output)
    else:
        model = AutoModelForCausalLM.from_pretrained(output)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:])


def build_trainer(tmp_path: Path, base: str, **overrides):
    """The runner's own trainer for a shipped profile, built in this process (nothing trains): (trainer, setup)."""
    from tuiwiz.profile.io import load_profile
    from tuiwiz.train.recipes import recipe_for

    tmp_path.mkdir(exist_ok=True)
    profile = load_profile(write_profile(tmp_path, base, **overrides)).profile
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    setup = recipe_for(profile.task).set_up(profile, run, [])
    return setup.trainer, setup


def shipped_profiles() -> list[tuple[Path, object]]:
    """(file, profile) for every profile in profiles/: a pipeline's file once for each of its stages."""
    from tuiwiz.profile.io import load_profile
    from tuiwiz.profile.pipeline import is_pipeline_text, load_pipeline

    found = []
    for path in sorted(PROFILES.glob("*.yaml")):
        if is_pipeline_text(path.read_text(encoding="utf-8")):
            found += [(path, stage.profile) for stage in load_pipeline(path).stages]
        else:
            found.append((path, load_profile(path).profile))
    return found
