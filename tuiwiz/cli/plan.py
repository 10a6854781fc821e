"""``tuiwiz hw``, ``tuiwiz doctor``, ``tuiwiz inspect`` and ``tuiwiz recommend``: the fit check from the command
line (``tuiwiz estimate`` is in estimate.py, the settings flags both take in settings.py).

Hooked into tuiwiz/cli.py with ``add_commands(subparsers)`` and ``dispatch(args)``;
also runnable alone (``python -m tuiwiz.cli.plan``). Light: no torch stack.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tuiwiz.cli.settings import Settings, add_setting_flags, apply_settings, takes
from tuiwiz.errors import UserError
from tuiwiz.tasks import TASK_NAMES
from tuiwiz.units import MIB, count, gib

if TYPE_CHECKING:
    from tuiwiz.data.stats import DataStats

COMMANDS = ("hw", "inspect", "recommend")


def add_commands(subparsers) -> None:
    hw = subparsers.add_parser("hw", help="GPUs, CPU, RAM and disk of this machine")
    hw.add_argument("--json", action="store_true", help="machine-readable output")
    hw.add_argument("--save", metavar="FILE", help="record this machine as a snapshot (TUIWIZ_HARDWARE=FILE)")
    hw.add_argument("--disk-path", default=".", help="where runs are written (for free disk); default: here")

    doctor = subparsers.add_parser("doctor", help="is this machine ready to train? the stack, its kernels, disk")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--runs-dir", default="runs", metavar="DIR", help="where runs are written (default: runs)")

    inspect = subparsers.add_parser("inspect", help="what a model is, read from its files (no weights loaded)")
    inspect.add_argument("model", metavar="MODEL", help="'demo', 'minilm', a local folder, or a cached hub id")
    inspect.add_argument("--revision", help="hub branch, tag or commit")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    rec = subparsers.add_parser("recommend", help="which fine-tuning settings fit this machine")
    rec.add_argument("--model", required=True, metavar="M", help="'demo', a local folder, or a cached hub id")
    rec.add_argument("--data", metavar="D", help="dataset file: its token lengths set the max length")
    rec.add_argument("--hardware", "--gpu-snapshot", metavar="SNAPSHOT",
                     help="plan for a recorded machine (name or JSON file)")
    rec.add_argument("--task", choices=TASK_NAMES, default="sft")
    rec.add_argument("--target-batch", type=int, default=16, help="effective batch size to reach (default 16)")
    rec.add_argument("--experts", action="store_true", help="also IA3, AdaLoRA, prefix/p-tuning, BitFit")
    rec.add_argument("--json", action="store_true", help="machine-readable output")
    rec.add_argument("--write", metavar="PROFILE.yaml", help="write the best option as a profile")
    add_setting_flags(rec)  # --seq-len N plans for N-token examples instead of measuring --data


def dispatch(args) -> int | None:
    """Run the command if it is one of these; None otherwise."""
    command = getattr(args, "command", None)
    if command == "hw":
        return _cmd_hw(args)
    if command == "doctor":
        return _cmd_doctor(args)
    if command == "inspect":
        return _cmd_inspect(args)
    if command == "recommend":
        return _cmd_recommend(args)
    return None


def _cmd_doctor(args) -> int:
    """Exit 0 when nothing stands in the way of training here, 1 when something does."""
    from tuiwiz.plan.stack import run_checks

    report = run_checks(args.runs_dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 1 if report.problems else 0
    from rich.table import Table

    marks = {"ok": "[green]ok[/green]", "info": "[dim]--[/dim]", "warning": "[yellow]!![/yellow]",
             "problem": "[red]XX[/red]"}
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, style="bold")
    table.add_column()
    for check in report.checks:
        table.add_row(marks[check.status], check.name,
                      check.detail + (f"\n[dim]fix:[/dim] {check.fix}" if check.fix else ""))
    console = _console()
    console.print(table)
    count = len(report.problems)
    console.print(f"{count} problem{'s stand' if count != 1 else ' stands'} in the way of training here" if count
                  else "nothing stands in the way of training here")
    return 1 if count else 0


def _console():
    from rich.console import Console

    return Console()


def _gib_mb(mb: int | None) -> str:
    return gib(None if mb is None else mb * MIB)


def _count(n: int) -> str:
    return count(n, digits=2)


def _cmd_hw(args) -> int:
    from tuiwiz.plan.hardware import probe, save_snapshot

    machine = probe(args.disk_path)
    if args.save:
        path = save_snapshot(machine, args.save)
        print(f"saved {path}; plan for this machine elsewhere with TUIWIZ_HARDWARE={path}", file=sys.stderr)
    if args.json:
        print(json.dumps(machine.to_dict(), indent=2))
        return 0
    from rich.table import Table

    console = _console()
    if machine.gpus:
        table = Table(box=None, pad_edge=False)
        for column in ("gpu", "name", "free", "total", "cc", "bf16", "util", "temp", "processes"):
            table.add_column(column)
        for g in machine.gpus:
            procs = ", ".join(f"{p.name or p.pid} {_gib_mb(p.used_mb)}" for p in g.processes) or "-"
            table.add_row(str(g.index), g.name, _gib_mb(g.memory_free_mb), _gib_mb(g.memory_total_mb),
                          "{}.{}".format(*g.compute_capability), "yes" if g.bf16 else "no",
                          "-" if g.utilization_pct is None else f"{g.utilization_pct}%",
                          "-" if g.temperature_c is None else f"{g.temperature_c}°C", procs)
        console.print(table)
        console.print(f"driver {machine.driver_version or '?'}, CUDA {machine.cuda_version or '?'}")
    cores = f"{machine.cpu_count_physical} cores / " if machine.cpu_count_physical else ""
    console.print(f"CPU {machine.cpu_model} ({cores}{machine.cpu_count_logical} threads), "
                  f"RAM {_gib_mb(machine.ram_available_mb)} free of {_gib_mb(machine.ram_total_mb)}, "
                  f"disk {_gib_mb(machine.disk_free_mb)} free at {machine.disk_path}", highlight=False)
    if machine.notice:
        console.print(f"[yellow]{machine.notice}[/]")
    return 0


def _cmd_inspect(args) -> int:
    from tuiwiz.plan.modelinfo import inspect_model

    info = inspect_model(args.model, args.revision, online=True)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    console = _console()
    rows = [
        ("model", f"{info.name} (Hugging Face Hub, not downloaded)" if info.source == "hub"
         else f"{info.name} ({info.source}: {info.path})"),
        ("architecture", f"{info.architecture or '?'} ({info.model_type})"),
        ("parameters", f"{info.num_parameters:,} ({_count(info.num_parameters)}, from {info.parameter_source})"),
        ("shape", (f"{info.num_layers} encoder + {info.num_decoder_layers} decoder layers" if info.encoder_decoder
                   else f"{info.num_layers} layers") + f", hidden {info.hidden_size}, {info.num_heads} heads "
                  f"({info.num_kv_heads} key/value), head dim {info.head_dim}, MLP {info.intermediate_size}"),
        ("vocabulary", f"{info.vocab_size:,}{', tied embeddings' if info.tie_word_embeddings else ''}"),
        ("context", f"{info.context_length:,} tokens" if info.context_length else "?"),
        ("dtype", info.dtype or "?"),
        ("linear layers", ", ".join(info.linear_modules) or "-"),
        ("license", info.license or "?"),
        ("to download" if info.source == "hub" else "on disk", gib(info.size_on_disk)),
    ]
    for key, value in rows:
        console.print(f"[bold]{key:>14}[/]  {value}", highlight=False)
    for warning in info.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    return 0


def _data_stats(args, model, seq_len: int | None) -> tuple[DataStats | None, list[str]]:
    """The dataset's token lengths (or --seq-len as given), and a warning when they cannot be counted."""
    from tuiwiz.data.stats import DataStats

    if seq_len:
        if seq_len < 8:
            raise UserError("--seq-len must be at least 8", field="--seq-len")
        return DataStats.assumed(seq_len), []
    if not args.data:
        return None, []
    if not (Path(model.path or "") / "tokenizer.json").is_file():  # ModelText (data/rendering.py) counts with it
        return None, [f"token statistics are skipped: {model.name} has no tokenizer (tokenizer.json), so the "
                      f"lengths in {args.data} are not counted; pass --seq-len N to plan for your length"]
    from tuiwiz.data.rendering import token_stats

    return token_stats(args.data, model, task=args.task), []


