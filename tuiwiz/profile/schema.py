"""The profile: every choice of a fine-tune, as a versioned pydantic schema.

Field names follow transformers' ``TrainingArguments`` and peft's configs where
those exist. Loading, saving and error reporting live in ``io.py``; what each method is, in ``tuiwiz.methods``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuiwiz.methods import METHODS
from tuiwiz.tasks import TASKS

PROFILE_VERSION = 1

# Bounds past which a value is a mistake, not a run: a million epochs or micro-batches would be
# accepted by transformers and fail hours later, or make the planner promise exabytes.
MAX_COUNT = 1_000_000  # micro-batches, accumulation steps, ranks and other per-step counts
MAX_STEPS = 100_000_000  # optimizer steps and step intervals (about 3 years at one step a second)

# C0 control characters and DEL: a NUL in a path reaches the terminal and the filesystem as garbage.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAKS = re.compile(r"[\t\n\r]")

TargetModules = Literal["auto", "all-linear"] | list[str]


class _Strict(BaseModel):
    # inf and nan are never what a profile means (and nan passes every bound)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _plain_text(cls, value, info):
        """Names, paths and ids are one line of plain text; only free text (``*_text``) may break lines."""
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if not isinstance(text, str):
                continue
            found = _CONTROL.search(text) or (not info.field_name.endswith("_text") and _LINE_BREAKS.search(text))
            if found:
                raise ValueError(f"contains the control character {found.group()!r} at position {found.start()}: "
                                 "write plain text (a NUL or escape code is never part of a name or a path)")
        return value


class ModelConfig(_Strict):
    name_or_path: str = Field(
        "demo",
        description="'demo' (the built-in tiny model), a local folder, or a Hugging Face hub id.",
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Dtype the weights are loaded in; 'auto' follows the precision."
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Only for models you trust."
    )
    start_from: str | None = Field(
        None,
        description="An earlier run (its folder, or its output folder) to train on from: its adapter is merged "
                    "into name_or_path first, its full model replaces it. DPO after SFT, for instance.",
    )


class ColumnsConfig(_Strict):
    """Names of your dataset's columns, where they differ from the defaults."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    system: str | None = None
    messages: str | None = None
    text: str | None = None
    label: str | None = None
    prompt: str | None = None  # preference, KTO and GRPO data
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None  # KTO: the completion its label judges
    answer: str | None = None  # GRPO: the reference answer the verifiable rewards compare with
    source: str | None = None  # seq2seq: the input text
    target: str | None = None  # seq2seq: the text to produce


class DataConfig(_Strict):
    path: str = Field(
        "demo:alpaca",
        description="A JSON/JSONL/CSV/TSV/Parquet file, a hub dataset id, or demo:NAME.",
    )
    format: Literal["auto", "alpaca", "messages", "text", "classification", "preference", "unpaired", "prompt",
                    "seq2seq"] = Field(
        "auto", description="auto: sniffed from the columns. preference: prompt/chosen/rejected; unpaired: "
        "prompt/completion/label (KTO); prompt: prompts with an optional answer (GRPO); seq2seq: input/target.")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    validation_split: float = Field(
        0.0, ge=0.0, lt=0.5, description="Fraction of rows held out for evaluation."
    )
    validation_path: str | None = Field(None, description="A separate evaluation file.")
    max_length: int = Field(512, ge=8, le=1_048_576, description="Maximum tokens per example.")
    packing: bool = Field(
        False, description="Pack several examples into each max_length row, each attending only to itself "
        "(sdpa, eager, flash_attention_2).",
    )
    group_by_length: bool = Field(
        False, description="Unpacked runs: batch examples of similar length together (shuffled in groups of 50 "
        "batches, the longest batch first), so less of each batch is padding.",
    )
    limit: int | None = Field(None, ge=1, le=10**12, description="Use only the first N rows.")

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.validation_split and self.validation_path:
            raise ValueError("set validation_split or validation_path, not both")
        return self


