"""Which fine-tuning settings fit this machine, ranked, each with its reason.

Pure Python over hardware.Machine, modelinfo.ModelInfo and DataStats (token
lengths of the dataset). ``recommend`` tries every method and distributed
strategy, finds the largest micro-batch that fits (gradient checkpointing only
where it is needed), and says why each rejected option does not fit. Each option also says how fast and how
long to train: a learning rate by method, model and task, and epochs from the data's size (docs/settings.md).
``step_down`` is the next lighter setting after an out-of-memory error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tuiwiz.data.stats import DataStats, Work
from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.plan.fine_tune import FULL_LOGITS_TASKS, task_fields
from tuiwiz.plan.hardware import Machine
from tuiwiz.plan.loss_head import LossHead, settle
from tuiwiz.plan.memory import GiB, MemoryEstimate, Plan, check_task_model, estimate
from tuiwiz.plan.modelinfo import ModelInfo
from tuiwiz.plan.reference_scoring import reference_scoring
from tuiwiz.plan.task_costs import reference_copy_fix
from tuiwiz.profile.schema import Profile
from tuiwiz.tasks import TASKS
from tuiwiz.units import count, gib, size

# Fraction of free memory a plan may use: leaves room for the estimate's error and other processes.
GPU_HEADROOM = 0.92
RAM_HEADROOM = 0.85
DEFAULT_SEQ_LEN = 512
MIN_SEQ_LEN = 64


@dataclass(frozen=True)
class DeviceFit:
    index: int | None  # GPU index; None for the CPU
    needed: int
    available: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.available


@dataclass(frozen=True)
class Option:
    key: str  # e.g. full, full-zero3, lora, qlora, cpu-lora
    title: str
    plan: Plan
    gpu_indices: tuple[int, ...]  # () on the CPU
    estimate: MemoryEstimate
    fit: tuple[DeviceFit, ...]
    fits: bool
    effective_batch: int
    learning_rate: float
    lora_alpha: float | None
    reason: str  # why choose it (one sentence)
    rejected: str | None = None  # why it does not fit
    warnings: tuple[str, ...] = ()
    packing: bool = False  # pack examples into rows of max_length, each kept apart (data.packing)
    packing_note: str = ""  # why it packs, the reason's last sentence when it does
    group_by_length: bool = False  # batches of like length, for an unpacked run (data.group_by_length)
    epochs: float = 3.0  # training.num_train_epochs
    optimizer_steps: int | None = None  # what those epochs come to; None when the data's size is unknown
    rate_reason: str = ""  # why this learning rate, a sentence of the reason
    schedule_reason: str = ""  # why so many epochs, the reason's last sentence

    @property
    def trainable_parameters(self) -> int:
        return self.estimate.trainable_parameters

    @property
    def needed(self) -> int:
        return self.estimate.total


@dataclass(frozen=True)
class Recommendation:
    options: tuple[Option, ...]  # fitting options by preference, then the rest by how close they come
    seq_len: int
    seq_len_reason: str
    warnings: tuple[str, ...] = ()

    @property
    def best(self) -> Option | None:
        return self.options[0] if self.options and self.options[0].fits else None

    @property
    def fitting(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.fits)

    def option(self, key: str) -> Option | None:
        return next((o for o in self.options if o.key == key), None)


def _round64(n: int) -> int:
    return max(MIN_SEQ_LEN, -(-int(n) // 64) * 64)


def choose_seq_len(data: DataStats | None, model: ModelInfo) -> tuple[int, str, list[str]]:
    """Max length: the longest example when the tail is short, else the 95th percentile, rounded up to a multiple
    of 64; a length the user gave (``DataStats.assumed``) is used as it is."""
    warnings = []
    context = model.context_length or 1_048_576
    if data is None:
        seq, why = min(DEFAULT_SEQ_LEN, context), f"no data statistics: assumed {DEFAULT_SEQ_LEN} tokens"
        warnings.append(why)
    elif data.source == "assumed":
        seq, why = data.max, "as given"
    elif data.max <= 1.25 * data.p95:
        seq = _round64(data.max)
        why = f"covers every example (longest {data.max:,} tokens)"
    else:
        seq = _round64(data.p95)
        cut = data.truncated_at(seq)
        why = f"covers 95% of examples (p95 {data.p95:,} tokens); {cut:,} longer ones are truncated"
    if seq > context:
        warnings.append(f"the data needs {seq:,} tokens but the model's context is {context:,}: truncated to it")
        seq, why = context, f"the model's context length ({context:,} tokens)"
    return seq, why, warnings


def _lora_targets(model: ModelInfo) -> tuple[str, ...] | None:
    """Every block's linear layers (peft's all-linear), named explicitly where the architecture is known."""
    return model.linear_modules if model.known_architecture and model.linear_modules else None


@dataclass(frozen=True)
class _Candidate:
    key: str
    title: str
    method: str
    strategy: str
    gpus: tuple[int, ...]


def _candidates(machine: Machine, model: ModelInfo, experts: bool) -> list[_Candidate]:
    extra = ["ia3", "adalora", "prefix_tuning", "p_tuning"] + (["bitfit"] if model.bias_parameters else [])
    if not machine.has_gpu:
        cands = [_Candidate("cpu-full", "full fine-tuning on the CPU", "full", "single", ()),
                 _Candidate("cpu-lora", "LoRA on the CPU", "lora", "single", ()),
                 _Candidate("cpu-qlora", "QLoRA on the CPU", "qlora", "single", ()),
                 _Candidate("cpu-prompt_tuning", "prompt tuning on the CPU", "prompt_tuning", "single", ())]
        if experts:
            cands += [_Candidate(f"cpu-{m}", f"{METHODS[m].title} on the CPU", m, "single", ()) for m in extra]
        return cands
    gpus = sorted(machine.gpus, key=lambda g: -g.memory_free_mb)
    best = (gpus[0].index,)
    # a busy GPU (half the best one's free memory or less) would hold the others back: leave it out
    group = tuple(sorted(g.index for g in gpus if g.memory_free_mb >= 0.5 * gpus[0].memory_free_mb))
    cands = []
    if len(group) > 1:
        n = len(group)
        cands += [_Candidate("full-ddp", f"full fine-tuning on {n} GPUs (DDP)", "full", "ddp", group),
                  _Candidate("full-zero2", f"full fine-tuning on {n} GPUs (ZeRO-2)", "full", "zero2", group),
                  _Candidate("full-zero3", f"full fine-tuning on {n} GPUs (ZeRO-3)", "full", "zero3", group)]
    cands.append(_Candidate("full", "full fine-tuning", "full", "single", best))
    cands += [_Candidate("lora", "LoRA", "lora", "single", best),
              _Candidate("qlora", "QLoRA (4-bit base)", "qlora", "single", best)]
    offload_on = group if len(group) > 1 else best
    cands.append(_Candidate("full-zero3-offload", f"full fine-tuning, ZeRO-3 with optimizer offload to CPU"
                            f"{f' on {len(offload_on)} GPUs' if len(offload_on) > 1 else ''}", "full",
                            "zero3_offload_optimizer", offload_on))
    if experts:
        cands.append(_Candidate("full-zero3-offload-all", "full fine-tuning, ZeRO-3 with parameters and optimizer "
                                "offloaded to CPU", "full", "zero3_offload_all", offload_on))
        cands += [_Candidate(m, METHODS[m].title, m, "single", best) for m in extra]
    cands.append(_Candidate("prompt_tuning", "prompt tuning", "prompt_tuning", "single", best))
    return cands


def _precision(machine: Machine, gpus: tuple[int, ...]) -> str:
    if not gpus:
        return "fp32"
    chosen = [g for g in machine.gpus if g.index in gpus]
    return "bf16" if all(g.bf16 for g in chosen) else "fp16"


def _optimizer(method: str) -> str:
    return "paged_adamw_8bit" if method == "qlora" else "adamw_torch"


def fit_on(machine: Machine, est: MemoryEstimate,
           gpus: tuple[int, ...]) -> tuple[tuple[DeviceFit, ...], str | None]:
    """(each device's fit, why the estimate does not fit or None): GPUs ``gpus``, or the CPU for ()."""
    if not gpus:
        available = int(machine.ram_available_mb * 2**20 * RAM_HEADROOM)
        fit = (DeviceFit(None, est.total, available),)
        if est.total > available:
            return fit, (f"needs {gib(est.total)} of RAM, the machine has "
                         f"{machine.ram_available_mb / 1024:.1f} GiB available")
        return fit, None
    fits = tuple(DeviceFit(g.index, est.total, int(g.memory_free_bytes * GPU_HEADROOM))
                 for g in machine.gpus if g.index in gpus)
    short = [f for f in fits if not f.fits]
    if short:
        worst = min(short, key=lambda f: f.available)
        free = next(g for g in machine.gpus if g.index == worst.index).memory_free_mb / 1024
        where = "the card has" if len(machine.gpus) == 1 else f"GPU {worst.index} has"
        text = f"needs {gib(est.total)} per GPU, {where} {free:.1f} GiB free"
        if est.total <= free * GiB:
            text += f" ({gib(worst.available)} usable: the estimate keeps {1 - GPU_HEADROOM:.0%} spare)"
        return fits, text
    ram = int(machine.ram_available_mb * 2**20 * RAM_HEADROOM)
    if est.cpu_ram > ram:
        text = (f"needs {est.cpu_ram / GiB:.0f} GiB of CPU RAM for the offloaded states, the machine has "
                f"{machine.ram_available_mb / 1024:.0f} GiB available")
        if est.cpu_ram <= machine.ram_available_mb * 2**20:  # else "needs 180 of 200" reads as if it fits
            text += f" ({ram / GiB:.0f} GiB usable: the estimate keeps {1 - RAM_HEADROOM:.0%} spare)"
        return fits, text
    return fits, None


def settle_on(machine: Machine, plan: Plan, setting: str, model: ModelInfo,
              processes: int = 1) -> tuple[Plan, LossHead]:
    """``plan`` with ``training.loss_head`` settled for ``machine`` (plan/loss_head.py): the RAM it may use on the
    CPU, as the runner settles it with the RAM it finds."""
    usable = int(machine.ram_available_mb * 2**20 * RAM_HEADROOM) if plan.device == "cpu" else None
    return settle(plan, setting, model, usable, processes)


def _search(machine, model, cand, seq, target_batch, precision, task):
    """The largest micro-batch that fits; checkpointing only when it buys a 4x larger one or is needed."""
    n = max(1, len(cand.gpus))
    base = Plan(method=cand.method, device="cuda" if cand.gpus else "cpu", precision=precision, seq_len=seq,
                strategy=cand.strategy, optimizer=_optimizer(cand.method),
                **task_fields(task, method=cand.method, processes=n),
                lora_targets=_lora_targets(model) if METHODS[cand.method].low_rank else None,
                **({"lora_dropout": 0.0} if METHODS[cand.method].low_rank else {}))
    top = 1 << max(0, int(math.log2(max(1, target_batch // n))))
    found = {}
    for gc in (False, True):
        mb = top
        while mb >= 1:
            plan = replace(base, micro_batch=mb, gradient_checkpointing=gc,
                           gradient_accumulation=max(1, math.ceil(target_batch / (mb * n))))
            est = estimate(model, plan, n)
            fit, why = fit_on(machine, est, cand.gpus)
            if why is None:
                found[gc] = (plan, est, fit)
                break
            mb //= 2
    if False in found and (True not in found or found[True][0].micro_batch < 4 * found[False][0].micro_batch
                           or found[False][0].micro_batch * seq >= 4096):
        return (*found[False], None)
    if True in found:
        return (*found[True], None)
    # nothing fits: report the lightest setting
    plan = replace(base, micro_batch=1, gradient_checkpointing=True, gradient_accumulation=max(1, target_batch // n))
    est = estimate(model, plan, n)
    fit, why = fit_on(machine, est, cand.gpus)
    return plan, est, fit, why


_REASONS = {
    "full": "updates every weight: the best quality where it fits",
    "lora": "trains small low-rank adapters on a frozen {dtype} model: close to full fine-tuning at a fraction "
            "of the memory",
    "qlora": "LoRA on a 4-bit NF4 base model: the smallest weights, somewhat slower and slightly less accurate",
    "prompt_tuning": "trains only {v} virtual tokens: tiny and fast, but weaker than LoRA on most tasks",
    "prefix_tuning": "trains key/value prefixes for every layer: small, for generation-style tasks",
    "p_tuning": "virtual tokens produced by a small MLP: small, mostly for understanding tasks",
    "ia3": "learns per-channel scales on a few layers: the fewest parameters of the adapter methods",
    "adalora": "LoRA whose rank budget moves to the layers that need it; slower to train",
    "bitfit": "trains the bias terms only: tiny, works best on encoder models",
}
_STRATEGY_NOTES = {
    "ddp": "each GPU holds a full copy; fastest where it fits",
    "zero2": "optimizer states and gradients split across the GPUs",
    "zero3": "weights, gradients and optimizer states split across the GPUs",
    "zero3_offload_optimizer": "optimizer states in CPU RAM: fits big models, several times slower",
    "zero3_offload_all": "weights and optimizer states in CPU RAM: fits almost anything, very slow",
}


def reason_for(plan: Plan, est: MemoryEstimate, model: ModelInfo) -> str:
    """Why choose this plan, in one sentence, with what it trains; then what its task costs."""
    text = _REASONS[plan.method].format(dtype=plan.precision, v=plan.num_virtual_tokens)
    if plan.strategy in _STRATEGY_NOTES:
        text += f"; {_STRATEGY_NOTES[plan.strategy]}"
    share = est.trainable_parameters / max(1, model.num_parameters)
    cost = task_cost(plan, est)
    dropout = (" LoRA dropout 0, peft's and LLaMA-Factory's default: a dropout draws a mask over every adapted "
               "layer's input and keeps a copy of it, which costs time and memory at every step."
               if METHODS[plan.method].low_rank and plan.lora_dropout == 0 else "")
    return (f"{text[0].upper()}{text[1:]} ({count(est.trainable_parameters, digits=1)} trainable, {share:.2%})."
            + dropout + (f" {cost}" if cost else ""))


def task_cost(plan: Plan, est: MemoryEstimate) -> str:
    """What the plan's task adds to SFT's memory, in sentences: the recommender's reasons say it where it decides."""
    task, b = TASKS[plan.task], est.per_device
    said = []
    if plan.sequences_per_example > 1:
        said.append(f"{task.title} scores chosen and rejected together: twice the sequences of SFT at micro-batch "
                    f"{plan.micro_batch}")
    if plan.task in FULL_LOGITS_TASKS:
        said.append(f"{task.title}'s trainer (trl.experimental) computes the full logits of every sequence "
                    f"({size(b.logits)} at the loss)")
    if b.reference:
        said.append(f"{METHODS[plan.method].title} {task.title} keeps a second, frozen copy as the reference "
                    f"({size(b.reference)}): {reference_copy_fix(plan)}")
    elif plan.reference:
        said.append(f"{task.title}'s reference is the base with the adapter disabled: no second copy")
    elif task.reference:
        said.append(f"{METHODS[plan.method].title} {task.title}'s reference scores the data once before training "
                    f"(preference.precompute_ref_log_probs auto), so no second copy is in memory")
    if task.generates:
        said.append(f"GRPO generates {plan.generation_batch} completions of up to {plan.completion_len} tokens at "
                    f"once ({size(b.generation)} with their KV cache)")
    return " ".join(f"{s[0].upper()}{s[1:]}." for s in said)


# ---------------------------------------------------------------- settings that learn (docs/settings.md)

# METHODS' learning rates are those published for pretrained models of this width (7B-8B: Llama 3 8B,
# Qwen2.5 7B, Mistral 7B); narrower models take larger steps, wider ones smaller, as the square root.
REFERENCE_HIDDEN = 4096
WIDTH_SCALE = (0.5, 4.0)  # the most the width moves a rate, down and up
# Fewer parameters than this: a toy or a randomly initialised model (the demo has 1M), not a pretrained one
# worth adapting gently; it learns at METHODS' tiny_learning_rate.
TINY_MODEL = 10_000_000
# Preference and RL tasks move a policy with small steps: LLaMA-Factory's DPO example takes 5e-6 where its
# SFT example takes 1e-4. On a tiny model, half: the demo's DPO stage learns at 1e-3 after SFT at 2e-3.
POLICY_TASK_SCALE = {False: (1 / 20, "a twentieth"), True: (1 / 2, "half")}  # by whether the model is tiny
MIN_STEPS = 100  # fewer optimizer steps barely move a model: never recommend less where the data allows it
EPOCHS = 3  # the usual count (LLaMA-Factory's examples, Unsloth's guide): more overfits, fewer underfits
MAX_EPOCHS = 20  # small data: passes enough for MIN_STEPS, up to this (few-sample BERT fine-tuning's 20)
LONG_RUN = 3000  # large data: fewer passes once three would exceed this many steps, never under one
SMALL_DATA_BATCH = 8  # small data trains at this effective batch: twice the updates from the same examples


def learning_rate_for(method: str, model: ModelInfo, task: str = "sft") -> tuple[float, str]:
    """The learning rate for ``method`` on ``model`` for ``task``, and why, in one sentence."""
    spec = METHODS[method]
    tiny = model.num_parameters < TINY_MODEL
    if tiny:
        lr = spec.tiny_learning_rate
        why = (f"{count(model.num_parameters)} parameters make a toy or randomly initialised model, which learns "
               f"at the rates small models train from scratch at")
    else:
        lr = spec.learning_rate
        why = f"{spec.title}'s usual rate for a pretrained model of hidden size {REFERENCE_HIDDEN:,} (7-8B)"
        if (method == "full" or spec.low_rank) and model.hidden_size and model.hidden_size != REFERENCE_HIDDEN:
            low, high = WIDTH_SCALE
            factor = min(high, max(low, math.sqrt(REFERENCE_HIDDEN / model.hidden_size)))
            lr *= factor
            why = (f"{spec.title}'s {spec.learning_rate:g} for a pretrained 7-8B model (hidden size "
                   f"{REFERENCE_HIDDEN:,}), times {factor:.2g} (√({REFERENCE_HIDDEN}/{model.hidden_size})) for "
                   f"this {'narrower' if model.hidden_size < REFERENCE_HIDDEN else 'wider'} one")
    if TASKS[task].preference or TASKS[task].generates:
        scale, part = POLICY_TASK_SCALE[tiny]
        lr *= scale
        why += f"; {part} of it for {TASKS[task].title}, which moves a policy in small steps"
    lr = float(f"{lr:.2g}")
    return lr, f"Learning rate {lr:g}: {why}."


def _steps(examples: int, micro_batch: int, accumulation: int, processes: int, epochs: float) -> int:
    """Optimizer steps as the Trainer counts them (train/arguments.py's total_steps)."""
    batches = math.ceil(examples / (micro_batch * processes))
    return max(1, math.ceil(math.ceil(batches / accumulation) * epochs))


def _examples(data: DataStats | None, plan: Plan, packing: bool) -> tuple[int | None, str]:
    """What one epoch goes through, and its name: the examples, packed rows when packing, GRPO's completions."""
    if data is None or data.rows <= 0:
        return None, "examples"
    if packing and (work := data.work(plan.seq_len, plan.micro_batch)) is not None:
        return round(work.packed_rows * data.rows / len(data.lengths)), "packed rows"  # lengths may be a sample
    if TASKS[plan.task].generates:
        return data.rows * max(1, plan.num_generations), "completions"
    return data.rows, "examples"


def batch_for(data: DataStats | None, target_batch: int) -> int:
    """The effective batch to plan for: ``target_batch``, or SMALL_DATA_BATCH where the data is too small for
    MIN_STEPS in EPOCHS at it (more updates from the same examples beat more passes over them)."""
    if data is None or data.rows <= 0 or target_batch <= SMALL_DATA_BATCH:
        return target_batch
    return SMALL_DATA_BATCH if _steps(data.rows, target_batch, 1, 1, EPOCHS) < MIN_STEPS else target_batch


@dataclass(frozen=True)
class Schedule:
    epochs: float
    steps: int | None  # None when the data's size is unknown
    reason: str
    warning: str | None = None  # when even MAX_EPOCHS make fewer than MIN_STEPS


def schedule_for(examples: int | None, plan: Plan, processes: int = 1, target_batch: int | None = None,
                 noun: str = "examples") -> Schedule:
    """How many epochs over ``examples``: EPOCHS, more for small data (at least MIN_STEPS), fewer for large
    (about LONG_RUN at most, one at least)."""
    batch = plan.micro_batch * plan.gradient_accumulation * processes
    if not examples:
        return Schedule(float(EPOCHS), None, f"{EPOCHS} epochs, the usual count: the data's size is unknown, so "
                                             f"check that they make at least {MIN_STEPS} optimizer steps.")

    def steps(epochs: float) -> int:
        return _steps(examples, plan.micro_batch, plan.gradient_accumulation, processes, epochs)

    per_epoch = steps(1)
    if per_epoch * EPOCHS < MIN_STEPS:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_STEPS / per_epoch))
        why = "about the fewest that move a model" if steps(epochs) >= MIN_STEPS else \
            f"fewer than the ~{MIN_STEPS} that move a model, even in {MAX_EPOCHS} passes"
    elif per_epoch * EPOCHS > LONG_RUN:
        epochs = max(1, LONG_RUN // per_epoch)
        why = f"large data: {EPOCHS} passes would take {per_epoch * EPOCHS:,} steps"
    else:
        epochs, why = EPOCHS, f"{EPOCHS} passes, the usual count"
    lowered = f" (not {target_batch}: more updates from few examples)" if target_batch and batch < target_batch else ""
    reason = (f"{epochs} epoch{'s' if epochs > 1 else ''} of {examples:,} {noun} at batch {batch}{lowered}: "
              f"{steps(epochs):,} optimizer steps, {why}.")
    warning = None
    if steps(epochs) < MIN_STEPS:
        warning = (f"{examples:,} {noun} make only {steps(epochs)} optimizer steps in {epochs} epochs: more "
                   f"data would teach the model more than more passes")
    return Schedule(float(epochs), steps(epochs), reason, warning)


def recommend(machine: Machine, model: ModelInfo, data_stats: DataStats | None, task: str = "sft", *,
              target_batch: int = 16, experts: bool = False) -> Recommendation:
    """Every option for this machine, ranked: those that fit first, in order of preference."""
    check_task_model(model, task)
    seq, seq_reason, warnings = choose_seq_len(data_stats, model)
    warnings += list(model.warnings)
    if not machine.has_gpu:
        warnings.append("no GPU: training runs on the CPU, which suits small models and the demo")
    options = []
    batch = batch_for(data_stats, target_batch)
    for rank, cand in enumerate(_candidates(machine, model, experts)):
        precision = _precision(machine, cand.gpus)
        option_warnings = []
        learning_rate, rate_reason = learning_rate_for(cand.method, model, task)
        if cand.method == "qlora" and not cand.gpus:
            plan = Plan(method="qlora", device="cpu", precision="fp32", seq_len=seq, task=task)
            est = estimate(model, plan)
            options.append((rank, Option(cand.key, cand.title, plan, (), est, (), False, batch,
                                         learning_rate, None, _REASONS["qlora"] + ".",
                                         "on a CPU 4-bit weights save RAM but dequantising makes every step "
                                         "slower; LoRA fits")))
            continue
        try:
            plan, est, fit, rejected = _search(machine, model, cand, seq, batch, precision, task)
        except UserError as exc:  # e.g. IA3 has no default targets for this architecture
            warnings.append(f"{cand.title}: {exc.message}")
            continue
        if est.disk_total > (machine.disk_free_mb or 0) * 2**20 and machine.disk_free_mb is not None:
            option_warnings.append(f"checkpoints and output need {est.disk_total / GiB:.0f} GiB of disk, "
                                   f"{machine.disk_free_mb / 1024:.0f} GiB free")
        n = max(1, len(cand.gpus))
        lora_alpha = 2.0 * plan.lora_r if cand.method in ("lora", "qlora") else None
        # the tokens an epoch computes at this micro-batch, padded and packed (None where packing does not apply)
        work = data_stats.work(plan.seq_len, plan.micro_batch) if TASKS[task].packs and data_stats else None
        packing, packing_reason = _packing(cand.method, plan, work)
        if packing:  # rows of many examples: a step of fewer rows keeps the examples (and tokens) per step
            plan, batch_reason = _packed_batch(plan, work, len(data_stats.lengths), n)
            est = estimate(model, plan, n)
            fit, rejected = fit_on(machine, est, cand.gpus)
            packing_reason += batch_reason
        grouping, grouping_reason = _grouping(cand.method, plan, work)
        plan, head = settle_on(machine, plan, "auto", model, n)
        head_reason = ""
        if head.whole:  # on the CPU where they fit: the faster step (the profile keeps loss_head auto)
            est = estimate(model, plan, n)
            fit, rejected = fit_on(machine, est, cand.gpus)
            head_reason = (f" The loss is scored from the model's whole logits ({size(est.per_device.logits)} at "
                           f"their peak), which the CPU computes faster than TRL's fused head.")
        examples, noun = _examples(data_stats, plan, packing)
        schedule = schedule_for(examples, plan, n, None if packing else target_batch, noun)  # packed: rows
        if schedule.warning:
            option_warnings.append(schedule.warning)
        options.append((rank, Option(
            key=cand.key, title=cand.title, plan=plan, gpu_indices=cand.gpus, estimate=est, fit=fit,
            fits=rejected is None, effective_batch=plan.micro_batch * plan.gradient_accumulation * n,
            learning_rate=learning_rate, lora_alpha=lora_alpha,
            reason=(f"{reason_for(plan, est, model)}{packing_reason}{grouping_reason}{head_reason} {rate_reason} "
                    f"{schedule.reason}"),
            rejected=rejected, warnings=tuple(option_warnings) + est.notes, packing=packing,
            packing_note=packing_reason, group_by_length=grouping, epochs=schedule.epochs,
            optimizer_steps=schedule.steps,
            rate_reason=rate_reason, schedule_reason=schedule.reason,
        )))

    def order(item):
        rank, o = item
        if o.fits:
            return (0, rank, 0.0)
        room = min((f.available for f in o.fit), default=1) or 1
        return (1, 0, o.needed / room)

    ranked = tuple(o for _, o in sorted(options, key=order))
    return Recommendation(ranked, seq, seq_reason, tuple(dict.fromkeys(warnings)))


# ---------------------------------------------------------------- to a profile, and back down


def _method_config(option: Option):
    from tuiwiz.profile import schema as p

    plan = option.plan
    targets = list(plan.lora_targets) if plan.lora_targets else "all-linear"
    if plan.method == "full":
        return p.FullMethod()
    if plan.method == "lora":
        return p.LoraMethod(r=plan.lora_r, lora_alpha=option.lora_alpha or 2 * plan.lora_r, target_modules=targets,
                            lora_dropout=plan.lora_dropout)
    if plan.method == "qlora":
        return p.QLoraMethod(r=plan.lora_r, lora_alpha=option.lora_alpha or 2 * plan.lora_r,
                             target_modules=targets, bits=plan.qlora_bits, lora_dropout=plan.lora_dropout)
    if plan.method == "adalora":
        return p.AdaLoraMethod(target_modules=targets, lora_dropout=plan.lora_dropout)
    return {"prompt_tuning": p.PromptTuningMethod, "prefix_tuning": p.PrefixTuningMethod,
            "p_tuning": p.PTuningMethod, "ia3": p.IA3Method, "bitfit": p.BitFitMethod}[plan.method]()


# Packing is recommended when it saves at least this share of the tokens padded batches compute:
# below it, the rows' fixed length costs about what it saves.
PACKING_MIN_SAVING = 0.2


def _wasteful(work: Work | None) -> bool:
    """Whether padded batches compute enough padding to be worth avoiding (PACKING_MIN_SAVING)."""
    return work is not None and work.packing_saves >= PACKING_MIN_SAVING


def _packing(method: str, plan: Plan, work: Work | None) -> tuple[bool, str]:
    """Whether to pack (examples kept apart) and why, from the data's real lengths at this micro-batch: ``work`` is
    None for the tasks that do not pack and data of unknown lengths."""
    if METHODS[method].family == "prompt" or not _wasteful(work):
        return False, ""  # prompt methods add their tokens once per row
    return True, (f" Packs the examples into rows of {plan.seq_len} tokens, each kept apart: "
                  f"{work.packing_saves:.0%} fewer tokens computed than shuffled batches of {plan.micro_batch} "
                  "padded to their longest.")


def _packed_batch(plan: Plan, work: Work, examples_measured: int, processes: int) -> tuple[Plan, str]:
    """The micro-batch (and accumulation) in packed rows that holds about the examples the unpacked batch held.

    A packed row carries several examples: the same number of rows a step would take several times the
    examples and tokens, and so several times fewer optimizer steps an epoch, at a learning rate chosen for the
    unpacked batch. Measured on variable-length data (bench/sft_speed.py): packed at the unpacked row count,
    one epoch made a quarter of the steps and a worse held-out loss; at this count it keeps the steps.
    ``examples_measured``: the examples whose lengths ``work`` counts (a sample of large data)."""
    per_row = examples_measured / work.packed_rows
    examples = plan.micro_batch * plan.gradient_accumulation * processes
    rows = max(processes, round(examples / per_row))
    micro = max(1, min(plan.micro_batch, rows // processes))
    accumulation = max(1, round(rows / (micro * processes)))
    if (micro, accumulation) == (plan.micro_batch, plan.gradient_accumulation):
        return plan, ""
    packed = replace(plan, micro_batch=micro, gradient_accumulation=accumulation)
    return packed, (f" A row holds {per_row:.1f} examples on average, so a step of {micro * accumulation * processes} "
                    f"row{'s' if micro * accumulation * processes > 1 else ''} (micro-batch {micro}"
                    f"{f' x {accumulation} accumulated' if accumulation > 1 else ''}) keeps about the "
                    f"{examples} examples a step of the unpacked batch.")


def _grouping(method: str, plan: Plan, work: Work | None) -> tuple[bool, str]:
    """Whether an unpacked run groups examples of like length into batches (data.group_by_length), and why: the
    prompt methods, which cannot pack, where padded batches would waste as much as packing is chosen for."""
    if METHODS[method].family != "prompt" or not _wasteful(work) or plan.micro_batch < 2:
        return False, ""
    return True, (" Groups examples of like length into batches (prompt methods add their tokens once per row, "
                  f"so they do not pack): shuffled batches of {plan.micro_batch} would pad "
                  f"{1 - work.real / work.padded:.0%} of their tokens.")


def task_sections(task: str) -> dict:
    """What a profile of ``task`` needs beyond the defaults: GRPO's schema asks for a reward, and the one that
    needs no code is the exact answer against the data's answer column."""
    from tuiwiz.profile.schema import ExactAnswerReward, GrpoConfig

    return {"grpo": GrpoConfig(rewards=[ExactAnswerReward()])} if TASKS[task].generates else {}


def with_task(profile: Profile, task: str) -> Profile:
    """``profile`` switched to ``task`` (unvalidated: the caller validates), with a reward where GRPO needs one."""
    from tuiwiz.profile.schema import GrpoConfig, PreferenceConfig

    update: dict = {"task": task}
    if TASKS[task].generates and not profile.grpo.rewards:
        update.update(task_sections(task))
    if not TASKS[task].generates:  # the schema refuses a section the task would ignore
        update["grpo"] = GrpoConfig()
    if not TASKS[task].preference:
        update["preference"] = PreferenceConfig()
    if not TASKS[task].whole_logits:
        update["training"] = profile.training.model_copy(update={"loss_head": "auto"})
    return profile.model_copy(update=update)


def to_profile(option: Option, model_name: str, data_path: str, task: str = "sft") -> Profile:
    """A valid profile for ``option``, its distributed strategy included."""
    from tuiwiz.profile.schema import DataConfig, DistributedConfig, ModelConfig, TrainingConfig

    plan = option.plan
    strategy = {"zero3_offload_optimizer": "zero3", "zero3_offload_all": "zero3"}.get(plan.strategy, plan.strategy)
    n = max(1, len(option.gpu_indices))
    distributed = DistributedConfig(
        strategy="single" if strategy == "single" and n == 1 else strategy, num_processes=n,
        gpus=list(option.gpu_indices) if option.gpu_indices else None,
        offload_optimizer=plan.strategy in ("zero3_offload_optimizer", "zero3_offload_all"),
        offload_params=plan.strategy == "zero3_offload_all",
    )
    return Profile(
        task=task,
        model=ModelConfig(name_or_path=model_name,
                          attn_implementation="auto" if plan.attn_implementation == "sdpa"
                          else plan.attn_implementation),
        data=DataConfig(path=data_path, max_length=plan.seq_len, packing=option.packing,
                        group_by_length=option.group_by_length),
        method=_method_config(option),
        training=TrainingConfig(
            per_device_train_batch_size=plan.micro_batch, gradient_accumulation_steps=plan.gradient_accumulation,
            gradient_checkpointing=plan.gradient_checkpointing, precision=plan.precision, optim=plan.optimizer,
            learning_rate=option.learning_rate, num_train_epochs=option.epochs,
        ),
        distributed=distributed,
        **task_sections(task),
    )


@dataclass(frozen=True)
class StepDown:
    """The next lighter profile after an out-of-memory error. Unpacks as ``(profile, reason)``."""

    profile: Profile
    reason: str
    kind: str  # reference / micro_batch / checkpointing / max_length / method
    needs_consent: bool = False

    def __iter__(self):
        return iter((self.profile, self.reason))


def step_down(profile: Profile, model: ModelInfo, machine: Machine, *,
              allow_truncation: bool = True) -> StepDown | None:
    """Drop a reference copy (its log-probabilities precomputed), halve the micro-batch (same effective batch),
    then checkpoint, then shorten (consent), then lighten.

    None when nothing lighter is left. With ``allow_truncation=False`` the max-length step is skipped.
    """
    step = _step_down(profile, model, machine, allow_truncation)
    if step is None:
        return None
    return replace(step, profile=Profile.model_validate(step.profile.model_dump()))


def _qlora_is_lighter(profile: Profile, model: ModelInfo, machine: Machine) -> bool:
    """Whether QLoRA needs less than this LoRA profile: at long sequences its fp32 activations can outweigh
    its 4-bit weights (see ``kbit_upcast`` in memory.py)."""
    lora = Plan.from_profile(profile, model, bf16=all(g.bf16 for g in machine.gpus))
    qlora = replace(lora, method="qlora", optimizer=_optimizer("qlora"))
    return estimate(model, qlora).total < estimate(model, lora).total


def _step_down(profile: Profile, model: ModelInfo, machine: Machine, allow_truncation: bool) -> StepDown | None:
    t = profile.training
    task = TASKS[profile.task]
    if (task.reference and not METHODS[profile.method.type].uses_peft and profile.distributed.world_size == 1
            and not reference_scoring(profile).precompute):
        new = profile.model_copy(update={"preference": profile.preference.model_copy(
            update={"precompute_ref_log_probs": True})})
        return StepDown(new, f"preference.precompute_ref_log_probs on: the reference scores the data once before "
                             f"training, so {task.title} needs no second copy of the model while it trains",
                        "reference")
    if t.per_device_train_batch_size > 1:
        mb = t.per_device_train_batch_size // 2
        effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
        accum = max(1, math.ceil(effective / mb))
        new = profile.model_copy(update={"training": t.model_copy(update={
            "per_device_train_batch_size": mb, "gradient_accumulation_steps": accum})})
        return StepDown(new, f"micro-batch {t.per_device_train_batch_size} → {mb}, gradient accumulation "
                             f"{t.gradient_accumulation_steps} → {accum} (effective batch {mb * accum})",
                        "micro_batch")
    if not t.gradient_checkpointing:
        new = profile.model_copy(update={"training": t.model_copy(update={"gradient_checkpointing": True})})
        return StepDown(new, "gradient checkpointing on: activations are recomputed in the backward pass "
                             "(about 30% slower, much less memory)", "checkpointing")
    length = profile.data.max_length
    if allow_truncation and length > 2 * MIN_SEQ_LEN:
        shorter = max(MIN_SEQ_LEN, (length // 2) // 64 * 64)
        new = profile.model_copy(update={"data": profile.data.model_copy(update={"max_length": shorter})})
        return StepDown(new, f"max length {length} → {shorter} tokens: longer examples will be truncated",
                        "max_length", needs_consent=True)
    lighter = {"full": "lora", "bitfit": "lora", "lora": "qlora" if machine.has_gpu else None,
               "adalora": "lora"}.get(profile.method.type)
    if lighter is None or (lighter == "qlora" and not _qlora_is_lighter(profile, model, machine)):
        return None
    from tuiwiz.profile import schema as p

    if lighter == "lora":
        method = p.LoraMethod(target_modules=list(model.linear_modules) if model.known_architecture
                              and model.linear_modules else "all-linear")
    else:
        old = profile.method
        method = p.QLoraMethod(r=old.r, lora_alpha=old.lora_alpha, lora_dropout=old.lora_dropout,
                               target_modules=old.target_modules, use_dora=old.use_dora, use_rslora=old.use_rslora)
    training = t.model_copy(update={"learning_rate": learning_rate_for(lighter, model, profile.task)[0],
                                    "optim": "paged_adamw_8bit" if lighter == "qlora" else t.optim})
    new = profile.model_copy(update={"method": method, "training": training})
    return StepDown(new, f"{profile.method.type} → {lighter}: {_REASONS[lighter].format(dtype='16-bit', v='')}",
                    "method")
