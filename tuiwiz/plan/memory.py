"""How much memory a fine-tune needs, per GPU (or in RAM on a CPU), from shapes alone.

Pure Python. Each term is counted the way the runner really trains (see
tuiwiz/train/modeling.py): full fine-tuning under mixed precision keeps fp32
weights and autocasts to 16 bits; peft upcasts adapters to fp32; QLoRA keeps its
non-quantized tensors 16-bit unless ``method.upcast_non_quantized`` asks for peft's
``prepare_model_for_kbit_training``, which upcasts them to fp32 (``Plan.kbit_upcast``);
trl's SFTTrainer scores tokens through a fused, tiled LM head instead of
materialising the logits. The fitted and assumed constants live in CONSTANTS;
docs/fit.md says which are measured (bench/calibrate.py) and which are not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.plan.activations import (
    attention_implementation,
    eager_scores_bytes,
    encoder_decoder_bytes,
    head_bytes,
    kept_outputs_bytes,
    layer_activation_bytes,
    logits_bytes,
)
from tuiwiz.plan.architectures import IA3_TARGETS
from tuiwiz.plan.fine_tune import (  # Plan and the constants live there; most callers import them from here
    CONSTANTS,
    PRECISION_BYTES,
    STRATEGIES,
    ZERO,
    Constants,
    GiB,
    MiB,
    Plan,
)
from tuiwiz.plan.modelinfo import ModelInfo
from tuiwiz.plan.task_costs import task_terms
from tuiwiz.tasks import TASKS
from tuiwiz.units import gib

__all__ = ["CONSTANTS", "PRECISION_BYTES", "STRATEGIES", "ZERO", "Breakdown", "Constants", "GiB", "MemoryEstimate",
           "MiB", "Plan", "estimate", "optimizer_bytes_per_param", "trainable_parameters"]

@dataclass(frozen=True)
class Breakdown:
    """Bytes on one device at the peak of a training step."""

    weights: int  # the base model's parameters as they sit on the device
    adapter: int  # trainable parameters added by a PEFT method
    gradients: int
    optimizer: int  # optimizer states (and fp32 master weights under DeepSpeed)
    activations: int  # tensors saved for the backward pass, all layers
    logits: int  # the loss head's tiles or full logits, their upcast and gradient
    optimizer_step: int  # temporaries while the optimizer steps (activations are gone by then)
    buffers: int  # DDP gradient buckets, ZeRO gather buffers
    overhead: int  # allocator fragmentation (GPU) or malloc slack (CPU)
    context: int  # CUDA context (GPU) or the Python/torch process itself (CPU)
    gradients_during_backward: bool = True  # False: grads only grow as activations are freed
    reference: int = 0  # a frozen reference model's second copy of the weights (DPO, KTO, GRPO; full fine-tuning)
    reference_forward: int = 0  # the reference's forward without gradients, beside the policy's saved activations
    generation: int = 0  # GRPO's generation phase: the KV cache and sampling (or the reference's scoring)

    @property
    def forward_backward(self) -> int:
        grads = self.gradients if self.gradients_during_backward else 0
        return self.activations + max(self.logits, self.reference_forward) + grads

    @property
    def peak_dynamic(self) -> int:
        stepping = self.gradients + self.optimizer_step
        return max(self.forward_backward, stepping, self.generation)

    @property
    def static(self) -> int:
        return (self.weights + self.adapter + self.optimizer + self.buffers + self.context + self.overhead
                + self.reference)

    @property
    def total(self) -> int:
        return self.static + self.peak_dynamic

    def terms(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type in (int, "int")}


@dataclass(frozen=True)
class MemoryEstimate:
    per_device: Breakdown
    n_devices: int
    device: str  # cuda / cpu
    total_parameters: int
    trainable_parameters: int
    cpu_ram: int  # host RAM the run needs (the process, offloaded states)
    cpu_ram_merge: int  # host RAM to merge an adapter into the base model afterwards (0: nothing to merge)
    disk_checkpoint: int  # one checkpoint
    disk_output: int  # the final model or adapter
    disk_total: int  # output plus save_total_limit checkpoints
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.per_device.total


# ---------------------------------------------------------------- trainable parameters


def trainable_parameters(model: ModelInfo, plan: Plan) -> int:
    """Exactly what peft (or the runner, for full and BitFit) leaves with requires_grad."""
    m, H = plan.method, model.hidden_size
    if m == "full":
        return model.num_parameters
    if m == "bitfit":
        return model.bias_parameters
    if m in ("lora", "qlora"):
        layers = model.targeted_layers(plan.lora_targets)
        if not layers:
            raise UserError(f"no linear layer of {model.name} matches {list(plan.lora_targets or ())}",
                            field="method.target_modules", kind="profile",
                            hint="choose from: " + ", ".join(model.linear_modules))
        n = sum(layer.count * plan.lora_r * (layer.in_features + layer.out_features) for layer in layers)
        if plan.use_dora:
            n += sum(layer.count * layer.out_features for layer in layers)  # the magnitude vectors
        return n
    if m == "adalora":
        r = plan.adalora_init_r
        return sum(layer.count * r * (layer.in_features + layer.out_features + 1)
                   for layer in model.targeted_layers(plan.lora_targets))
    if m == "ia3":
        default = IA3_TARGETS.get(model.model_type)
        targets = plan.ia3_targets or (default[0] if default else None)
        feedforward = plan.ia3_feedforward or (default[1] if default else ())
        if not targets:
            raise UserError(f"IA3 has no default target modules for {model.model_type}",
                            field="method.target_modules", kind="profile",
                            hint="name them, e.g. " + ", ".join(model.linear_modules[:3]))
        n = 0
        for layer in model.targeted_layers(tuple(targets)):
            ff = any(layer.matches(t) for t in feedforward)
            n += layer.count * (layer.in_features if ff else layer.out_features)
        return n
    # peft prepends the virtual tokens to an encoder-decoder's encoder and decoder alike (num_transformer_submodules 2)
    v = plan.num_virtual_tokens * (2 if model.encoder_decoder else 1)
    if m == "prompt_tuning":
        return v * H
    if m == "p_tuning":
        e = plan.encoder_hidden_size or 128
        return v * H + (H * e + e) + (e * e + e) + (e * H + H)
    if m == "prefix_tuning":
        t = model.kv_dim
        if not plan.prefix_projection:
            return v * model.num_layers * 2 * t
        e = plan.encoder_hidden_size or t
        out = model.num_layers * 2 * t
        return v * t + (t * e + e) + (e * out + out)
    raise ValueError(m)


# ---------------------------------------------------------------- terms


def check_task_model(model: ModelInfo, task: str) -> None:
    """A seq2seq task needs an encoder-decoder model and every other task a decoder (or encoder) alone:
    the runner loads AutoModelForSeq2SeqLM for one and AutoModelForCausalLM or a sequence-score head otherwise."""
    if (TASKS[task].model == "seq2seq") == model.encoder_decoder or not model.known_architecture:
        return  # an unknown layout is guessed as a decoder, whatever the task
    if model.encoder_decoder:
        raise UserError(f"{model.name} is an encoder-decoder model ({model.model_type}): it trains with task seq2seq, "
                        f"not {task}", field="task", kind="profile",
                        hint="set task: seq2seq, or choose a decoder-only model for this task")
    raise UserError(f"task seq2seq trains an encoder-decoder model (T5, mT5); {model.name} is a "
                    f"{model.model_type} decoder", field="model.name_or_path", kind="profile",
                    hint="choose an encoder-decoder model (a T5 or mT5 checkpoint), or another task")


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _weight_bytes(plan: Plan) -> int:
    """Bytes per base parameter as loaded: the runner's _load_dtype rule."""
    if plan.weights_dtype in _DTYPE_BYTES:
        return _DTYPE_BYTES[plan.weights_dtype]
    if plan.precision == "fp32":
        return 4
    if METHODS[plan.method].whole_model:
        # mixed precision keeps fp32 weights; DeepSpeed holds 16-bit ones and an fp32 master in the optimizer
        return 2 if plan.strategy in ZERO else 4
    return 2


