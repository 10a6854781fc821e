"""The ``tuiwiz`` command. Imports stay light: no torch stack on this path."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import NoReturn

from tuiwiz import __version__
from tuiwiz.errors import UserError
from tuiwiz.process_exit import end_process

DESCRIPTION = "tuiwiz: fine-tune language models from the terminal."
EPILOG = """examples:
  tuiwiz --profile profiles/quickstart.yaml     train the built-in demo (20 to 30 s on a 2-core CPU)
  tuiwiz --profile my.yaml --detach             start a run and return; it survives the terminal
  tuiwiz runs                                   every run on this machine and its state
  tuiwiz attach RUN | stop RUN | resume RUN     RUN is a run id or a run folder
  tuiwiz profile validate my.yaml               check a profile without running it
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuiwiz", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tuiwiz {__version__}")
    parser.add_argument("--profile", metavar="FILE", help="run this profile headlessly")
    parser.add_argument("--detach", action="store_true", help="with --profile: start the run and return at once")
    parser.add_argument("--node-rank", type=int, metavar="N",
                        help="with --profile: start this machine's part of a multi-node run")
    parser.add_argument("--print-launch", action="store_true",
                        help="with --profile: print the command for every node (and the accelerate config) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    profile = sub.add_parser("profile", help="check profiles, print the profile JSON Schema")
    psub = profile.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    validate = psub.add_parser("validate", help="check a profile file")
    validate.add_argument("file")
    psub.add_parser("schema", help="print the profile JSON Schema (for editor completion)")

    runs = sub.add_parser("runs", help="list runs on this machine, newest first")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="show the newest N runs (default 20)")
    runs.add_argument("--all", action="store_true", help="show every run")

    for name, text in (("attach", "follow a run's progress"), ("stop", "stop a run (a checkpoint is saved)"),
                       ("resume", "continue a stopped or failed run from its last checkpoint")):
        command = sub.add_parser(name, help=text)
        command.add_argument("run", metavar="RUN", help="run id or run folder")
        if name == "stop":
            command.add_argument("--force", action="store_true", help="kill at once, without a checkpoint")
            command.add_argument("--no-wait", action="store_true", help="return without waiting for the run to end")
        if name == "resume":
            command.add_argument("--detach", action="store_true", help="return at once")

    probe = sub.add_parser("probe", help="run a few real steps at full length: does the profile fit?")
    probe.add_argument("file", metavar="PROFILE")
    probe.add_argument("--steps", type=int, default=3, help="optimizer steps to run (default 3)")
    probe.add_argument("--allow-truncation", action="store_true",
                       help="may shorten data.max_length if nothing else fits")
    probe.add_argument("--write", metavar="FILE", help="save the fitting profile, with its fit record, here")
    sub.add_parser("demo", help="build the demo model and datasets, print where they are")
    parser.add_argument("--plain", action="store_true", help="the wizard as plain prompts instead of a full-screen app")
    for module in _command_modules():
        module.add_commands(sub)
    return parser


def _command_modules() -> list:
    """The command groups that live beside this file (planning, the memory estimate, post-training)."""
    from tuiwiz.cli import estimate, plan, post

    return [plan, estimate, post]


def _cmd_validate(path: str) -> int:
    from tuiwiz.cli.pipelines import is_pipeline_profile
    from tuiwiz.profile.io import load_profile

    if is_pipeline_profile(path):
        from tuiwiz.profile.pipeline import load_pipeline

        stages = load_pipeline(path).stages
        print(f"{path}: valid pipeline of {len(stages)} stages")
        for stage in stages:
            p = stage.profile
            start = f", from {p.model.start_from}" if p.model.start_from else ""
            print(f"  {stage.name}: task {p.task}, method {p.method.type}, data {p.data.path}{start}")
        return 0
    loaded = load_profile(path)
    p = loaded.profile
    print(f"{path}: valid (task {p.task}, method {p.method.type}, model {p.model.name_or_path}, data {p.data.path})")
    return 0


def _cmd_schema() -> int:
    from tuiwiz.profile.io import profile_json_schema

    print(profile_json_schema())
    return 0


def _cmd_runs(as_json: bool, limit: int | None = 20) -> int:
    from tuiwiz.run.pipeline import with_pipelines
    from tuiwiz.run.rundir import registered_runs, summarize

    summaries = with_pipelines([summarize(run) for run in registered_runs()])
    shown = summaries if limit is None else summaries[:max(0, limit)]
    if as_json:
        print(json.dumps([{**s.to_dict(), "run_id": s.run_id.strip()} for s in shown], indent=2))
        return 0
    if not summaries:
        print("no runs yet: tuiwiz --profile profiles/quickstart.yaml starts one")
        return 0
    from rich.console import Console

    console = Console()
    console.print(runs_table(shown, console.width))
    if len(shown) < len(summaries):
        console.print(f"[dim]{len(summaries) - len(shown)} older runs not shown: tuiwiz runs --all[/dim]")
    return 0


