"""How much memory a fine-tune needs, per GPU (or in RAM on a CPU), from shapes alone.

Pure Python. Each term is counted the way the runner really trains (see
tuiwiz/train/modeling.py): full fine-tuning under mixed precision keeps fp32
weights and autocasts to 16 bits; peft upcasts adapters to fp32; QLoRA's
``prepare_model_for_kbit_training`` upcasts every non-quantized tensor to fp32;
trl's SFTTrainer scores tokens through a fused, tiled LM head instead of
materialising the logits. The fitted and assumed constants live in CONSTANTS;
docs/fit.md says which are measured (bench/calibrate.py) and which are not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from tuiwiz.errors import UserError
from tuiwiz.methods import METHOD_NAMES, METHODS
from tuiwiz.plan.architectures import IA3_TARGETS
from tuiwiz.plan.modelinfo import ModelInfo
from tuiwiz.units import gib

MiB = 1024**2
GiB = 1024**3

STRATEGIES = ("single", "ddp", "zero2", "zero3", "zero3_offload_optimizer", "zero3_offload_all")
ZERO = ("zero2", "zero3", "zero3_offload_optimizer", "zero3_offload_all")
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Constants:
    """Every number of the estimate that is fitted or assumed rather than counted."""

    activation_scale: float  # multiplies the counted saved tensors of the layers (fitted on CPU)
    cpu_tile_copies: float  # live fp32 copies of a fused-loss tile on CPU (torch fallback, fitted)
    cpu_runtime: int  # RSS of the trainer process before the model is built (measured)
    cpu_workspace: int  # what the first training step adds on CPU beyond tensors: kernels, threads (fitted)
    cpu_allocator_fraction: float  # malloc slack on CPU (fitted)
    cuda_context: int  # CUDA context, cuBLAS workspaces (assumed; not measurable here)
    cuda_allocator_fraction: float  # caching-allocator fragmentation (assumed; not measurable here)
    unknown_architecture_margin: float  # shapes guessed: err high
    fused_token_chunk: int = 4096  # trl's ChunkedLogProbFunction tile: tokens x vocabulary columns
    fused_vocab_chunk: int = 32768


# Fitted by bench/calibrate.py (bench/results/calibration-cpu.json); CUDA numbers are assumptions.
CONSTANTS = Constants(
    activation_scale=1.15,
    cpu_tile_copies=9.0,
    cpu_runtime=700 * MiB,
    cpu_workspace=50 * MiB,
    cpu_allocator_fraction=0.0,
    cuda_context=500 * MiB,
    cuda_allocator_fraction=0.08,
    unknown_architecture_margin=1.25,
)


@dataclass(frozen=True)
class Plan:
    """The memory-relevant choices of a fine-tune."""

    method: str = "lora"
    device: str = "cuda"  # cuda / cpu
    precision: str = "bf16"  # fp32 / fp16 / bf16
    micro_batch: int = 1
    seq_len: int = 512
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"
    attn_implementation: str = "sdpa"  # eager / sdpa / flash_attention_2
    strategy: str = "single"
    task: str = "sft"  # sft / pretrain / classification
    fused_loss: bool = True  # trl's SFTTrainer fused LM head; False: the model's own loss on full logits
    lora_r: int = 16
    lora_targets: tuple[str, ...] | None = None  # None: every linear layer ("all-linear")
    lora_dropout: float = 0.05
    use_dora: bool = False
    qlora_bits: int = 4
    double_quant: bool = True
    # QLoRA: the runner calls peft's prepare_model_for_kbit_training, which upcasts every unquantized tensor
    # (embeddings, norms, LM head) to fp32, and the residual stream with them. False: a 16-bit base stays 16-bit.
    kbit_upcast: bool = True
    adalora_init_r: int = 12
    ia3_targets: tuple[str, ...] | None = None  # None: peft's default for the architecture
    ia3_feedforward: tuple[str, ...] | None = None
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None  # p-tuning's MLP width (the runner's default is 128)
    weights_dtype: str | None = None  # profile.model.dtype when not "auto"
    save_total_limit: int = 2

    def __post_init__(self) -> None:
        for name, value, allowed in (("method", self.method, METHOD_NAMES), ("strategy", self.strategy, STRATEGIES),
                                     ("precision", self.precision, tuple(PRECISION_BYTES))):
            if value not in allowed:
                raise ValueError(f"Plan.{name} must be one of {allowed}, not {value!r}")
        if self.micro_batch < 1 or self.seq_len < 1 or self.gradient_accumulation < 1:
            raise ValueError("micro_batch, seq_len and gradient_accumulation must be positive")

    @classmethod
    def from_profile(cls, profile, model: ModelInfo, *, device: str = "cuda", bf16: bool = True,
                     strategy: str = "single") -> Plan:
        """The plan a profile describes, with 'auto' settled as the runner settles it."""
        t, m = profile.training, profile.method
        precision = t.precision
        if precision == "auto":
            precision = "fp32" if device == "cpu" else ("bf16" if bf16 else "fp16")
        attn = profile.model.attn_implementation
        kwargs: dict = dict(
            method=m.type, device=device, precision=precision, micro_batch=t.per_device_train_batch_size,
            seq_len=profile.data.max_length, gradient_accumulation=t.gradient_accumulation_steps,
            gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optim,
            attn_implementation="sdpa" if attn == "auto" else attn, strategy=strategy, task=profile.task,
            fused_loss=profile.task != "classification",
            weights_dtype=None if profile.model.dtype == "auto" else profile.model.dtype,
            save_total_limit=t.save_total_limit or 1,
        )
        if m.type in ("lora", "qlora"):
            targets = None if m.target_modules in ("auto", "all-linear") else tuple(m.target_modules)
            kwargs.update(lora_r=m.r, lora_targets=targets, lora_dropout=m.lora_dropout, use_dora=m.use_dora)
        if m.type == "qlora":
            kwargs.update(qlora_bits=m.bits, double_quant=m.bnb_4bit_use_double_quant)
        if m.type == "adalora":
            targets = None if m.target_modules in ("auto", "all-linear") else tuple(m.target_modules)
            kwargs.update(adalora_init_r=m.init_r, lora_targets=targets, lora_dropout=m.lora_dropout)
        if m.type == "ia3":
            kwargs.update(ia3_targets=None if m.target_modules == "auto" else tuple(m.target_modules),
                          ia3_feedforward=None if m.feedforward_modules == "auto" else tuple(m.feedforward_modules))
        if METHODS[m.type].family == "prompt":
            kwargs["num_virtual_tokens"] = m.num_virtual_tokens
        if m.type == "prefix_tuning":
            kwargs.update(prefix_projection=m.prefix_projection, encoder_hidden_size=m.encoder_hidden_size)
        if m.type == "p_tuning":
            kwargs["encoder_hidden_size"] = m.encoder_hidden_size or 128
        return cls(**kwargs)


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

    @property
    def peak_dynamic(self) -> int:
        forward_backward = self.activations + self.logits + (self.gradients if self.gradients_during_backward else 0)
        stepping = self.gradients + self.optimizer_step
        return max(forward_backward, stepping)

    @property
    def static(self) -> int:
        return self.weights + self.adapter + self.optimizer + self.buffers + self.context + self.overhead

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


def _targeted(model: ModelInfo, targets: tuple[str, ...] | None):
    if targets is None:
        return model.linear_layers
    return tuple(layer for layer in model.linear_layers if any(layer.matches(t) for t in targets))


def trainable_parameters(model: ModelInfo, plan: Plan) -> int:
    """Exactly what peft (or the runner, for full and BitFit) leaves with requires_grad."""
    m, H = plan.method, model.hidden_size
    if m == "full":
        return model.num_parameters
    if m == "bitfit":
        return model.bias_parameters
    if m in ("lora", "qlora"):
        layers = _targeted(model, plan.lora_targets)
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
                   for layer in _targeted(model, plan.lora_targets))
    if m == "ia3":
        default = IA3_TARGETS.get(model.model_type)
        targets = plan.ia3_targets or (default[0] if default else None)
        feedforward = plan.ia3_feedforward or (default[1] if default else ())
        if not targets:
            raise UserError(f"IA3 has no default target modules for {model.model_type}",
                            field="method.target_modules", kind="profile",
                            hint="name them, e.g. " + ", ".join(model.linear_modules[:3]))
        n = 0
        for layer in _targeted(model, tuple(targets)):
            ff = any(layer.matches(t) for t in feedforward)
            n += layer.count * (layer.in_features if ff else layer.out_features)
        return n
    v = plan.num_virtual_tokens
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


def optimizer_bytes_per_param(optimizer: str, state_bytes: int) -> float:
    """Optimizer-state bytes per trainable parameter whose dtype has ``state_bytes`` bytes."""
    if optimizer in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit"):
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


def _layer_activation_bytes(model: ModelInfo, plan: Plan, a: int, r: int, c: Constants) -> float:
    """Bytes saved for backward per token in one transformer block.

    ``a``: activation dtype bytes (the autocast dtype); ``r``: the residual stream's.
    When they differ, each linear layer keeps its own 16-bit copy of its input.
    """
    out = a  # the MLP's intermediate outputs
    if plan.method == "qlora":
        # bitsandbytes' Linear4bit saves no input (its weight is frozen) and returns its input's dtype: an fp32
        # residual stream adds no 16-bit input copies, but makes the MLP's gate, up and activation outputs fp32
        out, r = r, a
    H, q, kv, inter = model.hidden_size, model.q_dim, model.kv_dim, model.intermediate_size
    fused_qkv = any(layer.name in ("qkv_proj", "c_attn", "query_key_value") for layer in model.linear_layers)
    attn_inputs = 1 if (r == a or fused_qkv) else 3
    fused_mlp = any(layer.name == "gate_up_proj" for layer in model.linear_layers)
    mlp_inputs = 1 if (r == a or not model.gated_mlp or fused_mlp) else 2
    kv_saved = kv if plan.attn_implementation == "flash_attention_2" else q  # sdpa/eager repeat GQA heads
    norms = (4 if model.model_type == "gemma2" else 2) * (4 + r) * H
    attention = a * (attn_inputs * H + q + 2 * kv_saved + q + q)  # inputs, q/k/v, output, o_proj input
    mlp = a * mlp_inputs * H + (3 * out + a) * inter  # gate, up, activation outputs; the down input's copy
    extra = 0.0
    if METHODS[plan.method].low_rank:
        rank = plan.adalora_init_r if plan.method == "adalora" else plan.lora_r
        mask = 1 if plan.lora_dropout > 0 else 0
        for layer in _targeted(model, plan.lora_targets):
            if layer.count == model.num_layers:  # one per block
                extra += (a + mask) * layer.in_features + a * rank
    elif plan.method == "ia3":
        extra = 2 * a * H
    return (norms + attention + mlp) * c.activation_scale + extra


# Architectures whose transformers implementation has no SDPA path: "auto" means eager for them.
EAGER_ONLY = ("gemma2",)


def attention_implementation(model: ModelInfo, plan: Plan) -> str:
    if plan.attn_implementation == "sdpa" and model.model_type in EAGER_ONLY:
        return "eager"
    return plan.attn_implementation


def _eager_scores_bytes(model: ModelInfo, plan: Plan, a: int, seq: int) -> int:
    """Per token per layer: eager attention keeps the softmax (fp32) and its 16-bit cast, heads x keys."""
    if attention_implementation(model, plan) != "eager":
        return 0
    per_score = 4 + (a if a != 4 else 0)
    return per_score * model.num_heads * seq


def _logits_bytes(model: ModelInfo, plan: Plan, tokens: int, a: int, wb: int, lm_head_trained: bool,
                  c: Constants) -> int:
    if plan.task == "classification":
        return 0
    V, H = model.vocab_size, model.hidden_size
    if not plan.fused_loss:
        # logits (a), their fp32 upcast and log-softmax in forward; in backward log-softmax,
        # its incoming and outgoing gradients (fp32 each): the larger of the two moments
        return tokens * V * max(a + 8, 12)
    chunk_tokens, chunk_vocab = min(tokens, c.fused_token_chunk), min(V, c.fused_vocab_chunk)
    if plan.device == "cpu":
        tile = chunk_tokens * chunk_vocab * 4 * c.cpu_tile_copies
    else:
        tile = chunk_tokens * chunk_vocab * a
    grads = tokens * H * 4 + (V * H * 4 if lm_head_trained else 0)  # fp32 accumulators of the backward
    weight_cast = chunk_vocab * H * a if wb != a else 0
    return int(tile + grads + weight_cast)


def estimate(model: ModelInfo, plan: Plan, n_gpus: int = 1, *, constants: Constants | None = None) -> MemoryEstimate:
    """Peak memory per device for ``plan`` on ``n_gpus`` devices (1 for CPU and single-GPU plans)."""
    c = constants or CONSTANTS
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
            optimizer = 4 * (sum(lr.count * (lr.in_features + lr.out_features) for lr in model.linear_layers)
                             + model.vocab_size + model.hidden_size)
        if plan.optimizer == "adamw_torch" and not cpu:
            step_temp = T * param_bytes  # foreach AdamW: one temporary the size of all states
        elif cpu:
            step_temp = 2 * (max(largest, 1) if full else T) * param_bytes  # single-tensor AdamW, per tensor
        else:
            step_temp = 0
        if plan.strategy == "ddp" and n > 1:
            buffers = gradients  # DDP copies gradients into its own buckets
    if plan.method == "qlora":
        buffers += max(lr.in_features * lr.out_features for lr in model.linear_layers) * a  # one dequantized layer
    if plan.optimizer.startswith("paged_"):
        notes.append("paged optimizer states can spill to CPU RAM under pressure; counted on the GPU here")

    # activations
    tokens_per_seq = plan.seq_len + (plan.num_virtual_tokens if METHODS[plan.method].virtual_tokens else 0)
    tokens = plan.micro_batch * tokens_per_seq
    kv_len = tokens_per_seq + (plan.num_virtual_tokens if plan.method == "prefix_tuning" else 0)
    # the residual stream is fp32 wherever the embeddings and norms are: full fine-tuning's fp32 weights, and
    # QLoRA's upcast (a real allocation: under it QLoRA can need more than LoRA at long sequences)
    r = 4 if (a == 4 or upcast or (full and wb == 4)) else a
    layer = _layer_activation_bytes(model, plan, a, r, c) + _eager_scores_bytes(model, plan, a, kv_len)
    if attention_implementation(model, plan) != plan.attn_implementation:
        notes.append(f"{model.model_type} has no SDPA attention in transformers: eager attention keeps "
                     "every layer's attention scores")
    head = (4 + r + 2 * a) * model.hidden_size  # embeddings out, final norm, LM-head input
    # the backward pass holds one layer's activation gradients besides what is saved; checkpointing
    # keeps each layer's input and recomputes one layer at a time
    if plan.gradient_checkpointing:
        activations = tokens * (model.num_layers * r * model.hidden_size + 2 * layer + head)
    else:
        activations = tokens * ((model.num_layers + 1) * layer + head)
    if not model.known_architecture:
        activations *= c.unknown_architecture_margin
        notes.append(f"unknown architecture {model.model_type}: activations raised by "
                     f"{c.unknown_architecture_margin - 1:.0%}")
    lm_head_trained = plan.method == "full"
    head_bytes = 4 if upcast else wb
    logits = _logits_bytes(model, plan, plan.micro_batch * max(tokens_per_seq - 1, 1), a, head_bytes,
                           lm_head_trained, c)

    if cpu:
        context, workspace, fraction = c.cpu_runtime, c.cpu_workspace, c.cpu_allocator_fraction
    else:
        context, workspace, fraction = c.cuda_context, 0, c.cuda_allocator_fraction
    accumulate = plan.gradient_accumulation > 1 or (plan.strategy == "ddp" and n > 1)
    partial = Breakdown(weights, adapter, gradients, optimizer, int(activations), logits, step_temp, buffers, 0,
                        context, gradients_during_backward=accumulate)
    overhead = workspace + int(fraction * (partial.total - context))
    breakdown = Breakdown(weights, adapter, gradients, optimizer, int(activations), logits, step_temp, buffers,
                          overhead, context, gradients_during_backward=accumulate)

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
