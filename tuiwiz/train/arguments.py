"""The Trainer's arguments from the profile, and the number of steps they make."""

from __future__ import annotations

import math
import os

from tuiwiz.methods import METHODS
from tuiwiz.profile.schema import Profile
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.modeling import Precision


def world_size() -> int:
    """Training processes, as accelerate launch tells each rank (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def total_steps(profile: Profile, n_rows: int, world_size: int) -> int:
    """Optimizer steps as the Trainer resolves them: max_steps, else epochs of accumulated batches."""
    t = profile.training
    if t.max_steps > 0:
        return t.max_steps
    batches = math.ceil(n_rows / (t.per_device_train_batch_size * world_size))
    return max(1, math.ceil(math.ceil(batches / t.gradient_accumulation_steps) * t.num_train_epochs))


def trackers(profile: Profile, run: RunDir) -> list[str]:
    """The profile's experiment trackers, pointed at the run dir where they write locally."""
    names = list(profile.output.report_to)
    if "tensorboard" in names:  # transformers' TensorBoardCallback reads its folder from here
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tensorboard)
    if "wandb" in names:  # W&B's local files (and everything under WANDB_MODE=offline) stay with the run
        os.environ.setdefault("WANDB_DIR", str(run.path))
    return names


def training_arguments(profile: Profile, precision: Precision, run: RunDir, has_eval: bool) -> dict:
    """Keyword arguments of transformers.TrainingArguments (and of TRL's configs, which extend it)."""
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
        report_to=trackers(profile, run),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        dataloader_num_workers=0,
    )
    if profile.data.group_by_length:  # else the trainer's own (KTO's is sequential: its KL pairs neighbours)
        # transformers' LengthGroupedSampler: shuffled groups of 50 batches, each sorted by length, longest first
        kwargs["train_sampling_strategy"] = "group_by_length"
    from tuiwiz.run.distributed import DEEPSPEED_CONFIG, deepspeed_config

    if deepspeed_config(profile) is not None:
        kwargs["deepspeed"] = str(run.path / DEEPSPEED_CONFIG)
        if precision.device == "cpu":
            _skip_shared_memory_op()
    elif profile.distributed.strategy == "ddp":
        # Frozen base weights get no gradient; DDP must not wait for them.
        kwargs["ddp_find_unused_parameters"] = METHODS[profile.method.type].family == "prompt"
    return kwargs


def _skip_shared_memory_op() -> None:
    """On its CPU accelerator DeepSpeed compiles a shared-memory all-reduce op (about a minute, once)
    that only its inference engine uses; training's collectives go through torch.distributed (gloo).
    Marking the op unavailable makes DeepSpeed skip the build; nothing else changes."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