# Dropped in this order when the terminal is too narrow: the run id, which a user copies for
# attach, chat or merge, is never cut.
_OPTIONAL_COLUMNS = ("started", "model", "loss", "method", "step")


def runs_table(summaries, width: int):
    """The runs as a table no wider than ``width``: whole run ids, other columns shrunk or dropped first."""
    from rich.table import Table

    rows = []
    for s in summaries:
        model = str(s.model or "-")
        rows.append({
            "run": s.run_id, "status": s.status,
            "model": model.rstrip("/").rsplit("/", 1)[-1] if model.startswith((".", "/", "~")) else model,
            "method": str(s.method or "-"),
            "step": f"{s.step}/{s.max_steps}" if s.step is not None else "-",
            "loss": f"{s.loss:.4f}" if isinstance(s.loss, (int, float)) else "-",
            "started": time.strftime("%m-%d %H:%M", time.localtime(s.started)) if s.started else "-",
        })
    columns = ["run", "status", "model", "method", "step", "loss", "started"]

    def natural(column: str) -> int:
        return max([len(column)] + [len(r[column]) for r in rows])

    def needed(cols) -> int:
        return sum(natural(c) for c in cols) + 2 * (len(cols) - 1)

    for column in _OPTIONAL_COLUMNS:
        if needed(columns) <= width:
            break
        if column == "model" and needed([c for c in columns if c != "model"]) + 10 <= width:
            break  # the model column can shrink (ellipsis) instead of going
        columns.remove(column)
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), collapse_padding=True)
    for column in columns:
        if column == "model":
            table.add_column(column, no_wrap=True, overflow="ellipsis", min_width=6)
        else:
            table.add_column(column, no_wrap=True, min_width=natural(column))
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def _follow_and_report(run, proc=None) -> int:
    from tuiwiz.run.follow import follow, print_result

    result = follow(run, proc)
    print_result(run, result)
    return result.exit_code


def _cmd_print_launch(profile_path: str) -> int:
    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.distributed import accelerate_config, deepspeed_config, node_commands

    profile = load_profile(profile_path).profile
    for rank, command in enumerate(node_commands(profile, profile_path)):
        print(f"# node {rank}\n{command}")
    if profile.distributed.world_size > 1:
        import yaml

        print("\n# accelerate config written into the run folder (node 0):")
        print(yaml.safe_dump(accelerate_config(profile, 0), sort_keys=False).rstrip())
    ds = deepspeed_config(profile)
    if ds is not None:
        print("\n# deepspeed.json:\n" + json.dumps(ds, indent=2))
    return 0


def _cmd_train(profile_path: str, detach: bool, node_rank: int | None = None) -> int:
    from tuiwiz.cli import pipelines
    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.launch import create_run, start_runner

    if pipelines.is_pipeline_profile(profile_path):
        if node_rank is not None:
            raise UserError("--node-rank starts one machine's part of a run; a pipeline runs its stages on this "
                            "machine", file=profile_path, field="stages")
        return pipelines.run_pipeline(profile_path, detach)
    loaded = load_profile(profile_path)
    nodes = loaded.profile.distributed.nodes
    if node_rank is not None and not 0 <= node_rank < nodes.count:
        raise UserError(f"--node-rank {node_rank} is outside 0..{nodes.count - 1}", file=profile_path,
                        field="distributed.nodes.count", hint="each machine takes one rank below nodes.count")
    run = create_run(loaded)
    proc = start_runner(run, node_rank=node_rank)
    if detach:
        print(run.run_id)
        print(f"started in {run.path}; follow with: tuiwiz attach {run.run_id}", file=sys.stderr)
        return 0
    print(f"run {run.run_id} in {run.path}")
    return _follow_and_report(run, proc)


def _cmd_attach(ref: str) -> int:
    from tuiwiz.cli import pipelines
    from tuiwiz.run.rundir import find_run

    pipe = pipelines.find_pipeline(ref)
    if pipe is not None:
        return pipelines.attach(pipe)
    return _follow_and_report(find_run(ref))


