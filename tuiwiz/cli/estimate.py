"""``tuiwiz estimate``: the memory a fine-tune needs per GPU (or in RAM), term by term, from a profile, the
settings flags (settings.py), or a model's config.json alone. Light: no torch stack.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuiwiz.cli.settings import Settings, add_setting_flags, apply_settings, plan_strategy
from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.tasks import TASK_NAMES, TASKS
from tuiwiz.units import MIB, count, gib, size

if TYPE_CHECKING:
    from tuiwiz.plan.hardware import Machine
    from tuiwiz.plan.modelinfo import ModelInfo
    from tuiwiz.profile.schema import Profile

COMMANDS = ("estimate",)


def add_commands(subparsers) -> None:
    est = subparsers.add_parser(
        "estimate", help="memory per GPU of a fine-tune, term by term (profile, flags, or a config.json)",
        description="The estimated peak memory per GPU (or RAM on the CPU) of a fine-tune, term by term. "
                    "Without a profile, the settings flags describe it on a default profile's settings.")
    est.add_argument("profile_file", nargs="?", metavar="PROFILE", help="a profile; the flags override its fields")
    model = est.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="M", help="'demo', a local folder, or a hub id (read without weights)")
    model.add_argument("--config", metavar="FILE.json", help="estimate from a model's config.json alone")
    est.add_argument("--gpu-snapshot", "--hardware", dest="gpu_snapshot", metavar="NAME",
                     help="plan for a recorded machine (a name from tuiwiz/plan/snapshots, or `tuiwiz hw --save` "
                          "JSON); default: $TUIWIZ_HARDWARE, else this machine")
    est.add_argument("--task", choices=TASK_NAMES, help="the training task (default: the profile's, else sft)")
    est.add_argument("--json", action="store_true", help="machine-readable output")
    add_setting_flags(est)


def dispatch(args) -> int | None:
    return _cmd_estimate(args) if getattr(args, "command", None) == "estimate" else None


def model_from_config_file(path: str) -> ModelInfo:
    from tuiwiz.plan.modelinfo import model_from_config

    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read it: {exc.strerror}", file=path, field="--config") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError("not a JSON config", file=path, field="--config", hint="a model's config.json") from None
    try:
        return model_from_config(config, Path(path).name)
    except (KeyError, AttributeError, TypeError):
        raise UserError("not a transformer's config.json: the model's shape is missing", file=path,
                        field="--config") from None


def _model(args, profile: Profile | None) -> ModelInfo:
    from tuiwiz.plan.modelinfo import inspect_model

    if args.config:
        return model_from_config_file(args.config)
    if args.model:
        return inspect_model(args.model, online=True)
    if profile is None:
        raise UserError("which model? give a PROFILE, --model M, or --config FILE.json", field="--model")
    return inspect_model(profile.model.name_or_path, profile.model.revision, online=True)


@dataclass(frozen=True)
class Assumed:
    """The devices an estimate is for."""

    device: str  # cuda / cpu
    n: int
    bf16: bool
    gpu_indices: tuple[int, ...]  # of this machine's GPUs; () on the CPU or for GPUs it does not have
    text: str


def _assumed(machine: Machine, settings: Settings, profile: Profile) -> Assumed:
    source = "this machine" if machine.source in ("nvml", "cpu") else machine.source.replace(":", " ", 1)
    if settings.gpus == 0 or (settings.gpus is None and not machine.has_gpu):
        return Assumed("cpu", 1, False, (), f"CPU ({machine.cpu_model}), {gib(machine.ram_available_mb * MIB)} "
                                            f"RAM available ({source})")
    dist = profile.distributed
    n = dist.world_size
    where = f"{n} GPU{'s' if n > 1 else ''}" + (f" on {dist.nodes.count} machines" if dist.nodes.count > 1 else "")
    if not machine.has_gpu:
        return Assumed("cuda", n, True, (), f"{where}, assumed with bf16 (this machine has none; --gpu-snapshot "
                                            "NAME plans for a recorded card)")
    named = [g for g in machine.gpus if g.index in (dist.gpus or ())]  # the profile's distributed.gpus
    chosen = (named or sorted(machine.gpus, key=lambda g: -g.memory_free_mb))[:dist.num_processes]
    names = ", ".join(dict.fromkeys(g.name for g in chosen))
    if dist.num_processes > len(machine.gpus):
        return Assumed("cuda", n, all(g.bf16 for g in chosen), (),
                       f"{where} ({source} has {len(machine.gpus)}: {names}; no fit check)")
    return Assumed("cuda", n, all(g.bf16 for g in chosen), tuple(g.index for g in chosen),
                   f"{where}: {names}, {gib(min(g.memory_free_bytes for g in chosen))} free ({source})")


def _cmd_estimate(args) -> int:
    from rich.markup import escape

    from tuiwiz.plan.hardware import probe
    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.recommend import fit_on, settle_on, with_task
    from tuiwiz.profile.io import load_profile
    from tuiwiz.profile.schema import Profile

    settings = Settings.from_args(args)
    loaded = load_profile(args.profile_file).profile if args.profile_file else None
    model = _model(args, loaded)
    machine = probe(snapshot=args.gpu_snapshot)
    base = loaded or Profile()
    profile = apply_settings(with_task(base, args.task) if args.task else base, settings, model)
    at = _assumed(machine, settings, profile)
    strategy, notes = plan_strategy(profile, at.device)
    plan = Plan.from_profile(profile, model, device=at.device, bf16=at.bf16, strategy=strategy)
    plan, head = settle_on(machine, plan, profile.training.loss_head, model, at.n)
    if TASKS[profile.task].whole_logits:
        notes = notes + [head.reason]
    est = estimate(model, plan, at.n)
    fit, rejected = fit_on(machine, est, at.gpu_indices) if at.gpu_indices or at.device == "cpu" else ((), None)
    # the device with the least room decides
    tightest = min(fit, key=lambda f: f.available, default=None)
    notes = notes + list(est.notes)
    if args.json:
        print(json.dumps({
            "model": {"name": model.name, "model_type": model.model_type, "source": model.source,
                      "parameters": model.num_parameters},
            "machine": {"source": machine.source, "device": at.device, "devices": at.n, "bf16": at.bf16,
                        "gpus": list(at.gpu_indices), "assumed": at.text},
            "plan": asdict(plan), "packing": profile.data.packing,
            **{k: v for k, v in asdict(est).items() if k != "per_device"},
            "per_device": est.per_device.terms(), "static": est.per_device.static,
            "peak_dynamic": est.per_device.peak_dynamic, "total": est.total,
            "fits": None if tightest is None else rejected is None, "usable_bytes": tightest and tightest.available,
            "why_not": rejected, "notes": notes,
            "warnings": list(model.warnings),
        }, indent=2))
        return 0
    _print_estimate(model, profile, plan, est, at)
    console = _console()
    if tightest is not None and rejected is None:
        place = "RAM" if tightest.index is None else f"GPU {tightest.index}"
        console.print(f"[green]fits[/]: {size(tightest.available)} usable in {place}", highlight=False)
    elif rejected:
        console.print(f"[red]does not fit[/]: {escape(rejected)}", highlight=False)
    for line in notes:
        console.print(f"[dim]note:[/] {escape(line)}", highlight=False)
    for line in model.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    return 0


_LABELS = {"optimizer": "optimizer states", "optimizer_step": "optimizer step", "overhead": "allocator overhead",
           "context": "CUDA context", "reference": "reference model", "reference_forward": "reference forward",
           "generation": "generation"}
_STRATEGIES = {"ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "zero3_offload_optimizer": "ZeRO-3, optimizer "
               "offloaded", "zero3_offload_all": "ZeRO-3, parameters and optimizer offloaded"}
_TASK_TERMS = ("reference", "reference_forward", "generation")
_PHASES = {"activations": "forward/backward", "logits": "forward/backward", "optimizer_step": "optimizer step",
           "reference_forward": "forward, beside the activations (no gradients)",
           "generation": "sampling completions, before the forward"}


def _settings_line(plan, profile: Profile) -> str:
    m = METHODS[plan.method]
    what = m.title
    if m.low_rank:
        rank = plan.adalora_init_r if plan.method == "adalora" else plan.lora_r
        what += f" r{rank} on " + (", ".join(plan.lora_targets) if plan.lora_targets else "every linear layer")
    weights = plan.weights_dtype or "weights as the runner loads them"
    parts = [TASKS[plan.task].title, what,
             f"micro-batch {plan.micro_batch} × {plan.gradient_accumulation} accumulation steps",
             _tokens_text(plan) + (" packed" if profile.data.packing else ""),
             f"{plan.precision} on {weights} weights" if plan.weights_dtype else f"{plan.precision}, {weights}",
             plan.attn_implementation, plan.optimizer,
             "checkpointing " + ("on" if plan.gradient_checkpointing else "off")]
    if plan.strategy != "single":
        parts.append(_STRATEGIES[plan.strategy])
    return " · ".join(parts)


def _tokens_text(plan) -> str:
    """A sequence's tokens as the task counts them."""
    if TASKS[plan.task].generates:
        return f"{plan.seq_len:,}-token prompts + {plan.completion_len:,} generated tokens"
    if TASKS[plan.task].model == "seq2seq":
        return f"{plan.seq_len:,} input + {plan.decoder_len:,} target tokens"
    return f"{plan.seq_len:,} tokens"


