"""Faults for the tests, patched into the training code of every Python process that has this folder on
PYTHONPATH (Python imports sitecustomize at start-up). Nothing happens unless a variable below is set, and
nothing is imported until the module it patches is.

Only for failures a real one cannot reach on a CPU test machine. Running out of RAM is tested for real, under an
address-space limit (tests/test_oom_real.py: recovery, and giving up after training.auto_recover; and
tests/test_failures.py: the oom_cpu kind); what is injected here:

TUIWIZ_INJECT_OOM_ABOVE_BATCH=N   a CUDA out-of-memory error from step 2 on while the micro-batch is above N:
                                  no GPU to run out of. test_lifecycle.py (oom_gpu and its hint without
                                  auto_recover), test_distributed.py (recovery of a multi-process run: every
                                  rank out of memory at the same step, for the supervisor's verdict over them)
TUIWIZ_INJECT_OOM_FULL=1          the same while every weight trains (full fine-tuning): test_lifecycle.py's step
                                  down from full to LoRA; the demo model's full fine-tuning holds only about 15 MB
                                  more than LoRA, too little for a real limit to tell apart
TUIWIZ_INJECT_ERROR_RANK=R        a RuntimeError on rank R from step 3 on: test_distributed.py, one rank failing
                                  while the others go on
TUIWIZ_INJECT_ABORT_AFTER_RESULT_RANK=R
                                  rank R aborts (SIGABRT) on its way out, after every rank has finished,
                                  as a native destructor would: test_distributed.py
"""

import importlib.abc
import importlib.machinery
import os
import sys

PATCHED = "tuiwiz.train.callbacks", "tuiwiz.train.worker"


def _patch_callbacks(module) -> None:
    import torch

    original = module.RunnerCallback.on_step_begin

    def on_step_begin(self, args, state, control, **kwargs):
        limit = os.environ.get("TUIWIZ_INJECT_OOM_ABOVE_BATCH")
        if limit and args.per_device_train_batch_size > int(limit) and state.global_step >= 2:
            raise torch.OutOfMemoryError("injected: CUDA out of memory (TUIWIZ_INJECT_OOM_ABOVE_BATCH)")
        model = kwargs.get("model")
        if os.environ.get("TUIWIZ_INJECT_OOM_FULL") and state.global_step >= 2 and model is not None \
                and all(p.requires_grad for p in model.parameters()):
            raise torch.OutOfMemoryError("injected: CUDA out of memory (TUIWIZ_INJECT_OOM_FULL)")
        rank = os.environ.get("RANK", "0")
        if os.environ.get("TUIWIZ_INJECT_ERROR_RANK") == rank and state.global_step >= 3:
            raise RuntimeError(f"injected failure on rank {rank} (TUIWIZ_INJECT_ERROR_RANK)")
        return original(self, args, state, control, **kwargs)

    module.RunnerCallback.on_step_begin = on_step_begin


def _patch_worker(module) -> None:
    original = module._leave_process_group  # the last thing a rank does once it has written its result

    def leave_then_abort() -> None:
        original()
        if os.environ.get("TUIWIZ_INJECT_ABORT_AFTER_RESULT_RANK") == os.environ.get("RANK", "0"):
            os.abort()

    module._leave_process_group = leave_then_abort


PATCHES = {"tuiwiz.train.callbacks": _patch_callbacks, "tuiwiz.train.worker": _patch_worker}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the modules to patch as the path finder does, and patches each once it has run."""

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if any(name.startswith("TUIWIZ_INJECT_") for name in os.environ):
    sys.meta_path.insert(0, _PatchOnImport())
