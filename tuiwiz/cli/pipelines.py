"""Pipelines from the command line: ``tuiwiz --profile`` on a profile with ``stages:``, and ``attach``,
``stop``, ``resume`` and ``runs`` when they name a pipeline. Light at import."""

from __future__ import annotations

import sys
from pathlib import Path

from tuiwiz.errors import UserError


def is_pipeline_profile(path: str) -> bool:
    from tuiwiz.profile.io import read_profile_text
    from tuiwiz.profile.pipeline import is_pipeline_text

    return is_pipeline_text(read_profile_text(Path(path)))


def find_pipeline(ref: str):
    """The pipeline ``ref`` names (its folder or its id), or None when it names none."""
    from tuiwiz.run.pipeline import PipelineDir, is_pipeline_dir, registered_pipelines

    if is_pipeline_dir(Path(ref).expanduser()):
        return PipelineDir(Path(ref).expanduser().resolve())
    matches = [p for p in registered_pipelines() if p.pipeline_id == ref]
    if not matches:
        matches = [p for p in registered_pipelines() if p.pipeline_id.startswith(ref)]
        if len(matches) > 1:
            # a stage's run id starts with its pipeline's: let find_run decide
            return None
    return matches[0] if len(matches) == 1 else None


def run_pipeline(profile_path: str, detach: bool) -> int:
    from tuiwiz.profile.pipeline import load_pipeline
    from tuiwiz.run.follow import follow_pipeline
    from tuiwiz.run.pipeline import create_pipeline, start_driver

    loaded = load_pipeline(profile_path)
    pipe = create_pipeline(loaded)
    start_driver(pipe)
    names = " -> ".join(f"{s.name} ({s.profile.task})" for s in loaded.stages)
    if detach:
        print(pipe.pipeline_id)
        print(f"started pipeline {names} in {pipe.path}; follow with: tuiwiz attach {pipe.pipeline_id}",
              file=sys.stderr)
        return 0
    print(f"pipeline {pipe.pipeline_id}: {names} in {pipe.path}")
    return follow_pipeline(pipe)


def attach(pipe) -> int:
    from tuiwiz.run.follow import follow_pipeline

    return follow_pipeline(pipe)


def stop(pipe, force: bool, no_wait: bool) -> int:
    import time

    from tuiwiz.run.pipeline import pipeline_status, stop_pipeline

    if not stop_pipeline(pipe, force=force):
        print(f"pipeline {pipe.pipeline_id} is not running ({pipeline_status(pipe)})")
        return 0
    if no_wait:
        print(f"asked pipeline {pipe.pipeline_id} to stop")
        return 0
    deadline = time.monotonic() + 600
    while pipeline_status(pipe) in ("running", "stopping") and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"pipeline {pipe.pipeline_id}: {pipeline_status(pipe)}")
    return 0


def resume(pipe, detach: bool) -> int:
    from tuiwiz.run.follow import follow_pipeline
    from tuiwiz.run.pipeline import pipeline_status, start_driver

    status = pipeline_status(pipe)
    if status not in ("stopped", "failed"):
        raise UserError(f"pipeline {pipe.pipeline_id} is {status}; only a stopped or failed pipeline resumes",
                        hint=f"`tuiwiz attach {pipe.pipeline_id}` follows a running one", kind="run")
    start_driver(pipe, resume=True)
    if detach:
        print(pipe.pipeline_id)
        return 0
    return follow_pipeline(pipe)
