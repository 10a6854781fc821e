"""Pipelines: the stages of a profile with ``stages:`` run one after another, in one folder.

``RUNS_DIR/PIPELINE_ID/`` holds ``pipeline.yaml`` (the profile as given), ``stages/NAME.yaml`` (each
stage's checked profile, frozen), ``pipeline.json`` (the state) and ``pipeline.log``, and one
ordinary run dir per stage, ``PIPELINE_ID-NAME/``, made when the stage starts: its
``model.start_from`` (and a GRPO stage's reward model) are then the earlier stages' run folders.

A detached driver (``python -m tuiwiz.run.pipeline DIR``, in its own session like a runner) starts
each stage's runner and waits for it. A stage that stops or fails stops the pipeline with that
stage's status and error; ``resume`` continues the stage where it stopped and goes on. Each stage
is a run like any other: ``attach``, ``stop`` and ``resume`` work on it, and on the pipeline.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import staged_folder, write_text_atomic
from tuiwiz.profile.io import LoadedProfile, dump_profile, parse_profile_text
from tuiwiz.profile.pipeline import LoadedPipeline, Stage, checkable_profile, stage_profile
from tuiwiz.run.launch import RUNNER_ENV, create_run, new_run_id, start_runner, stop_run
from tuiwiz.run.preflight import preflight
from tuiwiz.run.rundir import (
    ACTIVE,
    FINISHED,
    RunDir,
    effective_status,
    read_state,
    register,
    watcher_alive,
)

PIPELINE_FILE = "pipeline.json"


@dataclass
class StageState:
    name: str
    task: str
    run: str | None = None  # its run dir, once the stage has started
    status: str = "pending"  # pending, or the run's status when last seen


@dataclass
class PipelineState:
    pipeline_id: str
    status: str  # created, running, stopping, stopped, failed, completed
    stages: list[StageState]
    driver_pid: int | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, text: str) -> PipelineState:
        data = json.loads(text)
        data["stages"] = [StageState(**s) for s in data["stages"]]
        return cls(**data)


@dataclass(frozen=True)
class PipelineDir:
    path: Path

    @property
    def pipeline_id(self) -> str:
        return self.path.name

    @property
    def state_file(self) -> Path:
        return self.path / PIPELINE_FILE

    @property
    def log(self) -> Path:
        return self.path / "pipeline.log"

    def stage_file(self, name: str) -> Path:
        return self.path / "stages" / f"{name}.yaml"

    def stage_folder(self, name: str) -> Path:
        return self.path / f"{self.pipeline_id}-{name}"

    def read(self) -> PipelineState:
        return PipelineState.from_json(self.state_file.read_text(encoding="utf-8"))

    def write(self, state: PipelineState) -> None:
        state.updated = time.time()
        write_text_atomic(self.state_file, json.dumps(asdict(state), indent=2))

    def update(self, **changes) -> PipelineState:
        with open(self.path / ".state.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            state = self.read()
            for key, value in changes.items():
                setattr(state, key, value)
            self.write(state)
            return state

    def stage_runs(self) -> list[tuple[StageState, RunDir | None]]:
        return [(s, RunDir(Path(s.run)) if s.run else None) for s in self.read().stages]


def is_pipeline_dir(path: str | Path) -> bool:
    return (Path(path) / PIPELINE_FILE).is_file()


def registered_pipelines() -> list[PipelineDir]:
    """Every registered pipeline folder that still exists (runs and pipelines share the registry)."""
    from tuiwiz.run.rundir import registered_folders

    return [PipelineDir(path) for path in registered_folders() if is_pipeline_dir(path)]


def driver_alive(state: PipelineState) -> bool:
    if not state.driver_pid:
        return False
    import psutil

    try:
        return psutil.Process(state.driver_pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pipeline_status(pipe: PipelineDir, state: PipelineState | None = None) -> str:
    """The status to show: a pipeline whose driver is gone mid-way has failed (``resume`` goes on)."""
    state = state or pipe.read()
    if state.status in ("running", "stopping") and not driver_alive(state):
        return "failed"
    return state.status


def with_pipelines(summaries: list) -> list:
    """The runs with each pipeline's row before its stages (pending ones too), stages indented, newest first.
    A pipeline's row has method "pipeline" and its folder as path; a pending stage's row has no path."""
    from tuiwiz.run.rundir import RunSummary

    by_path = {Path(s.path): s for s in summaries}
    rows: list[tuple[float, list]] = []
    in_pipeline: set[Path] = set()
    for pipe in registered_pipelines():
        try:
            state = pipe.read()
        except (OSError, ValueError, TypeError, KeyError):
            continue
        first = by_path.get(Path(state.stages[0].run)) if state.stages[0].run else None
        group = [RunSummary(pipe.pipeline_id, str(pipe.path), pipeline_status(pipe, state),
                            first.model if first else None, ">".join(s.task for s in state.stages), "pipeline",
                            None, None, None, state.created, state.error)]
        for entry in state.stages:
            run = by_path.get(Path(entry.run)) if entry.run else None
            if run is not None:
                in_pipeline.add(Path(run.path))
                group.append(RunSummary(**{**run.to_dict(), "run_id": "  " + run.run_id}))
            else:
                group.append(RunSummary(f"  {pipe.pipeline_id}-{entry.name}", "", entry.status, None, entry.task,
                                        entry.task, None, None, None, None, None))
        rows.append((state.created, group))
    rows += [(s.started or 0, [s]) for s in summaries if Path(s.path) not in in_pipeline]
    rows.sort(key=lambda row: row[0], reverse=True)
    return [s for _, group in rows for s in group]


# --- creating and starting ------------------------------------------------------------------------------

def create_pipeline(loaded: LoadedPipeline) -> PipelineDir:
    """Check every stage as far as it can be before the earlier ones ran, then make the pipeline folder."""
    for stage in loaded.stages:
        preflight(LoadedProfile(checkable_profile(stage), loaded.source))
    runs_dir = Path(loaded.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    pipeline_id = new_run_id(loaded.stages[0].profile, loaded.source)
    final = runs_dir / pipeline_id
    with staged_folder(final) as staging:
        (staging / "pipeline.yaml").write_text(loaded.source.read_text(encoding="utf-8"), encoding="utf-8")
        (staging / "stages").mkdir()
        for stage in loaded.stages:
            (staging / "stages" / f"{stage.name}.yaml").write_text(
                f"# stage {stage.name} of pipeline {pipeline_id}\n" + dump_profile(stage.profile), encoding="utf-8")
        state = PipelineState(pipeline_id, "created", [StageState(s.name, s.profile.task) for s in loaded.stages])
        PipelineDir(staging).write(state)
    pipe = PipelineDir(final.resolve())
    register(RunDir(pipe.path))  # the registry lists folders; a pipeline is told apart by its pipeline.json
    return pipe


def start_driver(pipe: PipelineDir, *, resume: bool = False) -> subprocess.Popen:
    """Start the detached driver; returns at once."""
    state = pipe.read()
    if driver_alive(state):
        raise UserError(f"pipeline {pipe.pipeline_id} is already running",
                        hint=f"`tuiwiz attach {pipe.pipeline_id}` follows it", kind="run")
    argv = [sys.executable, "-m", "tuiwiz.run.pipeline", str(pipe.path)] + (["--resume"] if resume else [])
    pipe.update(status="running", error=None, driver_pid=None)
    with open(pipe.log, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=pipe.path,
                                env={**os.environ, **RUNNER_ENV}, start_new_session=True, close_fds=True)
    pipe.update(driver_pid=proc.pid)
    return proc


def stop_pipeline(pipe: PipelineDir, *, force: bool = False) -> bool:
    """Stop the stage that runs (it checkpoints) and so the pipeline. False when nothing runs."""
    state = pipe.read()
    if pipeline_status(pipe, state) not in ("running", "stopping"):
        return False
    pipe.update(status="stopping")
    for _, run in pipe.stage_runs():
        if run is not None and effective_status(run) in ACTIVE:
            stop_run(run, force=force)
    return True


# --- the driver ------------------------------------------------------------------------------------------

def _stage(pipe: PipelineDir, name: str) -> Stage:
    text = pipe.stage_file(name).read_text(encoding="utf-8")
    return Stage(name, parse_profile_text(text, str(pipe.stage_file(name))))


def _wait(run: RunDir, proc: subprocess.Popen | None) -> str:
    """The stage's final status, once its runner (and the watcher recording how it ended) are gone."""
    while True:
        if proc is None or proc.poll() is not None:
            state = read_state(run)
            if state is None:
                return "failed"
            if not (state.status in ACTIVE and watcher_alive(state)):
                status = effective_status(run, state)
                if status in FINISHED:
                    return status
        time.sleep(0.5)


