"""Loading the model and tokenizer, and putting the profile's method on the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuiwiz.demo.builtin import is_builtin, resolve_builtin
from tuiwiz.errors import UserError
from tuiwiz.methods import METHODS
from tuiwiz.plan.fine_tune import CPU_HEAD_TILE_TOKENS
from tuiwiz.profile.schema import Profile
from tuiwiz.tasks import TASKS


@dataclass(frozen=True)
class Precision:
    """What the hardware and the profile settle on."""

    name: str  # fp32 / fp16 / bf16
    device: str  # cpu / cuda

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.name]


def resolve_precision(profile: Profile) -> Precision:
    wanted = profile.training.precision
    if not torch.cuda.is_available():
        if wanted in ("fp16", "bf16"):
            raise UserError(
                f"precision {wanted} needs a GPU; this machine has none",
                hint="set training.precision: auto (fp32 on CPU)", field="training.precision", kind="profile",
            )
        return Precision("fp32", "cpu")
    bf16_ok = torch.cuda.is_bf16_supported()
    if wanted == "bf16" and not bf16_ok:
        raise UserError(
            f"precision bf16 needs compute capability 8.0 or newer; {torch.cuda.get_device_name(0)} lacks it",
            hint="set training.precision: fp16 or auto", field="training.precision", kind="profile",
        )
    if wanted == "auto":
        return Precision("bf16" if bf16_ok else "fp16", "cuda")
    return Precision(wanted, "cuda")


def cap_head_tiles(precision: Precision) -> None:
    """On CPU, the fused loss head scores CPU_HEAD_TILE_TOKENS positions a tile instead of TRL's 4096. Each position
    is scored on its own, so the values do not change (tests/test_dpo_memory.py); on CUDA nothing changes. The tile
    is TRL's module constant: the test fails if a TRL release renames it."""
    if precision.device != "cpu":
        return
    from trl.kernels import chunked_logprob

    chunked_logprob.TOKEN_CHUNK_SIZE = min(chunked_logprob.TOKEN_CHUNK_SIZE, CPU_HEAD_TILE_TOKENS)


def model_location(profile: Profile) -> str:
    """Where the model loads from: the built-in demo's folder, else the profile's folder or hub id."""
    name = profile.model.name_or_path
    return str(resolve_builtin(name)) if is_builtin(name) else name


def _load_dtype(profile: Profile, precision: Precision) -> torch.dtype:
    if profile.model.dtype != "auto":
        return getattr(torch, profile.model.dtype)
    # Full fine-tuning with mixed precision keeps fp32 master weights.
    if METHODS[profile.method.type].whole_model or precision.name == "fp32":
        return torch.float32
    return precision.torch_dtype


def load_tokenizer(model_path: str, profile: Profile):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=profile.model.revision, trust_remote_code=profile.model.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _quantization_config(profile: Profile, precision: Precision):
    from transformers import BitsAndBytesConfig

    method = profile.method
    if method.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = method.bnb_4bit_compute_dtype
    compute_dtype = precision.torch_dtype if compute == "auto" else getattr(torch, compute)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=method.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_model(model_path: str, profile: Profile, precision: Precision, labels: tuple[str, ...] | None):
    import transformers

    kwargs: dict = {
        "revision": profile.model.revision,
        "trust_remote_code": profile.model.trust_remote_code,
        "dtype": _load_dtype(profile, precision),
    }
    if profile.model.attn_implementation != "auto":
        kwargs["attn_implementation"] = profile.model.attn_implementation
    if profile.method.type == "qlora":
        kwargs["quantization_config"] = _quantization_config(profile, precision)
        if precision.device == "cuda":
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    kind = TASKS[profile.task].model
    if kind == "sequence_score" and profile.task == "classification":
        assert labels is not None
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
            **kwargs,
        )
    if kind == "sequence_score":  # a reward model: one score per sequence
        return transformers.AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, **kwargs)
    if kind == "seq2seq":
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(model_path, **kwargs)
    return transformers.AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


PEFT_TASK_TYPES = {"causal": "CAUSAL_LM", "sequence_score": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}


def _targets(value):
    return "all-linear" if value == "auto" else value


