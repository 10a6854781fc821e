"""GGUF, written tensor by tensor (llama.cpp's names, its q/k permutation and its metadata) through
the ``gguf`` package, so the peak memory is one tensor, not the model. Llama-family models only."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.merge_plan import base_shards
from tuiwiz.run.outputs import Progress

GGUF_QUANTS = ("f32", "f16", "q8_0")
GGUF_ARCHITECTURES = ("llama", "mistral")  # the same tensor layout in llama.cpp's "llama" architecture
# llama.cpp's pre-tokenizer names for the split patterns of byte-level BPE tokenizers it knows
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _strip_generation_tags(template: str) -> str:
    """``{% generation %}`` marks assistant tokens for training masks in transformers; other engines lack it."""
    return re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", template)


def _pre_tokenizer(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    raise UserError("GGUF export knows byte-level BPE tokenizers split as GPT-2 or Llama 3 do; this one differs",
                    hint="convert the merged folder with llama.cpp's convert_hf_to_gguf.py", kind="model")


@dataclass(frozen=True)
class GgufVocab:
    model: str  # tokenizer.ggml.model: gpt2 (byte-level BPE) or llama (SentencePiece)
    pre: str  # tokenizer.ggml.pre
    tokens: list
    types: list
    scores: list | None = None  # SentencePiece only


def _vocab(folder: Path) -> GgufVocab:
    """The tokenizer as llama.cpp's converter writes it: byte-level BPE (GPT-2, Llama 3, Qwen), or
    SentencePiece (Llama 2, Mistral v0.1) from its tokenizer.model, through gguf-py's own vocab reader."""
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")) \
        if (folder / "tokenizer.json").is_file() else {}
    model = tokenizer_json.get("model") or {}
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        return _byte_level_vocab(folder, tokenizer_json)
    import gguf.vocab

    if not (folder / "tokenizer.model").is_file():
        raise UserError("GGUF export writes byte-level BPE (GPT-2, Llama 3 style) tokenizers, and SentencePiece "
                        "ones (Llama 2 style) from their tokenizer.model; this model has neither",
                        hint="copy the base model's tokenizer.model into the run's output folder, or convert the "
                             "merged folder with llama.cpp's convert_hf_to_gguf.py", kind="model")
    reader = gguf.vocab.SentencePieceVocab(folder)
    tokens, scores, types = [], [], []
    for text, score, kind in reader.all_tokens():
        tokens.append(text.decode("utf-8") if isinstance(text, bytes) else text)
        scores.append(float(score))
        types.append(kind)
    return GgufVocab("llama", "default", tokens, types, scores)


def _byte_level_vocab(folder: Path, tokenizer_json: dict) -> GgufVocab:
    import gguf
    from transformers import AutoTokenizer

    pre = _pre_tokenizer(tokenizer_json)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(max(vocab.values()) + 1):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return GgufVocab("gpt2", pre, tokens, types)


def permute_qk(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's LlamaModel.permute: HF's rotate-half layout of q/k rows to GGML's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2) \
        .reshape(weights.shape)


def _gguf_type(key: str, shape: list[int], quant: str) -> str:
    """The type llama.cpp's converter stores a tensor in: norms and vectors stay f32; Q8_0 needs rows of 32s."""
    if len(shape) == 1 or quant == "f32" or key.endswith("norm.weight"):
        return "f32"
    if quant == "q8_0" and shape[-1] % 32 == 0:
        return "q8_0"
    return "f16"


def _gguf_data(tensor, kind: str):
    import gguf
    import numpy as np

    data = tensor.float().numpy()
    if kind == "q8_0":
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
    return data.astype(np.float32 if kind == "f32" else np.float16)


def llama3_rope_factors(rope: dict, theta: float, head_dim: int, context: int):
    """Llama 3.1's rope scaling as llama.cpp reads it: one divisor per frequency (``rope_freqs``),
    computed as its converter does from the config's factor, low/high frequency factors and original
    context (which falls back to ``context``, the model's, as transformers does)."""
    import numpy as np

    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings") or context
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_context / high, 1.0,
                       np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def write_gguf(folder: Path, dest: Path, quant: str = "f16", *, name: str = "model",
               progress: Progress | None = None) -> Path:
    """A Llama-family safetensors folder to one GGUF file, tensor by tensor."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in GGUF_ARCHITECTURES:
        raise UserError(f"GGUF export supports Llama-family models ({', '.join(GGUF_ARCHITECTURES)}); this one is "
                        f"{config.get('model_type')}",
                        hint="use llama.cpp's convert_hf_to_gguf.py on the merged folder", kind="model")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise UserError(f"GGUF export writes default, linear and llama3 rope scaling; this model has '{rope_type}'",
                        hint="use llama.cpp's convert_hf_to_gguf.py on the merged folder", kind="model")
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    n_layers = config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    vocab = _vocab(folder)
    tokens = vocab.tokens

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(len(tokens))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=len(tokens))
    if isinstance(special.chat_template, str):
        special.chat_template = _strip_generation_tags(special.chat_template)
    special.add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    plan = []  # (gguf name, shard, hf name, shape)
    for shard in base_shards(folder):
        with safe_open(shard, framework="pt") as handle:
            for key in handle.keys():
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                mapped = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if mapped is None:
                    raise UserError(f"no GGUF name for tensor {key}", hint="use llama.cpp's convert_hf_to_gguf.py",
                                    kind="model")
                plan.append((mapped, shard, key, handle.get_slice(key).get_shape()))
    extra = {}  # tensors llama.cpp wants that the checkpoint does not hold
    if rope_type == "llama3":
        extra["rope_freqs.weight"] = llama3_rope_factors(rope, rope_theta, head_dim,
                                                             config["max_position_embeddings"])
        plan.append(("rope_freqs.weight", None, "rope_freqs.weight", list(extra["rope_freqs.weight"].shape)))
    # The header needs every tensor's type and size before the first byte of data: write the
    # infos from the safetensors headers, then the tensors one at a time.
    for mapped, _, key, shape in plan:
        kind = _gguf_type(key, shape, quant)
        if kind == "q8_0":
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
            byte_shape = (*shape[:-1], shape[-1] // block * size)
            writer.add_tensor_info(mapped, byte_shape, np.dtype(np.uint8), math.prod(byte_shape),
                                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            dtype = np.dtype(np.float32 if kind == "f32" else np.float16)
            writer.add_tensor_info(mapped, shape, dtype, math.prod(shape) * dtype.itemsize)
    writer.write_header_to_file(path=dest)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for number, (_, shard, key, shape) in enumerate(plan):
        if progress:
            progress("gguf", number, len(plan))
        if shard is None:
            writer.write_tensor_data(extra[key])
            continue
        with safe_open(shard, framework="pt") as handle:
            tensor = handle.get_tensor(key)
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = permute_qk(tensor, n_head, n_head)
        elif key.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = permute_qk(tensor, n_head, n_kv)
        writer.write_tensor_data(_gguf_data(tensor, _gguf_type(key, shape, quant)))
    writer.close()
    if progress:
        progress("gguf", len(plan), len(plan))
    return dest
