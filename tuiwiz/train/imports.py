"""Optional packages a run does not use are left out of its imports.

transformers, peft and TRL import some optional packages whenever they are installed: peft imports
bitsandbytes (which pulls in ``torch._dynamo``, sympy and networkx, and looks for its CPU kernels on the
hub), TRL imports wandb, and accelerate imports DeepSpeed (which picks its accelerator and logs it) whenever
a trainer asks whether the model is wrapped (``extract_model_from_parallel``). A bare TRL script pays for
all three on every run; tuiwiz knows from the profile whether the run needs them. A package the run does
not use is entered in ``sys.modules`` as None before the stack is imported: ``importlib.util.find_spec``
then answers None, which is how transformers, peft and accelerate ask whether it is installed, so they take
their "not installed" path. bench/startup.py measures the time this saves.
"""

from __future__ import annotations

import sys

from tuiwiz.profile.schema import Profile


def needs_bitsandbytes(profile: Profile) -> bool:
    """QLoRA, a bitsandbytes optimizer, or a model whose checkpoint is already quantized (or unknown)."""
    if profile.method.type == "qlora" or "8bit" in profile.training.optim or "paged" in profile.training.optim:
        return True
    from tuiwiz.demo.builtin import is_builtin

    if is_builtin(profile.model.name_or_path):  # the built-in models are built here, never quantized
        return False
    try:
        import json

        from tuiwiz.plan.modelinfo import resolve_model_dir

        folder, _ = resolve_model_dir(profile.model.name_or_path, profile.model.revision)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except Exception:  # not found here: leave the decision to the libraries
        return True
    return "quantization_config" in config


def unused_packages(profile: Profile) -> list[str]:
    unused = []
    if not needs_bitsandbytes(profile):
        unused.append("bitsandbytes")
    if "wandb" not in profile.output.report_to:
        unused.append("wandb")
    from tuiwiz.run.distributed import deepspeed_config

    if deepspeed_config(profile) is None:  # only the ZeRO strategies run through DeepSpeed
        unused.append("deepspeed")
    return unused


def leave_out_unused(profile: Profile) -> list[str]:
    """Mark the packages ``profile``'s run does not use as absent (before the training stack is imported)."""
    left_out = []
    for name in unused_packages(profile):
        if name not in sys.modules:  # already imported: too late to leave out, and nothing to save
            sys.modules[name] = None
            left_out.append(name)
    return left_out
