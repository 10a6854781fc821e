"""Checking a profile against the world, creating its run dir, and starting the runner.

The runner is a subprocess in its own session (a terminal hangup does not reach
it) whose output goes to ``train.log``: no pipe that a front end must drain.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tuiwiz.demo.builtin import is_builtin, resolve_builtin
from tuiwiz.errors import UserError
from tuiwiz.hub_access import is_hub_id, looks_like_path
from tuiwiz.profile.io import DATA_SUFFIXES, LoadedProfile, dump_profile, is_local_data
from tuiwiz.profile.schema import Profile
from tuiwiz.run.rundir import (
    ACTIVE,
    FINISHED,
    RunDir,
    RunnerLock,
    RunState,
    is_probe_run,
    process_alive,
    read_state,
    register,
    update_state,
    watcher_alive,
    write_state,
)

# Environment the runner always gets: NVML and CUDA agree on GPU numbering.
RUNNER_ENV = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def _check_model(profile: Profile, source: str) -> None:
    name = profile.model.name_or_path
    if is_builtin(name):
        resolve_builtin(name, build=False)
        return
    path = Path(name)
    if path.is_absolute():
        if not path.exists():
            raise UserError(
                f"model folder {name} does not exist", hint="give a local folder, a hub id, or 'demo'",
                file=source, field="model.name_or_path", kind="model",
            )
        if not (path / "config.json").is_file():
            raise UserError(
                f"model folder {name} has no config.json",
                hint="point model.name_or_path at the folder that holds config.json and the weights",
                file=source, field="model.name_or_path", kind="model",
            )
        return
    from tuiwiz.run.preflight import check_hub_repo

    # resolve_paths made every folder that exists absolute: what is left is a hub id or a missing folder
    if looks_like_path(name) or not is_hub_id(name):
        raise UserError(
            f"no such folder: {name}{_relative_to(source)}, and it is not a Hugging Face model id",
            hint="give the folder that holds config.json (relative to the profile's folder), an id such as "
                 "org/name, or 'demo'", file=source, field="model.name_or_path", kind="model",
        )
    check_hub_repo(name, "model", field="model.name_or_path", file=source, revision=profile.model.revision)


def _relative_to(source: str) -> str:
    return f" (read relative to {Path(source).parent})" if source != "<profile>" else ""


def _model_folder(profile: Profile) -> Path | None:
    """The model's folder on this machine: the built-in's, the local folder, or a hub id's cached snapshot."""
    name = profile.model.name_or_path
    if is_builtin(name):
        return resolve_builtin(name, build=False)
    if Path(name).is_absolute():
        return Path(name)
    from tuiwiz.plan.modelinfo import resolve_model_dir

    try:
        folder, source = resolve_model_dir(name, profile.model.revision)
    except UserError:
        return None  # not downloaded yet: the runner downloads it
    return folder if source == "hf-cache" else None


def _local_model_folder(profile: Profile) -> Path | None:
    """The model's folder when it is already on this machine (its tokenizer is read from there)."""
    folder = _model_folder(profile)
    return folder if folder is not None and (folder / "tokenizer.json").is_file() else None


def _check_lengths(profile: Profile, data, folder: Path) -> None:
    """Refuse data whose every example leaves nothing to learn within max_length."""
    from tuiwiz.data.rendering import ModelText, length_stats

    if data.format not in ("alpaca", "messages"):
        return  # text and classification rows are truncated, never emptied
    try:
        stats = length_stats(data.records, data.format, ModelText(folder), profile.data.max_length)
    except UserError:
        return  # no fast tokenizer here: the runner checks after tokenizing
    if stats.sampled and stats.prompt_too_long >= stats.rows:
        raise UserError(
            f"every example's prompt is at least data.max_length={profile.data.max_length} tokens "
            f"(examples run to {stats.p50} tokens at the median, {stats.max} at most), so no answer token would be trained",
            hint=f"raise data.max_length to about {stats.p95 + 64}, or shorten the prompts",
            file=data.path, field="data.max_length", kind="data",
        )


