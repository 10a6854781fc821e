"""The settings flags that ``tuiwiz estimate`` and ``tuiwiz recommend`` share (--method, --rank, ... --zero).

Each flag sets one profile field (FLAGS), so an estimate from flags is the estimate of the profile those
flags describe, checked by the same schema, and a profile recommend writes carries them. Light: no torch stack.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from tuiwiz.errors import UserError
from tuiwiz.methods import METHOD_NAMES, METHODS

if TYPE_CHECKING:
    from tuiwiz.plan.modelinfo import ModelInfo
    from tuiwiz.profile.schema import Profile

# flag -> (the profile field it sets, metavar or None for on/off, help); Settings has a field of the flag's name
FLAGS = {
    "--method": ("method.type", "METHOD", None),
    "--rank": ("method.r", "R", "LoRA r (AdaLoRA: init_r)"),
    "--target-modules": ("method.target_modules", "A,B", "comma list, or all-linear"),
    "--micro-batch": ("training.per_device_train_batch_size", "N", None),
    "--grad-accum": ("training.gradient_accumulation_steps", "N", None),
    "--seq-len": ("data.max_length", "N", "tokens per example"),
    "--gradient-checkpointing": ("training.gradient_checkpointing", None, None),
    "--precision": ("training.precision", "P", None),
    "--weights-dtype": ("model.dtype", "DTYPE", "pure bf16: --precision bf16 --weights-dtype bfloat16"),
    "--optimizer": ("training.optim", "NAME", None),
    "--attn": ("model.attn_implementation", "IMPL", None),
    "--packing": ("data.packing", None, "rows filled to --seq-len (the estimate counts every row full)"),
    "--upcast-non-quantized": ("method.upcast_non_quantized", None,
                               "QLoRA: cast the weights left unquantized to fp32, as peft's k-bit preparation does"),
    "--gpus": ("distributed.num_processes", "N", "how many GPUs (0: the CPU)"),
    "--zero": ("distributed.strategy", "STAGE", None),
    "--offload": ("distributed.offload_optimizer", "WHAT", "with --zero (default none)"),
}
# fields a flag sets besides its own, for naming the flag in the schema's errors
ALSO_SET = {"method.init_r": "--rank", "method.target_r": "--rank", "distributed.offload_params": "--offload"}
ZERO_STAGES = ("2", "3")
OFFLOADS = ("none", "optimizer", "all")


def _attribute(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _schema_choices() -> dict[str, tuple[str, ...]]:
    from tuiwiz.profile.schema import ModelConfig, Optimizer, TrainingConfig

    return {"--method": METHOD_NAMES, "--precision": get_args(TrainingConfig.model_fields["precision"].annotation),
            "--weights-dtype": get_args(ModelConfig.model_fields["dtype"].annotation),
            "--optimizer": get_args(Optimizer),
            "--attn": get_args(ModelConfig.model_fields["attn_implementation"].annotation),
            "--zero": ZERO_STAGES, "--offload": OFFLOADS}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """The settings flags, on ``estimate`` and ``recommend`` alike; values are checked by Settings.from_args."""
    group = parser.add_argument_group("settings (each sets the profile field named)")
    choices = _schema_choices()
    for flag, (where, metavar, text) in FLAGS.items():
        described = [text] if text else []
        if flag in choices:
            described.append("one of " + ", ".join(choices[flag]))
        described.append(f"sets {where}")
        if metavar is None:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help="; ".join(described))
        else:
            group.add_argument(flag, metavar=metavar, help="; ".join(described))


@dataclass(frozen=True)
class Settings:
    """The settings flags given (None: not given), each value checked."""

    method: str | None = None
    rank: int | None = None
    target_modules: str | tuple[str, ...] | None = None  # "all-linear" / "auto", or module names
    micro_batch: int | None = None
    grad_accum: int | None = None
    seq_len: int | None = None
    gradient_checkpointing: bool | None = None
    precision: str | None = None
    weights_dtype: str | None = None
    optimizer: str | None = None
    attn: str | None = None
    packing: bool | None = None
    upcast_non_quantized: bool | None = None
    gpus: int | None = None
    zero: str | None = None
    offload: str | None = None

    @classmethod
    def from_args(cls, args) -> Settings:
        choices = _schema_choices()
        values = {}
        for flag in FLAGS:
            value = getattr(args, _attribute(flag), None)
            if value is not None and not isinstance(value, bool):
                value = (_choice(value, flag, choices[flag]) if flag in choices
                         else _targets(value) if flag == "--target-modules"
                         else _whole(value, flag, low=0 if flag == "--gpus" else 1))
            values[_attribute(flag)] = value
        if values["zero"] and values["gpus"] == 0:
            raise UserError("ZeRO splits the work across GPUs; --gpus 0 plans for the CPU", field="--zero")
        return cls(**values)

    @property
    def shapes_training(self) -> bool:
        """Whether a flag changes the fine-tune itself (not only the method, the machine or the strategy)."""
        return any(getattr(self, _attribute(flag)) is not None for flag, (where, _, _) in FLAGS.items()
                   if not where.startswith("distributed.") and flag != "--method")


def _whole(value: str, flag: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise UserError(f"{value!r} is not a whole number of at least {low}", field=flag)
    return number


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> str:
    if value in choices:
        return value
    close = difflib.get_close_matches(value, choices, n=1)
    raise UserError(f"{value!r} is not one of its values", field=flag,
                    hint=(f"did you mean '{close[0]}'? " if close else "") + "valid: " + ", ".join(choices))


def _targets(value: str) -> str | tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise UserError("names no module", field="--target-modules", hint="e.g. q_proj,v_proj, or all-linear")
    if names in (("all-linear",), ("auto",)):
        return names[0]
    return names


def _method_fields(method: str) -> dict:
    from tuiwiz.profile.schema import Profile

    classes = {cls.model_fields["type"].default: cls for cls in get_args(Profile.model_fields["method"].annotation)}
    return classes[method].model_fields


def takes(method: str, flag: str) -> bool:
    """Whether a method has the field a method-specific flag (--rank, --target-modules) sets."""
    names = _method_fields(method)
    return ("r" in names or "init_r" in names) if flag == "--rank" else "target_modules" in names


def _checked_targets(targets: tuple[str, ...], model: ModelInfo, method: str) -> list[str]:
    if METHODS[method].low_rank or method == "ia3":
        unknown = [t for t in targets if not any(layer.matches(t) for layer in model.linear_layers)]
        if unknown:
            raise UserError(f"{model.name} has no linear layer named {', '.join(unknown)}", field="--target-modules",
                            hint="choose from: " + ", ".join(model.linear_modules))
    return list(targets)


def apply_settings(profile: Profile, settings: Settings, model: ModelInfo, *, distributed: bool = True) -> Profile:
    """``profile`` with the flags' values in their fields, validated by the schema; errors name the flag."""
    data = profile.model_dump(mode="json")
    method = data["method"]
    if settings.method and settings.method != method["type"]:
        accepted = _method_fields(settings.method)
        method = {"type": settings.method, **{k: v for k, v in method.items() if k in accepted and k != "type"}}
    kind = method["type"]
    for flag in ("--rank", "--target-modules"):
        if getattr(settings, _attribute(flag)) is not None and not takes(kind, flag):
            raise UserError(f"{METHODS[kind].title} has no {flag[2:].replace('-', ' ')}", field=flag,
                            hint=f"{flag} applies to " + ", ".join(m for m in METHOD_NAMES if takes(m, flag)))
    if settings.rank is not None:
        if "r" in method:
            method["r"] = settings.rank
        else:
            method.update(init_r=settings.rank, target_r=min(method["target_r"], settings.rank))
    if settings.target_modules is not None:
        method["target_modules"] = settings.target_modules if isinstance(settings.target_modules, str) \
            else _checked_targets(settings.target_modules, model, kind)
    if settings.upcast_non_quantized is not None:
        if "upcast_non_quantized" not in _method_fields(kind):
            raise UserError(f"{METHODS[kind].title} quantizes nothing to leave unquantized",
                            field="--upcast-non-quantized", hint="--upcast-non-quantized applies to --method qlora")
        method["upcast_non_quantized"] = settings.upcast_non_quantized
    data["method"] = method
    for flag, (where, _, _) in FLAGS.items():
        section, key = where.split(".")
        if section in ("model", "data", "training") and getattr(settings, _attribute(flag)) is not None:
            data[section][key] = getattr(settings, _attribute(flag))
    if distributed:
        _apply_distributed(data["distributed"], settings)
    return _validated(data)