class _LoraParams(_Strict):
    r: int = Field(16, ge=1, le=4096)
    lora_alpha: float = Field(32, gt=0, le=65_536)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: TargetModules = Field(
        "auto", description="'auto' picks the linear layers for the architecture."
    )
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] | None = None


class FullMethod(_Strict):
    type: Literal["full"] = "full"


class LoraMethod(_LoraParams):
    type: Literal["lora"] = "lora"


class QLoraMethod(_LoraParams):
    type: Literal["qlora"] = "qlora"
    bits: Literal[4, 8] = 4
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    upcast_non_quantized: bool = Field(
        False, description="Cast the weights left unquantized (embeddings, norms, LM head) to fp32, as peft's "
        "prepare_model_for_kbit_training does: more memory (an fp32 residual stream); off, they stay in the "
        "16-bit dtype they load in, as LoRA's base does.",
    )


class _VirtualTokens(_Strict):
    num_virtual_tokens: int = Field(20, ge=1, le=4096)


class PromptTuningMethod(_VirtualTokens):
    type: Literal["prompt_tuning"] = "prompt_tuning"
    prompt_tuning_init: Literal["RANDOM", "TEXT"] = "RANDOM"
    prompt_tuning_init_text: str | None = None

    @model_validator(mode="after")
    def _text_needs_text(self) -> PromptTuningMethod:
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            raise ValueError("prompt_tuning_init TEXT needs prompt_tuning_init_text")
        return self


class PrefixTuningMethod(_VirtualTokens):
    type: Literal["prefix_tuning"] = "prefix_tuning"
    prefix_projection: bool = False
    encoder_hidden_size: int | None = Field(None, ge=1, le=65_536)


class PTuningMethod(_VirtualTokens):
    type: Literal["p_tuning"] = "p_tuning"
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int | None = Field(None, ge=1, le=65_536)
    encoder_num_layers: int = Field(2, ge=1, le=64)
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0)


class IA3Method(_Strict):
    type: Literal["ia3"] = "ia3"
    target_modules: TargetModules = "auto"
    feedforward_modules: Literal["auto"] | list[str] = "auto"


class AdaLoraMethod(_Strict):
    type: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=4096)
    target_r: int = Field(8, ge=1, le=4096)
    lora_alpha: float = Field(32, gt=0, le=65_536)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    tinit: int = Field(0, ge=0, le=MAX_STEPS, description="Warm-up steps before the rank is pruned.")
    tfinal: int = Field(0, ge=0, le=MAX_STEPS, description="Final steps at the target rank.")
    deltaT: int = Field(1, ge=1, le=MAX_STEPS, description="Steps between two rank allocations.")
    orth_reg_weight: float = Field(0.5, ge=0.0, le=1_000)
    target_modules: TargetModules = "auto"

    @model_validator(mode="after")
    def _ranks(self) -> AdaLoraMethod:
        if self.target_r > self.init_r:
            raise ValueError("target_r must not exceed init_r")
        return self


class BitFitMethod(_Strict):
    """Train the bias terms only (Ben Zaken et al., 2021)."""

    type: Literal["bitfit"] = "bitfit"


Method = Annotated[
    FullMethod | LoraMethod | QLoraMethod | PromptTuningMethod | PrefixTuningMethod | PTuningMethod | IA3Method
    | AdaLoraMethod | BitFitMethod,
    Field(discriminator="type"),
]

Optimizer = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "paged_lion_8bit",
]
Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