def peft_config(profile: Profile, task_type: str, total_steps: int, model_path: str):
    """The peft config for the profile's method, or None for full and BitFit."""
    import peft

    m = profile.method
    if m.type in ("lora", "qlora"):
        return peft.LoraConfig(
            task_type=task_type, r=m.r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
            target_modules=_targets(m.target_modules), use_dora=m.use_dora, use_rslora=m.use_rslora,
            modules_to_save=m.modules_to_save,
        )
    if m.type == "adalora":
        if m.tinit + m.tfinal >= total_steps:
            raise UserError(
                f"AdaLoRA needs tinit + tfinal ({m.tinit} + {m.tfinal}) below the run's {total_steps} steps",
                hint="lower method.tinit and method.tfinal, or train for more steps",
                field="method.tinit", kind="profile",
            )
        return peft.AdaLoraConfig(
            task_type=task_type, init_r=m.init_r, target_r=m.target_r, lora_alpha=m.lora_alpha,
            lora_dropout=m.lora_dropout, tinit=m.tinit, tfinal=m.tfinal, deltaT=m.deltaT,
            orth_reg_weight=m.orth_reg_weight, total_step=total_steps, target_modules=_targets(m.target_modules),
        )
    if m.type == "ia3":
        targets = None if m.target_modules == "auto" else m.target_modules
        feedforward = None if m.feedforward_modules == "auto" else m.feedforward_modules
        return peft.IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward)
    if m.type == "prompt_tuning":
        return peft.PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=m.num_virtual_tokens,
            prompt_tuning_init=m.prompt_tuning_init, prompt_tuning_init_text=m.prompt_tuning_init_text,
            tokenizer_name_or_path=model_path if m.prompt_tuning_init == "TEXT" else None,
        )
    if m.type == "prefix_tuning":
        return peft.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=m.num_virtual_tokens,
            prefix_projection=m.prefix_projection, encoder_hidden_size=m.encoder_hidden_size,
        )
    if m.type == "p_tuning":
        return peft.PromptEncoderConfig(
            task_type=task_type, num_virtual_tokens=m.num_virtual_tokens,
            encoder_reparameterization_type=m.encoder_reparameterization_type,
            encoder_hidden_size=m.encoder_hidden_size or 128, encoder_num_layers=m.encoder_num_layers,
            encoder_dropout=m.encoder_dropout,
        )
    return None


def prepare_quantized(model, profile: Profile):
    """A QLoRA base before its adapter: as loaded (its unquantized tensors in the 16-bit dtype LoRA's base trains
    in: LLaMA-Factory's default, no upcast_layernorm), or with ``method.upcast_non_quantized`` through peft's
    prepare_model_for_kbit_training, which casts them to fp32, and the residual stream with them. get_peft_model
    freezes the base either way, and the runner's non-reentrant checkpointing needs no input-grad hook."""
    if not profile.method.upcast_non_quantized:
        return model
    import peft

    return peft.prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=profile.training.gradient_checkpointing
    )


def apply_method(model, profile: Profile, total_steps: int, model_path: str):
    """Freeze and wrap the model as the method says. Returns the model to train."""
    task_type = PEFT_TASK_TYPES[TASKS[profile.task].model]
    kind = profile.method.type
    if kind == "full":
        return model
    if kind == "bitfit":
        head = {"score", "classifier"}
        trainable = 0
        for name, param in model.named_parameters():
            keep = name.endswith(".bias") or (task_type == "SEQ_CLS" and name.split(".")[0] in head)
            param.requires_grad_(keep)
            trainable += param.numel() if name.endswith(".bias") else 0
        if trainable == 0:
            raise UserError(
                f"BitFit trains bias terms, and {type(model).__name__} has none",
                hint="choose lora or ia3 for this model", field="method.type", kind="profile",
            )
        return model
    import peft

    if kind == "qlora":
        model = prepare_quantized(model, profile)
    config = peft_config(profile, task_type, total_steps, model_path)
    return peft.get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable), counting each shared tensor once; 4-bit weights by their real element count."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n = n * 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable


def wrapped_modules(model) -> list[str] | None:
    """Leaf names of the layers the method wrapped (what target_modules: auto became); None when none."""
    if not hasattr(model, "peft_config"):  # full, BitFit: nothing wrapped, and no peft import to pay for
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    return sorted(names) or None


@dataclass(frozen=True)
class TrainableModel:
    """The model with the profile's method on it, and what run_start says of it."""

    model: Any
    dtype: str  # what the weights were loaded in (under QLoRA: those left unquantized)
    params_total: int
    params_trainable: int
    target_modules: list[str] | None


def load_trainable_model(model_path: str, profile: Profile, precision: Precision, tokenizer, total_steps: int,
                         labels: tuple[str, ...] | None = None) -> TrainableModel:
    """Load the model (with a classification head over ``labels``) and put the method on it."""
    import transformers

    # Seed before the model exists: adapter weights (LoRA's A, prompt embeddings) and new heads are
    # drawn at creation, before the Trainer would seed anything.
    transformers.set_seed(profile.training.seed)
    model = load_model(model_path, profile, precision, labels)
    dtype = str(model.dtype).removeprefix("torch.")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = apply_method(model, profile, total_steps, model_path)
    fuse_lora(model, profile)
    total, trainable = count_parameters(model)
    return TrainableModel(model, dtype, total, trainable, wrapped_modules(model))


def fuse_lora(model, profile: Profile) -> None:
    """Run ``model``'s plain LoRA layers as one fused function each (tuiwiz/train/fused_lora.py), and say so in
    the run's log. Not under ZeRO-3, whose hooks on the base layers gather their sharded weights."""
    if not METHODS[profile.method.type].uses_peft or profile.distributed.strategy == "zero3":
        return
    from tuiwiz.train.fused_lora import fuse

    fused, total = fuse(model)
    if total:
        print(f"tuiwiz: {fused} of {total} LoRA layers run as one fused function each"
              + ("" if fused == total else " (the others: peft's own forward)"), flush=True)