def _set_stage(pipe: PipelineDir, name: str, **changes) -> None:
    with open(pipe.path / ".state.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = pipe.read()
        entry = next(s for s in state.stages if s.name == name)
        for key, value in changes.items():
            setattr(entry, key, value)
        pipe.write(state)


def _stage_error(run: RunDir) -> str:
    state = read_state(run)
    from tuiwiz.run.rundir import summarize

    return summarize(run).error or (state.error if state else None) or "see its train.log"


def drive(pipe: PipelineDir, *, resume: bool) -> int:
    """Run the stages in order from the first one not completed. Returns the exit code."""
    pipe.update(status="running", driver_pid=os.getpid())
    folders: dict[str, str] = {}
    for entry in pipe.read().stages:
        run = RunDir(Path(entry.run)) if entry.run else None
        status = effective_status(run) if run else "pending"
        if status == "completed":
            folders[entry.name] = entry.run
            _set_stage(pipe, entry.name, status=status)
            continue
        if pipe.read().status == "stopping":
            pipe.update(status="stopped")
            return 130
        print(f"stage {entry.name}: starting", flush=True)
        proc = None
        try:
            if run is None:
                loaded = stage_profile(_stage(pipe, entry.name), folders)
                run = create_run(LoadedProfile(loaded.profile, pipe.stage_file(entry.name)),
                                 folder=pipe.stage_folder(entry.name))
                _set_stage(pipe, entry.name, run=str(run.path), status="created")
                proc = start_runner(run)
            elif status in ("stopped", "failed") or status.endswith("?"):
                if not resume:
                    pipe.update(status=status.rstrip("?"), error=f"stage {entry.name} is {status}")
                    return 1
                proc = start_runner(run, resume=True)
        except UserError as exc:
            _set_stage(pipe, entry.name, status="failed")
            pipe.update(status="failed", error=f"stage {entry.name}: {exc}")
            print(f"stage {entry.name} could not start: {exc}", flush=True)
            return 2
        _set_stage(pipe, entry.name, status="running")
        status = _wait(run, proc)
        _set_stage(pipe, entry.name, status=status)
        print(f"stage {entry.name}: {status}", flush=True)
        if status != "completed":
            error = None if status == "stopped" else f"stage {entry.name} failed: {_stage_error(run)}"
            pipe.update(status="stopped" if status == "stopped" else "failed", error=error)
            return 130 if status == "stopped" else 1
        folders[entry.name] = str(run.path)
        resume = False  # only the stage that stopped resumes; later ones start afresh
    pipe.update(status="completed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tuiwiz.run.pipeline")
    parser.add_argument("pipeline_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    pipe = PipelineDir(Path(args.pipeline_dir).resolve())
    with open(pipe.path / ".driver.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another driver runs this pipeline", file=sys.stderr)
            return 1
        try:
            return drive(pipe, resume=args.resume)
        except BaseException as exc:
            pipe.update(status="failed", error=f"the pipeline driver failed: {exc!r}")
            raise


if __name__ == "__main__":
    sys.exit(main())