def _quantized_bytes_per_param(plan: Plan) -> float:
    if plan.qlora_bits == 8:
        return 1.0  # LLM.int8 weights; the per-row scales are negligible
    # NF4: half a byte, plus an absmax per 64-value block (fp32, or 8-bit + fp32 per 256 blocks when double-quantized)
    return 0.5 + ((1 + 4 / 256) / 64 if plan.double_quant else 4 / 64)


# Optimizer states per trainable parameter, by the Trainer's optim name (the factored Adafactor is counted per
# matrix in _adafactor_bytes). adamw_hf is transformers' own AdamW (its default before 4.x's adamw_torch; gone in 5).
ADAMW = ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "adamw_hf")


def optimizer_bytes_per_param(optimizer: str, state_bytes: int) -> float:
    """Optimizer-state bytes per trainable parameter whose dtype has ``state_bytes`` bytes."""
    if optimizer in ADAMW:
        return 2 * state_bytes
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2 + 2 * 4 / 256  # two uint8 states plus an fp32 absmax per 256-value block each
    if optimizer in ("lion_8bit", "paged_lion_8bit"):
        return 1 + 4 / 256
    if optimizer == "sgd":
        return 0  # transformers' default SGD has no momentum
    if optimizer == "adafactor":
        return 0.05 * state_bytes  # factored second moments: rows + columns of each matrix
    raise UserError(f"unknown optimizer {optimizer}", field="training.optim", kind="profile")