def _activations_text(plan) -> str:
    sequences = f"{plan.micro_batch} × {plan.sequences_per_example}" if plan.sequences_per_example > 1 \
        else f"{plan.micro_batch}"
    return f"{sequences} sequences of {_tokens_text(plan)}"


def _console():
    from rich.console import Console

    return Console()


def _print_estimate(model, profile, plan, est, at: Assumed) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    b = est.per_device
    source = {"config": "config.json only", "hub": "Hub metadata, not downloaded"}.get(model.source, model.source)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", justify="right", no_wrap=True)
    head.add_column()
    for key, value in (("model", f"{model.name}: {model.model_type}, {count(model.num_parameters, digits=2)} "
                                 f"parameters ({source})"),
                       ("settings", _settings_line(plan, profile)), ("machine", at.text)):
        head.add_row(key, Text(value))
    console.print(head, highlight=False)
    table = Table(box=None, pad_edge=False, title_justify="left",
                  title=f"peak of one training step, {'per GPU' if at.device == 'cuda' else 'in RAM'}")
    for column, justify in (("term", "left"), ("bytes", "right"), ("held during", "left")):
        table.add_column(column, justify=justify)
    labels = _LABELS if at.device == "cuda" else {**_LABELS, "context": "the process (Python, torch)",
                                                  "overhead": "workspace, malloc slack"}
    grads = "backward and optimizer step" if b.gradients_during_backward else "optimizer step"
    details = {"adapter": f"{count(est.trainable_parameters, digits=2)} trainable, fp32",
               "activations": _activations_text(plan),
               "generation": f"KV cache of {plan.generation_batch} completions"}
    for name, value in b.terms().items():
        if name in _TASK_TERMS and not value:
            continue  # a task's own term, absent from this one
        when = grads if name == "gradients" else _PHASES.get(name, "the whole step")
        detail = f" ({details[name]})" if name in details and value else ""
        table.add_row(labels.get(name, name.replace("_", " ")), size(value), when + detail)
    table.add_row("[bold]total[/]", f"[bold]{size(est.total)}[/]", "")
    console.print(table, highlight=False)
    forward = b.activations + b.logits + (b.gradients if b.gradients_during_backward else 0)
    step = b.gradients + b.optimizer_step
    console.print(f"total = {size(b.static)} held the whole step + the larger of forward/backward ({size(forward)}) "
                  f"and the optimizer step ({size(step)})", highlight=False)
    if at.device == "cuda":
        console.print(f"CPU RAM {size(est.cpu_ram)}; disk {size(est.disk_total)} for the output and "
                      f"{profile.training.save_total_limit or 1} checkpoints", highlight=False)
