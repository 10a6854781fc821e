"""Optional packages a run does not use are left out of its imports.

transformers, peft and TRL import some optional packages whenever they are installed: peft imports
bitsandbytes (which pulls in ``torch._dynamo``, sympy and networkx, and looks for its CPU kernels on the
hub), TRL imports wandb, and accelerate imports DeepSpeed (which picks its accelerator and logs it) whenever
a trainer asks whether the model is wrapped (``extract_model_from_parallel``). A bare TRL script pays for
all three on every run; tuiwiz knows from the profile whether the run needs them. A package the run does
not use is entered in ``sys.modules`` as None before the stack is imported: ``importlib.util.find_spec``
then answers None, which is how transformers, peft and accelerate ask whether it is installed, so they take
their "not installed" path. bench/startup.py measures the time this saves.

The recipe and its stack are then imported with Python's cyclic garbage collector paused (``import_recipe``).
Importing torch, transformers, TRL, peft and datasets creates some hundreds of thousands of objects that live
as long as the process; while they are being created, the collector's full passes scan all of them again and
again (found with a ``gc.callbacks`` timer). Once imported they are frozen (``gc.freeze``): later passes, while
the model loads and the steps run, skip them. bench/startup.py measures the import both ways.

Before that, transformers' scan of its models folder is wrapped so that it runs once per installation rather
than twice per process (tuiwiz/train/models_scan.py).
"""

from __future__ import annotations

import gc
import sys
from types import ModuleType

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


def import_recipe(task: str) -> ModuleType:
    """The recipe module for ``task``, imported (with its training stack) while the cyclic collector is
    paused; every object alive afterwards is moved out of the collector's reach (``gc.freeze``), the
    import's own garbage with it (small module-level objects, found with ``gc.collect``'s count: not worth
    a full pass over the stack's objects, which costs about what pausing saves). The collector is on again
    when this returns, as it was before."""
    was_enabled = gc.isenabled()
    gc.collect()  # what is garbage already goes now (a few ms in the runner), not into the frozen set
    gc.disable()
    try:
        from tuiwiz.paths import cache_dir
        from tuiwiz.train.models_scan import remember_scans

        remember_scans(cache_dir() / "transformers-scans")
        from tuiwiz.train.recipes import recipe_for

        return recipe_for(task)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