def _adafactor_bytes(model: ModelInfo) -> int:
    """transformers' Adafactor as the Trainer builds it (beta1 None: no first moment): an fp32 row and column
    statistic per matrix (linear weights, the embeddings), a full fp32 statistic for every vector (biases, norms)."""
    matrices = sum(lr.count * (lr.in_features + lr.out_features) for lr in model.linear_layers)
    matrix_params = model.linear_weight_parameters
    embeddings = model.vocab_size + model.hidden_size  # the token embedding (+ positions: rows of the same width)
    vectors = model.num_parameters - matrix_params - model.embedding_parameters - model.lm_head_parameters
    return 4 * (matrices + embeddings + max(vectors, 0))


def _step_temporaries(plan: Plan, trainable: int, largest: int, param_bytes: int, cpu: bool) -> int:
    """What the optimizer's step allocates beside its states. torch's foreach AdamW (adamw_torch on a GPU) takes
    the square roots of every state at once; the single-tensor paths (the CPU, transformers' adamw_hf) one tensor
    at a time; Adafactor its update and the rebuilt second moment of one matrix (fp32); bitsandbytes' kernels and
    the fused AdamW update in place."""
    full = METHODS[plan.method].whole_model
    if plan.optimizer == "adamw_torch" and not cpu:
        return trainable * param_bytes
    if cpu or plan.optimizer == "adamw_hf":
        return 2 * (max(largest, 1) if full else trainable) * param_bytes
    if plan.optimizer == "adafactor":
        return 2 * 4 * (largest if full else trainable)
    return 0