class TrainingConfig(_Strict):
    num_train_epochs: float = Field(3.0, gt=0, le=100_000)
    max_steps: int = Field(-1, ge=-1, le=MAX_STEPS, description="Overrides num_train_epochs when positive.")
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Unset: a default that suits the method."
    )
    per_device_train_batch_size: int = Field(4, ge=1, le=MAX_COUNT)
    per_device_eval_batch_size: int = Field(8, ge=1, le=MAX_COUNT)
    gradient_accumulation_steps: int = Field(1, ge=1, le=MAX_COUNT)
    lr_scheduler_type: Scheduler = "cosine"
    warmup_steps: float = Field(
        0.0, ge=0, le=MAX_STEPS, description="Steps of linear warmup, or a fraction of all steps when below 1."
    )
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, le=1e6)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="'auto': bf16 where the GPU has it, else fp16 on GPU, fp32 on CPU."
    )
    gradient_checkpointing: bool = False
    optim: Optimizer = "adamw_torch"
    seed: int = Field(42, ge=0, le=2**32 - 1, description="numpy and torch take seeds below 2**32.")
    logging_steps: int = Field(10, ge=1, le=MAX_STEPS)
    eval_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Unset: evaluate once per epoch.")
    save_steps: int = Field(500, ge=1, le=MAX_STEPS)
    save_total_limit: int | None = Field(2, ge=1, le=MAX_COUNT)
    auto_recover: int = Field(
        0, ge=0, le=10,
        description="After running out of memory, resume from the last checkpoint with a lighter setting, "
                    "at most this many times.",
    )
    pad_to_max_length: bool = Field(
        False, description="Pad every batch to data.max_length (the probe run measures the worst case so)."
    )
    loss_head: Literal["auto", "fused", "whole"] = Field(
        "auto", description="How sft and pretrain score tokens: 'fused', TRL's tiled LM head (the whole logits "
                            "never exist); 'whole', the model's own logits (faster on the CPU, heavier); 'auto': "
                            "whole on the CPU where the estimate says they fit, fused otherwise."
    )

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_whole_or_fraction(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("use a whole number of steps, or a fraction below 1")
        return value


# Experiment trackers, by the names transformers' report_to knows; each one's package is checked
# before a run starts (run/preflight.py). Credentials come from the environment, never the profile.
Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "clearml", "dvclive", "neptune",
                  "swanlab"]


class OutputConfig(_Strict):
    runs_dir: str = Field("runs", description="Folder that holds one folder per run.")
    report_to: list[Tracker] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers the run logs to; TensorBoard writes into the run's tensorboard/ folder. "
                    "[] for none.")
    run_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Prefix of the run id; letters, digits, '.', '_' and '-'.",
    )


class NodesConfig(_Strict):
    """Several machines: the same profile on each, with this node's rank."""

    count: int = Field(1, ge=1, le=1024, description="How many machines take part.")
    rank: int = Field(0, ge=0, description="This machine's rank; `--node-rank N` overrides it.")
    main_address: str = Field("127.0.0.1", description="Address of the rank-0 machine, reachable from all.")
    main_port: int | None = Field(
        None, ge=1024, le=65535,
        description="Rendezvous port on the rank-0 machine. Default: a free port on one machine (so several "
                    "runs side by side do not collide), 29500 across machines.")

    @model_validator(mode="after")
    def _rank_in_range(self) -> NodesConfig:
        if self.rank >= self.count:
            raise ValueError(f"nodes.rank {self.rank} must be below nodes.count {self.count}")
        return self


