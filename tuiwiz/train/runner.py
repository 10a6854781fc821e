"""The runner: one training run, top to bottom.

setup (state, signals, profile, data, model) -> trainer -> train -> save -> final status.
Its only outputs are files in the run dir; stdout and stderr go to train.log.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import psutil

from tuiwiz import __version__
from tuiwiz.errors import UserError
from tuiwiz.files import write_text_atomic
from tuiwiz.profile.io import load_profile
from tuiwiz.profile.schema import Profile
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir, RunnerLock, update_state
from tuiwiz.train.failures import Failure, RanksFailed, classify
from tuiwiz.train.stop import StopFlag


def _load_data(profile: Profile):
    from tuiwiz.data.datasets import (
        ColumnMap,
        check_validation_labels,
        load_dataset_file,
        load_hub_dataset,
        split_validation,
    )
    from tuiwiz.demo.build import resolve_demo_uri
    from tuiwiz.profile.io import is_local_data

    columns = ColumnMap(**profile.data.columns.model_dump())
    options = dict(format=profile.data.format, columns=columns, task=profile.task, limit=profile.data.limit)

    def load(value: str, evaluation: bool = False):
        if value.startswith("demo:"):
            return load_dataset_file(resolve_demo_uri(value), evaluation=evaluation, **options)
        if is_local_data(value):
            return load_dataset_file(Path(value), evaluation=evaluation, **options)
        name, _, split = value.partition(":")  # org/name or org/name:split
        return load_hub_dataset(name, split=split or "train", evaluation=evaluation, **options)

    train = load(profile.data.path)
    evaluation = None
    if profile.data.validation_path:
        evaluation = load(profile.data.validation_path, evaluation=True)
        check_validation_labels(train, evaluation, label_column=profile.data.columns.label)
    elif profile.data.validation_split:
        train, evaluation = split_validation(train, profile.data.validation_split, profile.training.seed)
    return train, evaluation


def _total_steps(profile: Profile, n_rows: int, world_size: int) -> int:
    """Optimizer steps as the Trainer resolves them: max_steps, else epochs of accumulated batches."""
    t = profile.training
    if t.max_steps > 0:
        return t.max_steps
    batches = math.ceil(n_rows / (t.per_device_train_batch_size * world_size))
    return max(1, math.ceil(math.ceil(batches / t.gradient_accumulation_steps) * t.num_train_epochs))


def _training_kwargs(profile: Profile, precision, run: RunDir, has_eval: bool) -> dict:
    t = profile.training
    kwargs = dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=profile.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=int(t.warmup_steps) if t.warmup_steps >= 1 else t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must reach the callback that stops the run, not be hidden
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=("steps" if t.eval_steps else "epoch") if has_eval else "no",
        eval_steps=t.eval_steps,
        bf16=precision.name == "bf16",
        fp16=precision.name == "fp16",
        use_cpu=precision.device == "cpu",
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        dataloader_num_workers=0,
    )
    from tuiwiz.run.distributed import DEEPSPEED_CONFIG, deepspeed_config

    if deepspeed_config(profile) is not None:
        kwargs["deepspeed"] = str(run.path / DEEPSPEED_CONFIG)
        if precision.device == "cpu":
            _skip_shared_memory_op()
    elif profile.distributed.strategy == "ddp":
        # Frozen base weights get no gradient; DDP must not wait for them.
        kwargs["ddp_find_unused_parameters"] = profile.method.type in ("prompt_tuning", "prefix_tuning", "p_tuning")
    return kwargs


def _wrapped_modules(model) -> list[str] | None:
    """Leaf names of the layers the method wrapped (what target_modules: auto became); None when none."""
    if not hasattr(model, "peft_config"):  # full, BitFit: nothing wrapped, and no peft import to pay for
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    return sorted(names) or None


def _skip_shared_memory_op() -> None:
    """On its CPU accelerator DeepSpeed compiles a shared-memory all-reduce op (about a minute, once)
    that only its inference engine uses; training's collectives go through torch.distributed (gloo).
    Marking the op unavailable makes DeepSpeed skip the build; nothing else changes."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _build_trainer(profile: Profile, run: RunDir, callbacks: list):
    """Everything from the frozen profile to a ready Trainer. Returns (trainer, info)."""
    import transformers
    from datasets import Dataset

    from tuiwiz.demo.builtin import is_builtin, resolve_builtin
    from tuiwiz.train.callbacks import AdaLoraCallback
    from tuiwiz.train.examples import classification_dataset, sft_rows
    from tuiwiz.train.modeling import apply_method, count_parameters, load_model, load_tokenizer, resolve_precision

    transformers.logging.set_verbosity_warning()
    precision = resolve_precision(profile)
    name = profile.model.name_or_path
    model_path = str(resolve_builtin(name)) if is_builtin(name) else name
    train_data, eval_data = _load_data(profile)
    tokenizer = load_tokenizer(model_path, profile)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    total_steps = _total_steps(profile, len(train_data.records), world_size)
    labels = train_data.labels if profile.task == "classification" else None

    # Seed before the model exists: adapter weights (LoRA's A, prompt embeddings) and new heads are
    # drawn at creation, before the Trainer would seed anything.
    transformers.set_seed(profile.training.seed)
    model = load_model(model_path, profile, precision, labels)
    loaded_dtype = str(model.dtype).removeprefix("torch.")  # under QLoRA: the weights left unquantized
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = apply_method(model, profile, total_steps, model_path)
    total, trainable = count_parameters(model)
    if profile.method.type == "adalora":
        callbacks.append(AdaLoraCallback(model))
    kwargs = _training_kwargs(profile, precision, run, eval_data is not None)

    if profile.task == "classification":
        import numpy as np

        def accuracy(prediction):
            return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

        trainer = transformers.Trainer(
            model=model,
            args=transformers.TrainingArguments(**kwargs),
            train_dataset=classification_dataset(train_data, tokenizer, profile, labels),
            eval_dataset=classification_dataset(eval_data, tokenizer, profile, labels) if eval_data else None,
            processing_class=tokenizer,
            data_collator=transformers.DataCollatorWithPadding(
                tokenizer, padding="max_length" if profile.training.pad_to_max_length else True,
                max_length=profile.data.max_length),
            compute_metrics=accuracy,
            callbacks=callbacks,
        )
    else:
        from trl import SFTConfig, SFTTrainer

        rows, options = sft_rows(train_data, tokenizer, profile)
        eval_rows = sft_rows(eval_data, tokenizer, profile)[0] if eval_data else None
        packing = profile.data.packing
        # Packing without cross-document attention needs flash attention; otherwise wrap.
        strategy = "bfd" if profile.model.attn_implementation == "flash_attention_2" else "wrapped"
        config = SFTConfig(
            **kwargs, max_length=profile.data.max_length, packing=packing, packing_strategy=strategy,
            dataset_num_proc=None,
            pad_to_multiple_of=profile.data.max_length if profile.training.pad_to_max_length else None, **options,
        )
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer, callbacks=callbacks,
        )
        if len(trainer.train_dataset) == 0:
            raise UserError(
                f"no example of {train_data.path} fits in data.max_length={profile.data.max_length} tokens",
                hint="raise data.max_length", file=train_data.path, field="data.max_length", kind="data",
            )
    args = trainer.args
    info = {
        "model_path": model_path,
        "precision": precision.name,
        "device": precision.device,
        "dtype": loaded_dtype,
        "world_size": args.world_size,
        # From the examples the trainer kept (packing and the length filter change their count).
        "max_steps": _total_steps(profile, len(trainer.train_dataset), args.world_size),
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "target_modules": _wrapped_modules(model),
        "params_total": total,
        "params_trainable": trainable,
        "train_examples": len(trainer.train_dataset),
        "eval_examples": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "data_format": train_data.format,
        "labels": list(labels) if labels else None,
        "tokenizer": tokenizer,
    }
    return trainer, info