def estimate(model: ModelInfo, plan: Plan, n_gpus: int = 1, *, constants: Constants | None = None) -> MemoryEstimate:
    """Peak memory per device for ``plan`` on ``n_gpus`` devices (1 for CPU and single-GPU plans)."""
    c = constants or CONSTANTS
    check_task_model(model, plan.task)
    n = max(1, n_gpus if plan.strategy != "single" else 1)
    cpu = plan.device == "cpu"
    notes: list[str] = []
    N = model.num_parameters
    T = trainable_parameters(model, plan)
    wb = _weight_bytes(plan)
    a = 4 if cpu or plan.precision == "fp32" else 2
    full = METHODS[plan.method].whole_model
    zero = plan.strategy in ZERO and not cpu
    upcast = plan.method == "qlora" and plan.kbit_upcast

    # weights
    if plan.method == "qlora":
        if cpu:
            notes.append("QLoRA needs bitsandbytes on a GPU; the CPU figure is only indicative")
        linear = model.linear_weight_parameters
        weights = int(linear * _quantized_bytes_per_param(plan)) + (N - linear) * (4 if upcast else wb)
        if upcast:
            notes.append("QLoRA keeps embeddings, norms and the LM head in fp32 (peft upcasts them)")
    else:
        weights = N * wb
    if zero and plan.strategy != "zero2":
        weights = 0 if plan.strategy == "zero3_offload_all" else weights // n

    adapter = 0 if full else T * 4  # peft keeps adapters in fp32
    param_bytes = wb if full else 4

    # gradients and optimizer
    largest = max([model.embedding_parameters] + [lr.in_features * lr.out_features for lr in model.linear_layers])
    buffers = 0
    cpu_offload = 0
    if zero and plan.method == "full":
        n_params = T
        if plan.strategy == "zero2":
            gradients, optimizer = 6 * n_params // n, 12 * n_params // n  # DeepSpeed's own accounting
        elif plan.strategy == "zero3":
            gradients, optimizer = 4 * n_params // n, 12 * n_params // n
            buffers = 4 * largest
        elif plan.strategy == "zero3_offload_optimizer":
            gradients, optimizer = 0, 0
            buffers = 4 * largest
            cpu_offload = int(16 * n_params * 1.5)
        else:
            gradients, optimizer = 0, 0
            buffers = 4 * largest
            cpu_offload = int(18 * n_params * 1.5)
        if plan.optimizer not in ("adamw_torch", "adamw_torch_fused"):
            notes.append(f"DeepSpeed replaces {plan.optimizer} with its own AdamW; counted as AdamW")
        step_temp = 0
    else:
        gradients = T * param_bytes
        optimizer = int(T * optimizer_bytes_per_param(plan.optimizer, param_bytes))
        if plan.method == "full" and plan.optimizer == "adafactor":
            optimizer = _adafactor_bytes(model)
        step_temp = _step_temporaries(plan, T, largest, param_bytes, cpu)
        if plan.strategy == "ddp" and n > 1:
            buffers = gradients  # DDP copies gradients into its own buckets
    if plan.method == "qlora":
        buffers += max(lr.in_features * lr.out_features for lr in model.linear_layers) * a  # one dequantized layer
    if plan.optimizer.startswith("paged_"):
        notes.append("paged optimizer states can spill to CPU RAM under pressure; counted on the GPU here")

    # activations: every sequence of the step (chosen and rejected both, for the pair tasks)
    sequences = plan.micro_batch * plan.sequences_per_example
    tokens_per_seq = plan.sequence_len + (plan.num_virtual_tokens if METHODS[plan.method].virtual_tokens else 0)
    # the residual stream is fp32 wherever the embeddings and norms are: full fine-tuning's fp32 weights, and
    # QLoRA's upcast (a real allocation: under it QLoRA can need more than LoRA at long sequences)
    r = 4 if (a == 4 or upcast or (full and wb == 4)) else a
    lm_head_trained = plan.method == "full"
    backward = 0  # one block's backward on a GPU, a moment apart from the loss head's peak
    if model.encoder_decoder:
        seq2seq = encoder_decoder_bytes(model, plan, a, r)
        target_tokens = sequences * plan.decoder_len
        activations = sequences * tokens_per_seq * seq2seq.per_input_token + target_tokens * seq2seq.per_target_token
        logits = int(target_tokens * seq2seq.logits_per_target_token)
        if plan.precision == "fp16" and not full:  # T5 keeps its MLP output projections (wo) in fp32 under fp16
            weights += 2 * sum(lr.weight_parameters for lr in model.linear_layers if lr.name == "wo")
    else:
        tokens = sequences * tokens_per_seq
        kv_len = tokens_per_seq + (plan.num_virtual_tokens if plan.method == "prefix_tuning" else 0)
        layer = layer_activation_bytes(model, plan, a, r, c) + eager_scores_bytes(model, plan, a, kv_len, c)
        if attention_implementation(model, plan) != plan.attn_implementation:
            notes.append(f"{model.model_type} has no SDPA attention in transformers: eager attention keeps "
                         "every layer's attention scores")
        head = head_bytes(model, a, r)
        scored = sequences * max(tokens_per_seq - 1, 1)
        logits = logits_bytes(model, plan, scored, a, 4 if upcast else wb, lm_head_trained, c)
        # saved for backward: every block's tensors, or under checkpointing each block's input alone
        ckpt = plan.gradient_checkpointing
        kept_logits, kept_cache = kept_outputs_bytes(model, plan, tokens, scored, a)
        activations = tokens * ((model.num_layers * r * model.hidden_size if ckpt else model.num_layers * layer) + head)
        activations += kept_cache
        # after the loss, one block's backward at a time: its gradients in flight (at most one of each tensor it saved:
        # a block more) and, under checkpointing, the block recomputed
        blocks = tokens * layer * (2 if ckpt else 1)
        if cpu:  # the CPU calibration's fitted form: those blocks added to the loss head's peak
            activations += blocks
        else:  # on a GPU the loss head's peak has passed by then; the step keeps the larger moment (below)
            backward = blocks + kept_logits
    if full and wb == 4 and a == 2 and plan.autocast:
        # autocast casts each fp32 linear weight to 16 bits once a forward (its weight cache) and the linear
        # layers save those copies for backward: all of them live until the backward has passed
        activations += 2 * model.linear_weight_parameters
    if not model.known_architecture:
        activations *= c.unknown_architecture_margin
        backward *= c.unknown_architecture_margin
        notes.append(f"unknown architecture {model.model_type}: activations raised by "
                     f"{c.unknown_architecture_margin - 1:.0%}")
    extra = task_terms(model, plan, weights=weights, a=a, r=r, c=c)
    notes += extra.notes
    # a step peaks at the largest of three moments beside the saved tensors: the loss head's, the reference's forward
    # and one block's backward; Breakdown adds the activations to the larger of the first two
    activations += max(0, backward - max(logits, extra.reference_forward))

    if cpu:
        context, workspace, fraction = c.cpu_runtime, c.cpu_workspace, c.cpu_allocator_fraction
    else:
        context, workspace, fraction = c.cuda_context, 0, c.cuda_allocator_fraction
    accumulate = plan.gradient_accumulation > 1 or (plan.strategy == "ddp" and n > 1) or plan.grads_kept
    partial = Breakdown(weights, adapter, gradients, optimizer, int(activations), logits, step_temp, buffers, 0,
                        context, accumulate, extra.reference, extra.reference_forward, extra.generation)
    # CUDA's caching allocator keeps a tensor allocated once (weights, adapters, optimizer states, a reference copy) in
    # a block of its own size; its slack comes from blocks a step frees and reuses at other sizes: the dynamic peak.
    # The CPU's fitted slack (0 today) is a share of the whole process.
    slack_of = partial.total - context if cpu else partial.peak_dynamic
    breakdown = replace(partial, overhead=workspace + int(fraction * slack_of))

    # host RAM and disk
    runtime = c.cpu_runtime
    cpu_ram = breakdown.total if cpu else runtime + cpu_offload
    merge = N * 2 + runtime if METHODS[plan.method].mergeable else 0
    if zero:
        checkpoint = 16 * N  # 16-bit weights, fp32 master and Adam states, and a 16-bit export
        output = 2 * N
    elif full:
        checkpoint = N * wb + int(N * optimizer_bytes_per_param(plan.optimizer, wb)) if plan.method == "full" \
            else N * wb + int(T * optimizer_bytes_per_param(plan.optimizer, wb))
        output = N * wb
    else:
        checkpoint = T * 4 + int(T * optimizer_bytes_per_param(plan.optimizer, 4))
        output = T * 4
    if full and wb == 4 and plan.precision != "fp32":
        notes.append("the runner saves full fine-tunes in fp32 (the dtype it trains in)")
    if upcast and r != a:
        lora = estimate(model, replace(plan, method="lora"), n_gpus, constants=c).total
        if lora < breakdown.total:
            notes.append(f"at {plan.seq_len:,} tokens QLoRA needs more than LoRA ({gib(lora)}): its fp32 "
                         "activations, from the upcast above, outweigh what 4-bit weights save")
    return MemoryEstimate(
        per_device=breakdown, n_devices=n, device=plan.device, total_parameters=N, trainable_parameters=T,
        cpu_ram=int(cpu_ram), cpu_ram_merge=merge, disk_checkpoint=checkpoint, disk_output=output,
        disk_total=output + plan.save_total_limit * checkpoint, notes=tuple(dict.fromkeys(notes)),
    )