def _option_dict(option) -> dict:
    from dataclasses import asdict

    est = option.estimate
    return {
        "key": option.key, "title": option.title, "fits": option.fits, "reason": option.reason,
        "rejected": option.rejected, "gpus": list(option.gpu_indices), "plan": asdict(option.plan),
        "effective_batch": option.effective_batch, "learning_rate": option.learning_rate,
        "lora_alpha": option.lora_alpha, "trainable_parameters": option.trainable_parameters,
        "needed_bytes": option.needed, "per_device": est.per_device.terms(),
        "fit": [asdict(f) for f in option.fit], "cpu_ram_bytes": est.cpu_ram, "disk_total_bytes": est.disk_total,
        "warnings": list(option.warnings), "epochs": option.epochs, "optimizer_steps": option.optimizer_steps,
        "rate_reason": option.rate_reason, "schedule_reason": option.schedule_reason,
    }


# What recommend tries without --experts; another --method turns them on.
_EVERYDAY_METHODS = ("full", "lora", "qlora", "prompt_tuning")
_OFFLOADED = {"zero3_offload_optimizer": "optimizer", "zero3_offload_all": "all"}


def _on_gpus(machine, gpus: int | None):
    """The machine with only its ``gpus`` GPUs that have the most free memory (0: none, the CPU)."""
    if gpus is None:
        return machine
    if gpus > len(machine.gpus):
        raise UserError(f"this machine has {len(machine.gpus)} GPU{'s' if len(machine.gpus) != 1 else ''}",
                        field="--gpus", hint="--gpu-snapshot NAME plans for another machine; "
                                             "`tuiwiz estimate --gpus N` estimates for any count")
    kept = {g.index for g in sorted(machine.gpus, key=lambda g: -g.memory_free_mb)[:gpus]}
    return replace(machine, gpus=tuple(g for g in machine.gpus if g.index in kept))