def _check_data(profile: Profile, source: str) -> None:
    from tuiwiz.data import datasets as datamod
    from tuiwiz.demo.build import resolve_demo_uri
    from tuiwiz.run.preflight import check_chat_template

    columns = datamod.ColumnMap(**profile.data.columns.model_dump())
    folder = _local_model_folder(profile)
    loaded = {}
    for field_name, value in (("data.path", profile.data.path), ("data.validation_path", profile.data.validation_path)):
        if not value:
            continue
        if value.startswith("demo:"):
            try:
                resolve_demo_uri(value, build=False)
            except UserError as exc:
                raise UserError(exc.message, hint=exc.hint, file=source, field=field_name, kind="data") from None
            continue
        if not is_local_data(value):
            _check_hub_data(value, source, field_name)
            continue  # the runner loads it
        data = datamod.load_dataset_file(
            Path(value), format=profile.data.format, columns=columns, task=profile.task, limit=profile.data.limit,
            evaluation=field_name == "data.validation_path",
        )
        loaded[field_name] = data
        if folder is not None:
            check_chat_template(data, folder, field=field_name)
            if field_name == "data.path":
                _check_lengths(profile, data, folder)
    if len(loaded) == 2:
        datamod.check_validation_labels(loaded["data.path"], loaded["data.validation_path"],
                                        label_column=profile.data.columns.label)


def _check_hub_data(value: str, source: str, field_name: str) -> None:
    from tuiwiz.run.preflight import check_hub_repo

    name, _, split = value.partition(":")  # org/name or org/name:split, as the runner reads it
    if not is_hub_id(name):
        raise UserError(
            f"no such file or folder: {value}{_relative_to(source)}, and it is not a Hugging Face dataset id",
            hint=f"give a data file ({', '.join(DATA_SUFFIXES)}; relative to the profile's folder), "
                 "an id such as org/name or org/name:split, or demo:NAME", file=source, field=field_name, kind="data",
        )
    check_hub_repo(name, "dataset", field=field_name, file=source, split=split or "train")


def _check_processes(profile: Profile, source: str) -> None:
    """One process per GPU: more processes than this machine has GPUs cannot work.

    A machine without NVIDIA GPUs runs the ranks on the CPU over gloo (for trying a setup out).
    """
    dist = profile.distributed
    if dist.offload_optimizer or dist.offload_params:
        _check_offload_ram(profile, source)
    if dist.num_processes == 1 or dist.gpus is not None:
        return
    from tuiwiz.plan.hardware import probe as probe_hardware

    gpus = probe_hardware(profile.output.runs_dir).gpus
    if gpus and dist.num_processes > len(gpus):
        raise UserError(
            f"{dist.num_processes} processes but this machine has {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}",
            hint=f"set distributed.num_processes to at most {len(gpus)}", file=source,
            field="distributed.num_processes", kind="profile",
        )


def _check_offload_ram(profile: Profile, source: str) -> None:
    """ZeRO offload keeps optimizer states (and parameters) in host RAM: refuse when it is short."""
    from tuiwiz.plan.hardware import probe as probe_hardware
    from tuiwiz.plan.memory import Plan, estimate, gib
    from tuiwiz.plan.modelinfo import inspect_model

    name = profile.model.name_or_path
    if is_builtin(name) and not (resolve_builtin(name, build=False) / "config.json").is_file():
        return  # the demo before its first build: small by construction
    try:
        model = inspect_model(name, profile.model.revision)
    except UserError:
        return  # a hub model not in the cache: the runner will say so
    dist = profile.distributed
    machine = probe_hardware(profile.output.runs_dir)
    strategy = "zero3_offload_all" if dist.offload_params else "zero3_offload_optimizer"
    plan = Plan.from_profile(profile, model, device="cuda", bf16=True, strategy=strategy)
    need = estimate(model, plan, dist.num_processes).cpu_ram
    have = machine.ram_available_mb * 2**20
    if need > have:
        raise UserError(
            f"offloading to CPU needs about {gib(need)} of RAM on this machine; {gib(have)} is available",
            hint="offload only the optimizer (offload_params: false), use more GPUs, or a lighter method (lora)",
            file=source, field="distributed.offload_params" if dist.offload_params else "distributed.offload_optimizer",
            kind="resources",
        )


def _check_resources(profile: Profile) -> None:
    """Weights readable, and room on disk and in RAM, before a run dir exists."""
    from tuiwiz.run.preflight import check_model_files, check_resources

    folder = _model_folder(profile)
    if folder is None or not (folder / "config.json").is_file():
        return  # a hub id not downloaded, or the demo before its first build
    check_model_files(folder)
    check_resources(profile, folder, profile.output.runs_dir)