def _apply_distributed(dist: dict, settings: Settings) -> None:
    if settings.gpus == 0:
        dist.update(strategy="single", num_processes=1, gpus=None, offload_optimizer=False, offload_params=False)
        dist["nodes"].update(count=1, rank=0)
    elif settings.gpus is not None:
        dist["num_processes"] = settings.gpus
        if settings.gpus > 1 and dist["strategy"] == "single" and not settings.zero:
            dist["strategy"] = "ddp"
        if dist["gpus"] is not None and len(dist["gpus"]) < settings.gpus:
            dist["gpus"] = None
    offload = settings.offload or ("none" if settings.zero else None)
    if settings.zero:
        dist["strategy"] = f"zero{settings.zero}"
    if offload:
        if offload != "none" and dist["strategy"] not in ("zero2", "zero3"):
            raise UserError("offloading is a DeepSpeed ZeRO feature: add --zero 3", field="--offload")
        if offload == "all" and dist["strategy"] != "zero3":
            raise UserError("offloading the parameters needs --zero 3 (ZeRO-2 does not partition them)",
                            field="--offload")
        dist.update(offload_optimizer=offload != "none", offload_params=offload == "all")


def _validated(data: dict) -> Profile:
    import yaml

    from tuiwiz.profile.io import parse_profile_text

    try:
        return parse_profile_text(yaml.safe_dump(data, sort_keys=False), file="<flags>")
    except UserError as exc:
        flag = next((f for f, (where, _, _) in FLAGS.items() if where == exc.field), ALSO_SET.get(exc.field or ""))
        raise UserError(exc.message, hint=exc.hint, field=flag or exc.field, kind="input") from None


def plan_strategy(profile: Profile, device: str) -> tuple[str, list[str]]:
    """The memory estimate's strategy for the profile's distributed section, and a note where it approximates."""
    dist = profile.distributed
    if device == "cpu":
        return "single", ([f"no GPU: estimated for one process on the CPU, not {dist.strategy}"]
                          if dist.strategy != "single" else [])
    if dist.strategy == "zero3" and (dist.offload_optimizer or dist.offload_params):
        return ("zero3_offload_all" if dist.offload_params else "zero3_offload_optimizer"), []
    if dist.strategy == "zero2" and dist.offload_optimizer:
        return "zero2", ["ZeRO-2's optimizer offload is not modelled: its states are counted on the GPU "
                         "(an upper bound)"]
    return dist.strategy, []