class DistributedConfig(_Strict):
    """Several processes: DDP or DeepSpeed ZeRO through `accelerate launch`."""

    strategy: Literal["single", "ddp", "zero2", "zero3"] = Field(
        "single", description="single process, DDP (a full copy per GPU), or DeepSpeed ZeRO stage 2 or 3."
    )
    num_processes: int = Field(1, ge=1, le=64, description="Processes on each machine, one per GPU.")
    gpus: list[int] | None = Field(None, description="NVML indices of the GPUs to use (CUDA_VISIBLE_DEVICES).")
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer states in CPU RAM.")
    offload_params: bool = Field(False, description="ZeRO-3: keep parameters in CPU RAM too.")
    omp_num_threads: int | None = Field(None, ge=1, le=4096,
                                        description="CPU threads per process; unset: cores / processes.")
    nodes: NodesConfig = Field(default_factory=NodesConfig)

    @property
    def world_size(self) -> int:
        return self.num_processes * self.nodes.count

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        if self.strategy == "single" and self.world_size > 1:
            raise ValueError("strategy single runs one process: set strategy ddp, zero2 or zero3 for several")
        if self.offload_params and self.strategy != "zero3":
            raise ValueError("offload_params needs strategy zero3 (ZeRO-2 does not partition parameters)")
        if self.offload_optimizer and self.strategy not in ("zero2", "zero3"):
            raise ValueError("offload_optimizer needs strategy zero2 or zero3")
        if self.gpus is not None:
            if len(set(self.gpus)) != len(self.gpus):
                raise ValueError("distributed.gpus lists a GPU twice")
            if self.num_processes > len(self.gpus):
                raise ValueError(
                    f"{self.num_processes} processes but only {len(self.gpus)} GPUs in distributed.gpus: "
                    "one process per GPU"
                )
        return self


class FitRecord(_Strict):
    """What the probe run measured for this profile, written back by `tuiwiz probe`."""

    device: str
    estimated_peak_mb: float
    measured_peak_mb: float
    budget_mb: float | None = None
    probed_at: str | None = None
    changes: list[str] = Field(default_factory=list, description="Step-downs the probe applied.")


# Loss variants by their TRL 1.x names (DPOConfig.loss_type, KTOConfig.loss_type, GRPOConfig.loss_type).
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
PREFERENCE_LOSSES = {"dpo": DPO_LOSSES, "kto": KTO_LOSSES}


class PreferenceConfig(_Strict):
    """Preference tuning (task dpo, kto, orpo, simpo): TRL's settings by their TRL names."""

    beta: float = Field(0.1, gt=0, le=100, description="How far the policy may move from the reference "
                        "(DPO, KTO), the weight of the odds-ratio term (ORPO), the reward scale (SimPO).")
    loss_type: str | None = Field(None, description="DPO: " + ", ".join(DPO_LOSSES) + "; KTO: "
                                  + ", ".join(KTO_LOSSES) + ". Unset: TRL's default (sigmoid, kto).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="DPO and SimPO: assumed share of flipped "
                                   "labels (cDPO, robust).")
    max_prompt_length: int | None = Field(
        None, ge=1, le=1_048_576,
        description="Longest prompt in tokens; a longer one is a data error naming its line. Unset: half of "
                    "data.max_length.")
    precompute_ref_log_probs: bool | Literal["auto"] = Field(
        "auto", description="DPO, KTO: score the data with the reference once before training, so no reference "
                            "forward runs in the steps. auto: on under full fine-tuning (no second copy in "
                            "memory) and, under adapters, where the run trains or evaluates on its rows more "
                            "than once (less work).")
    simpo_gamma: float = Field(0.5, ge=0, le=100, description="SimPO: the target reward margin.")
    desirable_weight: float = Field(1.0, gt=0, le=1000, description="KTO: weight of desirable completions.")
    undesirable_weight: float = Field(1.0, gt=0, le=1000, description="KTO: weight of undesirable ones.")


class _Reward(_Strict):
    weight: float = Field(1.0, ge=-1000, le=1000, description="Its share of the total reward.")


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"is not a regular expression Python's re accepts: {exc}") from None
    return pattern


class ExactAnswerReward(_Reward):
    """1 when the answer extracted from the completion equals the row's answer column, else 0."""

    type: Literal["exact_answer"] = "exact_answer"
    pattern: str = Field(r"(-?[\d.,]+)\D*$", description="Regular expression; its first group (or the whole "
                         "match) is the answer. Default: the last number in the completion.")
    _check = field_validator("pattern")(classmethod(lambda cls, v: _compiles(v)))