def _save_output(trainer, info: dict, profile: Profile, run: RunDir) -> None:
    import json

    trainer.save_model(str(run.output))  # every rank: ZeRO-3 gathers the shards here
    if not trainer.is_world_process_zero():
        return
    info["tokenizer"].save_pretrained(str(run.output))
    meta = {
        "base_model": info["model_path"],
        "model": profile.model.name_or_path,
        "method": profile.method.type,
        "task": profile.task,
        "labels": info["labels"],
        "tuiwiz_version": __version__,
    }
    (run.output / "tuiwiz.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _versions() -> dict:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def _train(run: RunDir, profile: Profile, *, resume: bool, events: EventWriter | None,
           stop: StopFlag) -> tuple[str, dict]:
    """Build, train, save. Returns (status, fields): completed, or stopped with the checkpoint."""
    from tuiwiz.train.callbacks import RunnerCallback

    callback = RunnerCallback(events, stop)
    trainer, info = _build_trainer(profile, run, [callback])
    checkpoint = run.last_checkpoint() if resume else None
    if resume and checkpoint is None and events is not None:
        events.emit("status", status="loading", message="no checkpoint yet: starting from step 0")
    if events is not None:
        public = {k: v for k, v in info.items() if k != "tokenizer"}
        events.emit(
            "run_start", durable=True, run_id=run.run_id, tuiwiz_version=__version__, versions=_versions(),
            task=profile.task, method=profile.method.type, model=profile.model.name_or_path,
            learning_rate=profile.learning_rate, resumed_from=str(checkpoint) if checkpoint else None,
            pid=os.getpid(), **public,
        )
        update_state(run, only_from=("loading", "starting"), status="running")
    if stop.poll():
        return "stopped", {"message": "stopped before training began; nothing to checkpoint"}
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.failure is not None:
        raise callback.failure
    if stop.requested:
        last = run.last_checkpoint()
        return "stopped", {"step": trainer.state.global_step, "checkpoint": str(last) if last else None}
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    _save_output(trainer, info, profile, run)
    metrics = dict(result.metrics)
    tokens = trainer.state.num_input_tokens_seen
    metrics["tokens_seen"] = tokens
    if metrics.get("train_runtime"):
        metrics["train_tokens_per_second"] = round((tokens - callback.start_tokens) / metrics["train_runtime"], 1)
    if events is not None:
        # what really trained: DeepSpeedEngine under ZeRO, DistributedDataParallel under DDP
        events.emit("run_end", durable=True, status="completed", step=trainer.state.global_step,
                    metrics=metrics, output=str(run.output), engine=type(trainer.model_wrapped).__name__)
    return "completed", {}


