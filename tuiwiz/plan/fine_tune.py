"""The memory-relevant choices of a fine-tune (``Plan``), and the estimate's fitted and assumed constants.

Pure Python. ``Plan.from_profile`` settles a profile's 'auto' values as the runner does and carries what
its task changes: the sequences an example puts through the model, whether a frozen reference scores
them, GRPO's generation lengths, seq2seq's encoder and decoder lengths (tuiwiz/tasks.py says which task
does what). tuiwiz/plan/memory.py turns a Plan into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuiwiz.methods import METHOD_NAMES, METHODS
from tuiwiz.tasks import TASK_NAMES, TASKS

MiB = 1024**2
GiB = 1024**3

STRATEGIES = ("single", "ddp", "zero2", "zero3", "zero3_offload_optimizer", "zero3_offload_all")
ZERO = ("zero2", "zero3", "zero3_offload_optimizer", "zero3_offload_all")
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

# trl.experimental's ORPOTrainer and CPOTrainer (SimPO) take log-probabilities from the model's whole logits
# (concatenated_forward, get_batch_logps); TRL's own trainers score through a fused, tiled LM head.
FULL_LOGITS_TASKS = ("orpo", "simpo")
# Trainers that set every dropout's p to 0 (disable_dropout, True by default in DPOConfig, KTOConfig, RewardConfig,
# ORPOConfig and CPOConfig): LoRA's dropout then keeps no copy of its input.
DROPOUT_OFF_TASKS = ("dpo", "kto", "reward", "orpo", "simpo")


# TRL's fused loss head (trl.kernels.chunked_logprob: SFT, DPO, KTO, ORPO, SimPO and GRPO score through it)
# projects TOKEN_CHUNK_SIZE positions at a time onto the vocabulary (up to 32768 columns). On CUDA its Triton
# kernel folds each tile in place, and large tiles keep the GEMMs fast. On CPU its torch fallback keeps several
# fp32 copies of a tile alive, the backward's while every activation is still held: 4096 positions were most
# of what DPO's step peaked above SFT's (bench/preference_bench.py). The runner scores this many a tile on the CPU
# (train/modeling.py's cap_head_tiles), and the CPU estimate counts the same.
CPU_HEAD_TILE_TOKENS = 256


@dataclass(frozen=True)
class Constants:
    """Every number of the estimate that is fitted or assumed rather than counted."""

    # CPU plans only: multiplies what each block saves (LoRA's inputs and eager attention's scores included), fitted
    # with one more block for the backward on whole-process peaks (RSS: malloc, CPU kernels' scratch); GPU plans
    # count the saved tensors as they are
    activation_scale: float
    cpu_tile_copies: float  # live fp32 copies of a fused-loss tile on CPU (torch fallback, fitted)
    cpu_runtime: int  # RSS of the trainer process before the model is built (measured)
    cpu_workspace: int  # what the first training step adds on CPU beyond tensors: kernels, threads (fitted)
    cpu_allocator_fraction: float  # malloc slack on CPU (fitted)
    cuda_context: int  # CUDA context, cuBLAS workspaces (assumed; not measurable here)
    cuda_allocator_fraction: float  # caching-allocator slack, a share of the step's dynamic peak (assumed)
    unknown_architecture_margin: float  # shapes guessed: err high
    # trl's ChunkedLogProbFunction tile: tokens x vocabulary columns (TRL's own on CUDA; the runner's on CPU)
    fused_token_chunk: int = 4096
    fused_vocab_chunk: int = 32768
    cpu_fused_token_chunk: int = CPU_HEAD_TILE_TOKENS
    # live fp32 copies of a tile in the fused head's forward without backward (a reference model's scoring):
    # trl's _forward_tile keeps the tile, its transform z, z minus the running max and that difference's exp
    cpu_forward_tile_copies: float = 4.0
    sampling_copies: float = 3.0  # vocabulary-wide fp32 rows per sequence while sampling a token: logits, scaled, probs


# Fitted by bench/calibrate.py (bench/results/calibration-cpu.json); CUDA numbers are assumptions until the GPU
# runbook (bench/gpu/) measures them.
CONSTANTS = Constants(
    activation_scale=1.35,
    cpu_tile_copies=8.0,
    cpu_runtime=700 * MiB,
    cpu_workspace=150 * MiB,
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
    micro_batch: int = 1  # examples per step (GRPO: completions, as TRL's per_device_train_batch_size counts them)
    seq_len: int = 512  # tokens per sequence (GRPO: the prompt's; seq2seq: the encoder's input)
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"
    attn_implementation: str = "sdpa"  # eager / sdpa / flash_attention_2
    strategy: str = "single"
    task: str = "sft"  # a name of tuiwiz.tasks.TASKS
    fused_loss: bool = True  # trl's fused LM head; False: log-probabilities from the model's full logits
    # sequences one example puts through the model with gradients: 2 when chosen and rejected go together
    sequences_per_example: int = 1
    # a frozen reference model scores the step's sequences (DPO and KTO unless precomputed, GRPO with beta > 0):
    # a second copy of the weights under full fine-tuning, the base with the adapter disabled under peft
    reference: bool = False
    completion_len: int = 0  # GRPO: tokens generated per completion (grpo.max_completion_length)
    num_generations: int = 0  # GRPO: completions sampled per prompt
    target_len: int | None = None  # seq2seq: the decoder's tokens (None: seq_len)
    dropout_off: bool = False  # the trainer turns every dropout off (TRL's disable_dropout)
    lora_r: int = 16
    lora_targets: tuple[str, ...] | None = None  # None: every linear layer ("all-linear")
    lora_dropout: float = 0.05
    use_dora: bool = False
    qlora_bits: int = 4
    double_quant: bool = True
    # QLoRA with method.upcast_non_quantized: peft's prepare_model_for_kbit_training upcasts every unquantized tensor
    # (embeddings, norms, LM head) to fp32, and the residual stream with them. False (the runner's default): they
    # stay in the 16-bit dtype they load in, as under LoRA.
    kbit_upcast: bool = False
    adalora_init_r: int = 12
    ia3_targets: tuple[str, ...] | None = None  # None: peft's default for the architecture
    ia3_feedforward: tuple[str, ...] | None = None
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None  # p-tuning's MLP width (the runner's default is 128)
    weights_dtype: str | None = None  # profile.model.dtype when not "auto"
    # What a training loop other than tuiwiz's runner does (the published measurements in bench/published/ use them):
    autocast: bool = True  # False: a 16-bit model trained without autocast; peft's fp32 adapters take fp32 inputs
    keep_outputs: bool = False  # the loop holds the model's outputs (16-bit logits, key/value cache) through backward
    grads_kept: bool = False  # zero_grad(set_to_none=False), torch < 2.0's default: gradients stay between steps
    # torch < 1.11: softmax and log_softmax keep their input for backward beside their output (pytorch#64000)
    softmax_saves_input: bool = False
    save_total_limit: int = 2

    def __post_init__(self) -> None:
        for name, value, allowed in (("method", self.method, METHOD_NAMES), ("strategy", self.strategy, STRATEGIES),
                                     ("precision", self.precision, tuple(PRECISION_BYTES)),
                                     ("task", self.task, TASK_NAMES)):
            if value not in allowed:
                raise ValueError(f"Plan.{name} must be one of {allowed}, not {value!r}")
        if self.micro_batch < 1 or self.seq_len < 1 or self.gradient_accumulation < 1:
            raise ValueError("micro_batch, seq_len and gradient_accumulation must be positive")
        if self.sequences_per_example < 1 or self.completion_len < 0 or (self.target_len or 1) < 1:
            raise ValueError("sequences_per_example and target_len must be positive, completion_len not negative")

    @property
    def sequence_len(self) -> int:
        """Tokens of one sequence the model trains on: GRPO's prompt and its completion together."""
        return self.seq_len + self.completion_len

    @property
    def decoder_len(self) -> int:
        return self.target_len or self.seq_len

    @property
    def generation_batch(self) -> int:
        """GRPO's completions generated at once: TRL's generation_batch_size defaults to the micro-batch times
        steps_per_generation, which defaults to the accumulation steps (GRPOConfig.__post_init__)."""
        return self.micro_batch * self.gradient_accumulation

    @classmethod
    def from_profile(cls, profile, model, *, device: str = "cuda", bf16: bool = True,
                     strategy: str = "single") -> Plan:
        """The plan a profile describes, with 'auto' settled as the runner settles it."""
        t, m = profile.training, profile.method
        precision = t.precision
        if precision == "auto":
            precision = "fp32" if device == "cpu" else ("bf16" if bf16 else "fp16")
        attn = profile.model.attn_implementation
        seq_len = profile.data.max_length
        if TASKS[profile.task].generates:
            seq_len = profile.grpo.max_prompt_length or seq_len  # the schema: unset means data.max_length
        kwargs: dict = dict(
            method=m.type, device=device, precision=precision, micro_batch=t.per_device_train_batch_size,
            seq_len=seq_len, gradient_accumulation=t.gradient_accumulation_steps,
            gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optim,
            attn_implementation="sdpa" if attn == "auto" else attn, strategy=strategy,
            weights_dtype=None if profile.model.dtype == "auto" else profile.model.dtype,
            save_total_limit=t.save_total_limit or 1,
            **task_fields(profile.task, profile.preference, profile.grpo, m.type, profile.distributed.world_size),
        )
        if t.loss_head == "whole":  # ``auto`` is the fused head until a caller settles it (plan/loss_head.py)
            kwargs["fused_loss"] = False
        if m.type in ("lora", "qlora"):
            targets = None if m.target_modules in ("auto", "all-linear") else tuple(m.target_modules)
            kwargs.update(lora_r=m.r, lora_targets=targets, lora_dropout=m.lora_dropout, use_dora=m.use_dora)
        if m.type == "qlora":
            kwargs.update(qlora_bits=m.bits, double_quant=m.bnb_4bit_use_double_quant,
                          kbit_upcast=m.upcast_non_quantized)
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


def task_fields(task: str, preference=None, grpo=None, method: str = "lora", processes: int = 1) -> dict:
    """The Plan fields ``task`` sets for ``method`` on ``processes`` processes, from a profile's ``preference:``
    and ``grpo:`` sections (the schema's defaults when None)."""
    from tuiwiz.plan.reference_scoring import precomputed_without_counts
    from tuiwiz.profile.schema import GrpoConfig, PreferenceConfig

    spec = TASKS[task]
    preference = preference or PreferenceConfig()
    grpo = grpo or GrpoConfig()
    fields: dict = dict(task=task, sequences_per_example=spec.sequences_per_example,
                        fused_loss=spec.model == "causal" and task not in FULL_LOGITS_TASKS,
                        dropout_off=task in DROPOUT_OFF_TASKS)
    if spec.reference:
        fields["reference"] = not precomputed_without_counts(preference.precompute_ref_log_probs, method, processes)
    if spec.generates:
        # TRL loads no reference at beta 0 (GRPOTrainer.__init__), its default and the schema's
        fields.update(reference=grpo.beta > 0, completion_len=grpo.max_completion_length,
                      num_generations=grpo.num_generations)
    return fields