def _cmd_stop(ref: str, force: bool, no_wait: bool) -> int:
    from tuiwiz.cli import pipelines
    from tuiwiz.run.launch import stop_run, wait_finished
    from tuiwiz.run.rundir import effective_status, find_run

    pipe = pipelines.find_pipeline(ref)
    if pipe is not None:
        return pipelines.stop(pipe, force, no_wait)
    run = find_run(ref)
    if not stop_run(run, force=force):
        print(f"run {run.run_id} is not running ({effective_status(run)})")
        return 0
    if no_wait:
        print(f"asked run {run.run_id} to stop")
        return 0
    status = wait_finished(run, timeout=600)
    print(f"run {run.run_id}: {status or 'still stopping'}")
    return 0


def _cmd_resume(ref: str, detach: bool) -> int:
    from tuiwiz.cli import pipelines
    from tuiwiz.run.launch import start_runner
    from tuiwiz.run.rundir import FINISHED, effective_status, find_run

    pipe = pipelines.find_pipeline(ref)
    if pipe is not None:
        return pipelines.resume(pipe, detach)
    run = find_run(ref)
    status = effective_status(run)
    if status not in FINISHED or status == "completed":
        raise UserError(
            f"run {run.run_id} is {status}; only stopped or failed runs can be resumed",
            hint=f"`tuiwiz attach {run.run_id}` follows a running one", kind="run",
        )
    proc = start_runner(run, resume=True)
    if detach:
        print(run.run_id)
        return 0
    return _follow_and_report(run, proc)


def _cmd_probe(path: str, steps: int, allow_truncation: bool, write: str | None) -> int:
    from tuiwiz.profile.io import load_profile, save_profile
    from tuiwiz.run.probe import probe

    result = probe(load_profile(path), steps=steps, allow_truncation=allow_truncation)
    for attempt in result.attempts:
        t = attempt.profile.training
        measured = f"{attempt.measured_mb:,.0f} MiB" if attempt.measured_mb is not None else "-"
        outcome = attempt.status if not attempt.error_kind else f"{attempt.status} ({attempt.error_kind})"
        print(f"micro-batch {t.per_device_train_batch_size} x{t.gradient_accumulation_steps}, "
              f"max_length {attempt.profile.data.max_length}, checkpointing {t.gradient_checkpointing}, "
              f"{attempt.profile.method.type}: estimated {attempt.estimated_mb:,.0f} MiB, measured {measured}, "
              f"{outcome}")
    for change in result.changes:
        print(f"stepped down: {change}")
    for note in result.notes:
        print(f"note: {note}")
    budget = f"{result.budget_mb:,.0f} MiB {'free on the GPU' if result.device == 'cuda' else 'of RAM available'}"
    if not result.fits:
        hint = (f"{result.needs_consent}; rerun with --allow-truncation to accept" if result.needs_consent
                else "choose a smaller model or a lighter method (qlora)")
        raise UserError(f"{path}: no setting tried fits in {budget}", hint=hint, kind="fit")
    print(f"fits: peak {result.profile.fit.measured_peak_mb:,.0f} MiB of {budget}")
    if write:
        save_profile(result.profile, write)
        print(f"saved to {write}")
    return 0


def _cmd_demo() -> int:
    from tuiwiz.demo.build import DEMO_DATASETS, TASK_DATASETS, ensure_demo_dataset, ensure_demo_model
    from tuiwiz.demo.seq2seq import ensure_demo_t5

    print(f"model: {ensure_demo_model()}")
    print(f"model demo-t5: {ensure_demo_t5()}")
    for name in (*DEMO_DATASETS, *TASK_DATASETS):
        print(f"demo:{name}: {ensure_demo_dataset(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.profile:
            if args.command:
                parser.error("--profile runs a profile; it does not combine with a command")
            if args.print_launch:
                return _cmd_print_launch(args.profile)
            return _cmd_train(args.profile, args.detach, args.node_rank)
        if args.command == "profile":
            return _cmd_validate(args.file) if args.profile_command == "validate" else _cmd_schema()
        if args.command == "runs":
            return _cmd_runs(args.json, None if args.all else args.limit)
        if args.command == "attach":
            return _cmd_attach(args.run)
        if args.command == "stop":
            return _cmd_stop(args.run, args.force, args.no_wait)
        if args.command == "resume":
            return _cmd_resume(args.run, args.detach)
        if args.command == "probe":
            return _cmd_probe(args.file, args.steps, args.allow_truncation, args.write)
        if args.command == "demo":
            return _cmd_demo()
        for module in _command_modules():
            code = module.dispatch(args)
            if code is not None:
                return code
        if args.command is None:
            from tuiwiz.ui import run_wizard

            return run_wizard(plain=args.plain)
        parser.print_help()
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tuiwiz ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail
        return 0


def run() -> NoReturn:
    """The `tuiwiz` command: main(), then the end of the process (quick where a command loaded torch)."""
    end_process(main())


if __name__ == "__main__":
    run()