OOM_KINDS = ("oom_gpu", "oom_cpu")


def _recover(run: RunDir, profile: Profile, events: EventWriter, failure: Failure, recovered: int) -> None:
    """After an out-of-memory failure: a lighter profile, then this process replaced by a resuming runner.

    Returns only when there is nothing to recover to.
    """
    from tuiwiz.plan.hardware import probe as probe_hardware
    from tuiwiz.plan.modelinfo import inspect_model
    from tuiwiz.plan.recommend import step_down
    from tuiwiz.profile.io import dump_profile

    step = step_down(profile, inspect_model(profile.model.name_or_path, profile.model.revision, build_demo=True),
                     probe_hardware(run.path), allow_truncation=False)
    if step is None:
        return
    lighter, reason = step
    attempt = recovered + 1
    # Keep the old profile beside, then swap the new one in whole: profile.yaml is never missing or half.
    shutil.copy2(run.profile, run.path / f"profile.before-recovery-{attempt}.yaml")
    header = f"# tuiwiz run {run.run_id}, after out-of-memory recovery {attempt}: {reason}\n"
    write_text_atomic(run.profile, header + dump_profile(lighter))
    checkpoint = run.last_checkpoint()
    kept = None
    if step.kind == "method" and run.checkpoints.is_dir():
        # Another method's checkpoint (full weights and their optimizer, or another optimizer) cannot be
        # resumed as this one: it is kept beside, untouched, and the lighter method starts at step 0.
        kept = run.path / f"checkpoints.before-recovery-{attempt}"
        os.replace(run.checkpoints, kept)
        if checkpoint is not None:
            reason += (f"; the {profile.method.type} checkpoint at step {checkpoint.name.removeprefix('checkpoint-')} "
                       f"cannot be resumed as {lighter.method.type}, so it starts at step 0 "
                       f"(the old checkpoints are kept in {kept.name})")
        checkpoint = None
    events.emit("error", durable=True, **failure.to_event())
    events.emit("status", status="recovering", durable=True, message=reason, recovery=attempt,
                checkpoint=str(checkpoint) if checkpoint else None, kept=str(kept) if kept else None)
    events.close()
    sys.stdout.flush(), sys.stderr.flush()
    # A fresh process: the failed one's memory (and a CUDA context after an OOM) is best let go whole.
    os.execv(sys.executable, [sys.executable, "-m", "tuiwiz.train", str(run.path), "--resume",
                              "--recovered", str(attempt), "--watched"])