def _matches(option, settings: Settings) -> bool:
    """Whether an option is one the flags allow: their method (one with a rank, for --rank), their strategy."""
    p = option.plan
    offload = settings.offload or ("none" if settings.zero else None)
    return ((settings.method is None or p.method == settings.method)
            and (settings.rank is None or takes(p.method, "--rank"))
            and (settings.target_modules is None or takes(p.method, "--target-modules"))
            and (settings.zero is None or p.strategy.startswith(f"zero{settings.zero}"))
            and offload in (None, _OFFLOADED.get(p.strategy, "none")))


def _refit(option, settings: Settings, machine, model, args):
    """``option`` with the settings flags applied, re-estimated; the largest micro-batch (and checkpointing
    only if needed) that fits, where those are not given."""
    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.recommend import fit_on, reason_for, to_profile

    if not option.fit:  # rejected for another reason than memory (QLoRA on a CPU)
        return option
    n = max(1, len(option.gpu_indices))
    try:
        profile = apply_settings(to_profile(option, args.model, args.data or "data.jsonl", args.task), settings,
                                 model, distributed=False)
    except UserError as exc:
        return replace(option, fits=False, rejected=exc.message)
    t = profile.training
    sizes = [t.per_device_train_batch_size >> i for i in range(t.per_device_train_batch_size.bit_length())]
    checkpointing = [t.gradient_checkpointing] if settings.gradient_checkpointing is not None \
        else dict.fromkeys([t.gradient_checkpointing, True])
    bf16 = all(g.bf16 for g in machine.gpus if g.index in option.gpu_indices)
    for gc in checkpointing:
        for mb in sizes[:1] if settings.micro_batch else sizes:
            accum = settings.grad_accum or max(1, math.ceil(option.effective_batch / (mb * n)))
            tried = profile.model_copy(update={"training": t.model_copy(update={
                "per_device_train_batch_size": mb, "gradient_accumulation_steps": accum,
                "gradient_checkpointing": gc})})
            plan = Plan.from_profile(tried, model, device="cuda" if option.gpu_indices else "cpu", bf16=bf16,
                                     strategy=option.plan.strategy)
            est = estimate(model, plan, n)
            fit, rejected = fit_on(machine, est, option.gpu_indices)
            if rejected is None:
                break
        if rejected is None:
            break
    packing = tried.data.packing
    note = option.packing_note if packing and option.packing else \
        f" Packs the examples into rows of {plan.seq_len} tokens, each kept apart (--packing)." if packing else ""
    reason = f"{reason_for(plan, est, model)}{note} {option.rate_reason} {option.schedule_reason}".rstrip()
    return replace(option, plan=plan, estimate=est, fit=fit, fits=rejected is None, rejected=rejected,
                   effective_batch=mb * accum * n, packing=packing, packing_note=note, reason=reason,
                   lora_alpha=2.0 * plan.lora_r if plan.method in ("lora", "qlora") else None,
                   warnings=tuple(w for w in option.warnings if w not in option.estimate.notes) + est.notes)