class FormatReward(_Reward):
    """1 when the completion matches the pattern (re.search; ^...$ for the whole text), else 0."""

    type: Literal["format"] = "format"
    pattern: str
    _check = field_validator("pattern")(classmethod(lambda cls, v: _compiles(v)))


class LengthReward(_Reward):
    """0 at the target length (in characters), falling linearly to -1 at twice or zero that length."""

    type: Literal["length"] = "length"
    target: int = Field(ge=1, le=1_000_000)


class ModelReward(_Reward):
    """The score of a reward model trained with task: reward (its run folder or output folder)."""

    type: Literal["reward_model"] = "reward_model"
    path: str


class PythonReward(_Reward):
    """Your own function ``fn(prompts, completions, **columns) -> list[float]`` from a Python file, run only
    with grpo.trust_reward_code: true."""

    type: Literal["python"] = "python"
    file: str
    function: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


Reward = Annotated[
    ExactAnswerReward | FormatReward | LengthReward | ModelReward | PythonReward, Field(discriminator="type"),
]


class GrpoConfig(_Strict):
    """Reinforcement learning on generated completions (task grpo): TRL's GRPOTrainer, or RLOO."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    rewards: list[Reward] = Field(default_factory=list, description="What a completion earns; summed by weight.")
    num_generations: int = Field(4, ge=2, le=1024, description="Completions sampled per prompt.")
    max_completion_length: int = Field(64, ge=1, le=1_048_576)
    max_prompt_length: int | None = Field(None, ge=1, le=1_048_576,
                                          description="Longest prompt in tokens. Unset: data.max_length.")
    temperature: float = Field(1.0, gt=0, le=10)
    beta: float = Field(0.0, ge=0, le=100, description="KL penalty to the reference; 0 loads no reference.")
    loss_type: str | None = Field(None, description="GRPO: " + ", ".join(GRPO_LOSSES) + ". Unset: TRL's default.")
    trust_reward_code: bool = Field(False, description="Run the Python reward functions the rewards name.")
    log_completions: int = Field(4, ge=0, le=64, description="Sampled completions shown live with their rewards.")


class Profile(_Strict):
    version: Literal[1] = PROFILE_VERSION
    task: Literal["sft", "pretrain", "classification", "reward", "dpo", "kto", "orpo", "simpo", "grpo",
                  "seq2seq"] = "sft"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: Method = Field(default_factory=LoraMethod)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    fit: FitRecord | None = None

    @model_validator(mode="after")
    def _combinations(self) -> Profile:
        fmt = self.data.format
        task = TASKS[self.task]
        if fmt != "auto" and fmt not in task.formats:
            users = [t.name for t in TASKS.values() if fmt in t.formats]
            raise ValueError(f"task {self.task} trains on {' or '.join(task.formats)} data, not data.format {fmt} "
                             f"(which task {' or '.join(users)} takes)")
        self._task_settings()
        if self.training.eval_steps and not (self.data.validation_split or self.data.validation_path):
            raise ValueError(
                "training.eval_steps is set but there is no evaluation data: "
                "set data.validation_split or data.validation_path"
            )
        if self.data.packing and not task.packs:
            raise ValueError(f"data.packing does not apply to task {self.task} (only to sft and pretrain)")
        if self.data.packing and self.data.group_by_length:
            raise ValueError("data.group_by_length applies to unpacked runs: packed rows are all max_length "
                             "long already. Set data.packing: false, or remove data.group_by_length")
        if self.training.loss_head != "auto" and not task.whole_logits:
            users = " or ".join(t.name for t in TASKS.values() if t.whole_logits)
            raise ValueError(f"training.loss_head applies to task {users}, not {self.task}: remove it (this task's "
                             f"trainer scores its own way)")
        if self.data.group_by_length and not task.packs:
            raise ValueError(f"data.group_by_length does not apply to task {self.task} (only to sft and pretrain)")
        dist = self.distributed
        if self.method.type == "qlora" and dist.strategy == "zero3":
            raise ValueError(
                "qlora cannot shard its 4-bit weights with ZeRO-3: use strategy ddp or zero2, or method lora"
            )
        if self.method.type == "qlora" and (dist.offload_optimizer or dist.offload_params):
            raise ValueError("qlora with DeepSpeed offload is not supported: its paged optimizer already spills")
        if dist.strategy in ("zero2", "zero3") and self.training.optim not in ("adamw_torch", "adamw_torch_fused"):
            raise ValueError(
                f"DeepSpeed ZeRO brings its own AdamW; training.optim {self.training.optim} does not combine with it"
            )
        return self

    def _task_settings(self) -> None:
        """The preference: and grpo: sections must suit the task."""
        readers = {"preference": [t.name for t in TASKS.values() if t.preference], "grpo": ["grpo"]}
        for section, tasks in readers.items():  # a section the task would ignore is a mistake, said now
            given, default = getattr(self, section), type(getattr(self, section))()
            changed = [k for k in type(given).model_fields if getattr(given, k) != getattr(default, k)]
            if self.task not in tasks and changed:
                raise ValueError(f"{section}.{changed[0]} is read by task {' or '.join(tasks)} only, and this "
                                 f"profile's task is {self.task}: set task: to one of those, or remove the "
                                 f"{section}: section")
        loss = self.preference.loss_type
        if loss is not None:
            allowed = PREFERENCE_LOSSES.get(self.task)
            if allowed is None:
                raise ValueError(f"preference.loss_type applies to task dpo or kto, not {self.task}")
            if loss not in allowed:
                raise ValueError(f"preference.loss_type {loss} is not one of task {self.task}'s: {', '.join(allowed)}")
        if self.task == "kto" and (loss or "kto") == "kto" and self.training.per_device_train_batch_size < 2:
            raise ValueError("task kto estimates its KL term from the other examples of a micro-batch: set "
                             "training.per_device_train_batch_size to 2 or more")
        if (self.task in ("dpo", "kto") and self.preference.precompute_ref_log_probs is True
                and self.distributed.world_size > 1):
            raise ValueError(f"preference.precompute_ref_log_probs: true runs on one process only (TRL 1.x: the other "
                             f"ranks would read a cache file only the first wrote), and this profile runs "
                             f"{self.distributed.world_size}: set it to auto or false, or distributed.num_processes: 1")
        if self.task == "dpo" and loss == "exo_pair" and self.preference.label_smoothing == 0:
            raise ValueError("preference.label_smoothing must be above 0 for loss_type exo_pair (its paper uses "
                             "1e-3)")
        limit = self.preference.max_prompt_length
        if TASKS[self.task].preference and limit is not None and limit >= self.data.max_length:
            raise ValueError(f"preference.max_prompt_length={limit} leaves no room for the reply within "
                             f"data.max_length={self.data.max_length}: keep it below (unset, it is half of it)")
        grpo = self.grpo
        if grpo.loss_type is not None and grpo.loss_type not in GRPO_LOSSES:
            raise ValueError(f"grpo.loss_type {grpo.loss_type} is not one of {', '.join(GRPO_LOSSES)}")
        if self.task == "grpo":
            if not grpo.rewards:
                raise ValueError("task grpo needs at least one reward under grpo.rewards, e.g. "
                                 "[{type: exact_answer}] to compare with the data's answer column")
            if any(r.type == "python" for r in grpo.rewards) and not grpo.trust_reward_code:
                raise ValueError("grpo.rewards names a Python reward function: set grpo.trust_reward_code: true "
                                 "to run code from that file (only for code you trust)")
            if grpo.algorithm == "rloo" and grpo.loss_type is not None:
                raise ValueError("grpo.loss_type applies to algorithm grpo; RLOO has its own loss")

    @property
    def learning_rate(self) -> float:
        """The learning rate in force: the profile's, or the method's default."""
        return self.training.learning_rate or METHODS[self.method.type].learning_rate