def _recovery_exhausted(failure: Failure, recovered: int, limit: int) -> Failure:
    """Out of memory again after the recoveries allowed (or with nothing lighter left): say which."""
    if recovered >= limit:
        why = f"after {recovered} automatic recover{'y' if recovered == 1 else 'ies'}, " \
              f"the most training.auto_recover: {limit} allows"
    else:
        why = "and no lighter setting is left to recover with"
    tried = "the settings tried before are in profile.before-recovery-*.yaml" if recovered else None
    return dataclasses.replace(failure, message=f"{failure.message} ({why})",
                               hint="; ".join(filter(None, [tried, failure.hint])))


def run_training(run_dir: str, *, resume: bool = False, worker: bool = False, node_rank: int | None = None,
                 recovered: int = 0, watched: bool = False) -> int:
    """The runner's entry point: one process, a rank under accelerate, or the supervisor of the ranks.

    Unless ``watched`` (a process already under its watcher, as after a recovery's exec), it first
    forks the small parent that records a signal's end of the run (see watcher.py).
    """
    run = RunDir(Path(run_dir).resolve())
    if worker:
        from tuiwiz.train.worker import run_worker

        return run_worker(run, resume=resume)
    if not watched:
        from tuiwiz.train.watcher import fork_watcher

        code = fork_watcher(run)
        if code is not None:
            return code
    lock = RunnerLock(run)
    if not lock.acquire():
        print(f"another runner already holds {run.path}", file=sys.stderr)
        return 3
    events = EventWriter(run.events)

    def finish(status: str, exit_code: int, failure: Failure | None = None, **fields) -> int:
        if failure is not None:
            events.emit("error", durable=True, **failure.to_event())
            events.emit("run_end", status="failed", error_kind=failure.kind)
        events.emit("status", status=status, durable=True, **fields)
        update_state(run, status=status, exit_code=exit_code, error=failure.message if failure else None)
        return exit_code

    stop = StopFlag()

    def on_signal(signum, frame):
        stop.requested = True  # only a flag: raising here could land inside an import

    # The state says "loading" only once this handler is in place: stop_run waits for that.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    profile = None
    try:
        me = psutil.Process()
        watcher = me.parent()  # the waiting parent forked above (or before a recovery's exec)
        update_state(run, status="loading", pid=me.pid, pgid=os.getpgid(0), create_time=me.create_time(),
                     watcher_pid=watcher.pid if watcher else None,
                     watcher_create_time=watcher.create_time() if watcher else None, exit_code=None, error=None)
        events.emit("status", status="loading", resume=resume)
        profile = load_profile(run.profile).profile
        from tuiwiz.run.distributed import is_distributed

        if is_distributed(profile):
            from tuiwiz.train.supervisor import supervise

            return supervise(run, profile, events, finish, resume=resume, node_rank=node_rank, stop=stop)
        status, fields = _train(run, profile, resume=resume, events=events, stop=stop)
        return finish(status, 0, **fields)
    except BaseException as exc:  # every failure is recorded, then the process ends
        if not isinstance(exc, RanksFailed):  # the ranks' own logs hold theirs
            traceback.print_exc()
        failure = classify(exc)
        if profile is not None and failure.kind in OOM_KINDS and recovered < profile.training.auto_recover:
            lock.release()
            _recover(run, profile, events, failure, recovered)  # replaces this process when it can
            lock.acquire()
        if profile is not None and failure.kind in OOM_KINDS and profile.training.auto_recover:
            failure = _recovery_exhausted(failure, recovered, profile.training.auto_recover)
        return finish("failed", 1, failure)
    finally:
        events.close()
        lock.release()