def _constrained(options, settings: Settings, machine, model, args) -> list:
    """The recommended options that the settings flags allow, with those flags applied, fitting ones first."""
    kept = [o for o in options if _matches(o, settings)]
    if not kept:
        given = [flag for flag in ("--method", "--rank", "--target-modules", "--zero", "--offload")
                 if getattr(settings, flag[2:].replace("-", "_")) is not None]
        raise UserError(f"no option recommend tries on this machine matches {', '.join(given)}",
                        hint="`tuiwiz estimate` estimates any combination of these flags")
    if settings.shapes_training:
        kept = [_refit(o, settings, machine, model, args) for o in kept]

    def order(o):
        return (0, 0.0) if o.fits else (1, o.needed / (min((f.available for f in o.fit), default=1) or 1))

    return sorted(kept, key=order)


def _cmd_recommend(args) -> int:
    from tuiwiz.plan.hardware import probe
    from tuiwiz.plan.modelinfo import inspect_model
    from tuiwiz.plan.recommend import recommend, to_profile, with_task
    from tuiwiz.profile.schema import Profile

    settings = Settings.from_args(args)
    machine = _on_gpus(probe(snapshot=args.hardware), settings.gpus)
    model = inspect_model(args.model, online=True)
    stats, warnings = _data_stats(args, model, settings.seq_len)
    # a flag that fits no method fails here
    apply_settings(with_task(Profile(), args.task), settings, model, distributed=False)
    experts = args.experts or settings.method not in (None, *_EVERYDAY_METHODS) or settings.offload == "all"
    result = recommend(machine, model, stats, args.task, target_batch=args.target_batch, experts=experts)
    warnings += result.warnings
    options = _constrained(result.options, settings, machine, model, args)
    best = options[0] if options[0].fits else None
    if args.write:
        if best is None:
            raise UserError("no option fits this machine, so there is no profile to write",
                            hint="a smaller model, a shorter --seq-len, or a machine with more memory")
        if not args.data:
            raise UserError("--write needs --data: the profile names the dataset", field="--data")
        from tuiwiz.profile.io import save_profile

        profile = apply_settings(to_profile(best, args.model, args.data, args.task), settings, model,
                                 distributed=False)
        save_profile(profile, args.write)
        print(f"wrote {args.write} ({best.title})", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "machine": machine.source, "model": model.name, "parameters": model.num_parameters,
            "seq_len": result.seq_len, "seq_len_reason": result.seq_len_reason, "warnings": warnings,
            "options": [_option_dict(o) for o in options],
        }, indent=2))
        return 0
    from rich.table import Table

    console = _console()
    gpus = ", ".join(f"{g.index}: {g.name} {_gib_mb(g.memory_free_mb)} free" for g in machine.gpus) or \
        f"no GPU, {_gib_mb(machine.ram_available_mb)} RAM free"
    console.print(f"[bold]{model.name}[/] ({_count(model.num_parameters)} parameters) on {gpus}", highlight=False)
    console.print(f"max length {result.seq_len} tokens: {result.seq_len_reason}", highlight=False)
    table = Table(box=None, pad_edge=False)
    for column in ("", "option", "needs", "batch", "ckpt", "trainable", "why not"):
        table.add_column(column)
    for o in options:
        p = o.plan
        mark = "[green]✓[/]" if o.fits else "[red]✗[/]"
        batch = f"{p.micro_batch}×{p.gradient_accumulation}" + (f"×{len(o.gpu_indices)}" if len(o.gpu_indices) > 1
                                                                 else "")
        table.add_row(mark, o.title, gib(o.needed), batch, "on" if p.gradient_checkpointing else "off",
                      _count(o.trainable_parameters), o.rejected or "")
    console.print(table)
    if best is not None:
        console.print(f"[bold]best:[/] {best.title}. {best.reason}", highlight=False)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if best is None:
        console.print("[red]nothing fits[/]: try a smaller model or a shorter max length")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuiwiz")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