def preflight(loaded: LoadedProfile) -> None:
    """Everything that can be checked before a run dir exists. Raises UserError."""
    source = str(loaded.source) if loaded.source else "<profile>"
    _check_model(loaded.profile, source)
    _check_data(loaded.profile, source)
    _check_processes(loaded.profile, source)
    _check_resources(loaded.profile)


def new_run_id(profile: Profile, source: Path | None) -> str:
    stem = profile.output.run_name or (source.stem if source else "run")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{stamp}-{secrets.token_hex(2)}"


def create_run(loaded: LoadedProfile) -> RunDir:
    """Check the profile, then make its run dir in one step (no half-made runs)."""
    preflight(loaded)
    runs_dir = Path(loaded.profile.output.runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the runs folder {runs_dir}: {exc.strerror}",
            hint="set output.runs_dir to a folder you can write", field="output.runs_dir", kind="run",
        ) from None
    run_id = new_run_id(loaded.profile, loaded.source)
    final = runs_dir / run_id
    staging = runs_dir / f".{run_id}.tmp"
    staging.mkdir()
    try:
        header = f"# tuiwiz run {run_id}\n# from {loaded.source}\n" if loaded.source else f"# tuiwiz run {run_id}\n"
        (staging / "profile.yaml").write_text(header + dump_profile(loaded.profile), encoding="utf-8")
        write_state(RunDir(staging), RunState(run_id=run_id, status="created"))
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    run = RunDir(final.resolve())
    if not is_probe_run(run.path):  # a probe's run is the probe's business, gone when it ends
        register(run)
    return run


def start_runner(run: RunDir, *, resume: bool = False, extra_env: dict[str, str] | None = None,
                 node_rank: int | None = None) -> subprocess.Popen:
    """Start the training subprocess for ``run``; returns at once."""
    if RunnerLock(run).held_elsewhere():
        raise UserError(f"run {run.run_id} already has a runner", hint=f"`tuiwiz attach {run.run_id}` follows it", kind="run")
    env = {**os.environ, **RUNNER_ENV, **(extra_env or {})}
    argv = [sys.executable, "-m", "tuiwiz.train", str(run.path)]
    if resume:
        argv.append("--resume")
    if node_rank is not None:
        argv += ["--node-rank", str(node_rank)]
    update_state(run, status="starting", pid=None, pgid=None, exit_code=None, error=None)
    with open(run.log, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=run.path, env=env, start_new_session=True, close_fds=True,
        )
    import psutil

    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = None
    # The runner records itself too; this covers the moment before it does.
    update_state(run, only_from=("starting",), pid=proc.pid, pgid=proc.pid, create_time=created)
    return proc


def kill_tree(pid: int, pgid: int | None = None) -> bool:
    """SIGKILL a runner, its process group, and every descendant (ranks live in sessions of their own)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(pgid or pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    psutil.wait_procs(procs, timeout=10)
    return True


def stop_run(run: RunDir, *, force: bool = False) -> bool:
    """Ask the runner to checkpoint and stop (SIGTERM), or kill its process group.

    Returns False when the run has no live process.
    """
    state = read_state(run)
    if state is None or state.status in FINISHED or not process_alive(state):
        return False
    if force:
        # marked first: a launcher following the run sees the SIGKILL and must not record it as a failure
        update_state(run, only_from=ACTIVE, status="stopped", error="killed by the user")
        return kill_tree(state.pid, state.pgid)
    # A runner still starting has no SIGTERM handler yet; it says "loading" once it has.
    deadline = time.monotonic() + 15
    while state.status == "starting" and process_alive(state) and time.monotonic() < deadline:
        time.sleep(0.05)
        state = read_state(run) or state
    update_state(run, only_from=("starting", "loading", "running"), status="stopping")
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def wait_finished(run: RunDir, timeout: float, poll: float = 0.2) -> str | None:
    """Wait until the runner process is gone; returns the final status or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run)
        if state is None or not (process_alive(state) or watcher_alive(state)):
            return read_state(run).status if read_state(run) else None
        time.sleep(poll)
    return None
