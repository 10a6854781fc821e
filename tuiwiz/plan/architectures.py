"""Per-architecture parameter layouts from config.json alone: each known family's linear modules (what
LoRA can target), embeddings, heads and norms, and peft's IA3 defaults by model type."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LinearLayer:
    """One kind of linear module, e.g. every layer's ``self_attn.q_proj``."""

    path: str  # module path inside a block (``self_attn.q_proj``), or in the model for one-offs
    in_features: int
    out_features: int
    count: int
    bias: bool

    @property
    def name(self) -> str:
        """The last component: what peft's ``target_modules`` usually names."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def weight_parameters(self) -> int:
        return self.count * self.in_features * self.out_features

    @property
    def parameters(self) -> int:
        return self.weight_parameters + (self.count * self.out_features if self.bias else 0)

    def matches(self, target: str) -> bool:
        """peft's rule: a target names a module by its full path or by a suffix of whole components."""
        return self.path == target or self.path.endswith("." + target)


@dataclass(frozen=True)
class _Layout:
    linears: tuple[LinearLayer, ...]
    embedding: int
    lm_head: int
    other: int  # norms, biases outside linears, heads' extras
    other_bias: int  # the part of ``other`` named *.bias
    gated_mlp: bool

    @property
    def total(self) -> int:
        return sum(layer.parameters for layer in self.linears) + self.embedding + self.lm_head + self.other

    @property
    def bias(self) -> int:
        return sum(layer.count * layer.out_features for layer in self.linears if layer.bias) + self.other_bias


def _get(config: dict, *keys, default=None):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


# model_type -> (family, tie default). The tie default is the config class's own default.
_FAMILIES = {
    "llama": ("decoder", False), "mistral": ("decoder", False), "qwen2": ("decoder", False),
    "qwen3": ("decoder", True), "gemma": ("decoder", True), "gemma2": ("decoder", True),
    "phi3": ("phi3", False), "gpt2": ("gpt2", True), "bert": ("bert", True), "roberta": ("bert", True),
    "gpt_neox": ("gpt_neox", False), "qwen": ("qwen", False),
    # transformers 5 ties T5's and mT5's LM head to the shared embedding whatever the config says (T5Config
    # forces tie_word_embeddings; the config's value only decides whether decoder outputs are scaled)
    "t5": ("t5", True), "mt5": ("t5", True),
}
ENCODER_DECODER = ("t5",)  # families whose models have an encoder and a decoder stack (task seq2seq)
# Checkpoint tensors the loaded model does not hold, by model type: T5's LM head and per-stack embeddings are
# tied to ``shared`` (a flan-T5 checkpoint still stores its own lm_head.weight).
_T5_TIED = ("lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
TIED_ON_LOAD = {"t5": _T5_TIED, "mt5": _T5_TIED}
# Two-dimensional ``*.weight`` tensors that are embeddings, not linear layers LoRA could target.
NOT_LINEAR = ("relative_attention_bias",)


@dataclass(frozen=True)
class _Dims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie: bool
    context: int | None
    decoder_layers: int = 0  # encoder-decoder models: the decoder's blocks (``layers`` are the encoder's)
    dropout: float = 0.0  # dropout on hidden states in training (T5's dropout_rate, BERT's hidden_dropout_prob)
    attention_dropout: float = 0.0  # dropout on attention probabilities (BERT's attention_probs_dropout_prob)


def _dims(config: dict, model_type: str) -> _Dims:
    hidden = _get(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _get(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    vocab = _get(config, "vocab_size", "padded_vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        raise KeyError("hidden_size/num_hidden_layers/num_attention_heads/vocab_size")
    kv = _get(config, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads)
    head_dim = _get(config, "head_dim", "kv_channels", "d_kv", default=hidden // heads)
    inter = _get(config, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff", default=4 * hidden)
    if model_type == "qwen":  # Qwen (1)'s intermediate_size counts both halves: w1 and w2 are each half as wide
        inter //= 2
    tie = config.get("tie_word_embeddings", _FAMILIES.get(model_type, ("", True))[1])
    context = _get(config, "max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
    if _FAMILIES.get(model_type, ("",))[0] in ENCODER_DECODER:
        return _Dims(layers, hidden, heads, kv, head_dim, inter, vocab, True, context,
                     decoder_layers=_get(config, "num_decoder_layers", default=layers),
                     dropout=float(_get(config, "dropout_rate", default=0.1)))
    if _FAMILIES.get(model_type, ("",))[0] == "bert":
        return _Dims(layers, hidden, heads, kv, head_dim, inter, vocab, bool(tie), context,
                     dropout=float(_get(config, "hidden_dropout_prob", default=0.1)),
                     attention_dropout=float(_get(config, "attention_probs_dropout_prob", default=0.1)))
    return _Dims(layers, hidden, heads, kv, head_dim, inter, vocab, bool(tie), context)


def _decoder_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    """Llama and its relatives: q/k/v/o, gate/up/down, RMSNorm (no norm biases)."""
    H, L, q, kv, inter = d.hidden, d.layers, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate
    qkv_bias = True if model_type == "qwen2" else bool(config.get("attention_bias", False))
    o_bias = bool(config.get("attention_bias", False)) and model_type != "qwen2"
    mlp_bias = bool(config.get("mlp_bias", False))
    linears = (
        LinearLayer("self_attn.q_proj", H, q, L, qkv_bias),
        LinearLayer("self_attn.k_proj", H, kv, L, qkv_bias),
        LinearLayer("self_attn.v_proj", H, kv, L, qkv_bias),
        LinearLayer("self_attn.o_proj", q, H, L, o_bias),
        LinearLayer("mlp.gate_proj", H, inter, L, mlp_bias),
        LinearLayer("mlp.up_proj", H, inter, L, mlp_bias),
        LinearLayer("mlp.down_proj", inter, H, L, mlp_bias),
    )
    norms = (4 if model_type == "gemma2" else 2) * H + (2 * d.head_dim if model_type == "qwen3" else 0)
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, L * norms + H, 0, True)


def _phi3_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, q, kv, inter = d.hidden, d.layers, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate
    linears = (
        LinearLayer("self_attn.qkv_proj", H, q + 2 * kv, L, False),
        LinearLayer("self_attn.o_proj", q, H, L, False),
        LinearLayer("mlp.gate_up_proj", H, 2 * inter, L, False),
        LinearLayer("mlp.down_proj", inter, H, L, False),
    )
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, L * 2 * H + H, 0, True)


def _gpt2_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, inter = d.hidden, d.layers, d.intermediate
    linears = (
        LinearLayer("attn.c_attn", H, 3 * H, L, True),
        LinearLayer("attn.c_proj", H, H, L, True),
        LinearLayer("mlp.c_fc", H, inter, L, True),
        LinearLayer("mlp.c_proj", inter, H, L, True),
    )
    positions = (d.context or 1024) * H
    layer_norms = (2 * L + 1) * 2 * H  # ln_1, ln_2 per block, ln_f; weight and bias each
    return _Layout(linears, d.vocab * H + positions, 0 if d.tie else d.vocab * H, layer_norms,
                   (2 * L + 1) * H, False)


def _gpt_neox_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, inter = d.hidden, d.layers, d.intermediate
    bias = bool(config.get("attention_bias", True))
    linears = (
        LinearLayer("attention.query_key_value", H, 3 * H, L, bias),
        LinearLayer("attention.dense", H, H, L, bias),
        LinearLayer("mlp.dense_h_to_4h", H, inter, L, True),
        LinearLayer("mlp.dense_4h_to_h", inter, H, L, True),
    )
    norms = (2 * L + 1) * 2 * H
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, norms, (2 * L + 1) * H, False)


def _qwen_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    """Qwen (1), remote code (modeling_qwen.py): fused c_attn with a bias, SwiGLU as w1 * silu(w2), RMSNorm."""
    H, L, q, inter = d.hidden, d.layers, d.heads * d.head_dim, d.intermediate
    bias = not config.get("no_bias", True)
    linears = (
        LinearLayer("attn.c_attn", H, 3 * q, L, True),
        LinearLayer("attn.c_proj", H, q, L, bias),  # declared (hidden, projection): equal in every release
        LinearLayer("mlp.w1", H, inter, L, bias),
        LinearLayer("mlp.w2", H, inter, L, bias),
        LinearLayer("mlp.c_proj", inter, H, L, bias),
    )
    return _Layout(linears, d.vocab * H, 0 if d.tie else d.vocab * H, L * 2 * H + H, 0, True)


def _num_labels(config: dict) -> int:
    labels = config.get("id2label") or {}
    return len(labels) or int(config.get("num_labels", 2))


def _bert_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    H, L, inter = d.hidden, d.layers, d.intermediate
    arch = (config.get("architectures") or ["BertModel"])[0]
    linears = [
        LinearLayer("attention.self.query", H, H, L, True),
        LinearLayer("attention.self.key", H, H, L, True),
        LinearLayer("attention.self.value", H, H, L, True),
        LinearLayer("attention.output.dense", H, H, L, True),
        LinearLayer("intermediate.dense", H, inter, L, True),
        LinearLayer("output.dense", inter, H, L, True),
    ]
    embeddings = (d.vocab + (d.context or 512) + int(config.get("type_vocab_size", 2))) * H
    norms = (2 * L + 1) * 2 * H  # two LayerNorms per layer and the embeddings' one
    other, other_bias = norms, (2 * L + 1) * H
    if arch.endswith(("ForMaskedLM", "ForPreTraining", "LMHeadModel", "ForCausalLM")):
        linears.append(LinearLayer("cls.predictions.transform.dense", H, H, 1, True))
        other += 2 * H + d.vocab  # the transform's LayerNorm, the decoder's bias (its weight is tied)
        other_bias += H + d.vocab
    if not arch.endswith(("ForMaskedLM", "ForCausalLM", "LMHeadModel")):
        linears.append(LinearLayer("pooler.dense", H, H, 1, True))
    if arch.endswith("ForPreTraining"):
        other += 2 * H + 2  # next-sentence head
        other_bias += 2
    if arch.endswith("ForSequenceClassification"):
        n = _num_labels(config)
        other += n * H + n
        other_bias += n
    return _Layout(tuple(linears), embeddings, 0, other, other_bias, False)


def _t5_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    """T5 and mT5 (modeling_t5.py): bias-free q/k/v/o self-attention in both stacks, cross-attention (EncDecAttention)
    in the decoder's, a ReLU (wi) or gated (wi_0, wi_1) MLP, scale-only layer norms, and a relative position bias in
    each stack's first block. Paths as the weights name them after the block and layer numbers."""
    H, inter, inner = d.hidden, d.intermediate, d.heads * d.head_dim
    enc, dec = d.layers, d.decoder_layers
    both = enc + dec
    linears = [LinearLayer(f"SelfAttention.{p}", H, inner, both, False) for p in "qkv"]
    linears.append(LinearLayer("SelfAttention.o", inner, H, both, False))
    linears += [LinearLayer(f"EncDecAttention.{p}", H, inner, dec, False) for p in "qkv"]
    linears.append(LinearLayer("EncDecAttention.o", inner, H, dec, False))
    gated = str(config.get("feed_forward_proj", "relu")).startswith("gated-")
    ups = ("wi_0", "wi_1") if gated else ("wi",)
    linears += [LinearLayer(f"DenseReluDense.{p}", H, inter, both, False) for p in ups]
    linears.append(LinearLayer("DenseReluDense.wo", inter, H, both, False))
    norms = (2 * enc + 1 + 3 * dec + 1) * H  # a norm before each sublayer, and each stack's final one
    buckets = int(config.get("relative_attention_num_buckets", 32))
    return _Layout(tuple(linears), d.vocab * H, 0, norms + 2 * buckets * d.heads, 0, gated)


def _generic_layout(config: dict, model_type: str, d: _Dims) -> _Layout:
    """Unknown architecture: assume a gated MLP and untied head, so the guess errs high."""
    layout = _decoder_layout({}, "llama", d)
    return _Layout(layout.linears, d.vocab * d.hidden, d.vocab * d.hidden, layout.other, 0, True)


_LAYOUTS = {"decoder": _decoder_layout, "phi3": _phi3_layout, "gpt2": _gpt2_layout, "bert": _bert_layout,
            "gpt_neox": _gpt_neox_layout, "qwen": _qwen_layout, "t5": _t5_layout}


def _with_sequence_classifier(layout: _Layout, config: dict, d: _Dims) -> _Layout:
    """A decoder loaded for classification: ``score`` (no bias) replaces the LM head."""
    return replace(layout, lm_head=_num_labels(config) * d.hidden)


def config_layout(config: dict) -> tuple[_Layout, _Dims, bool]:
    """(layout, dims, known) from a config dict (nested ``text_config`` resolved by the caller)."""
    model_type = str(config.get("model_type", ""))
    d = _dims(config, model_type)
    family = _FAMILIES.get(model_type, (None,))[0]
    layout = _LAYOUTS.get(family, _generic_layout)(config, model_type, d)
    arch = (config.get("architectures") or [""])[0]
    if family in ("decoder", "phi3", "gpt_neox") and arch.endswith("ForSequenceClassification"):
        layout = _with_sequence_classifier(layout, config, d)
    return layout, d, family is not None


def config_parameter_count(config: dict) -> int:
    """Parameters of the model ``config`` describes (its ``architectures[0]`` class), from shapes alone."""
    return config_layout(text_config(config))[0].total


def text_config(config: dict) -> dict:
    """Multimodal configs keep the language model in ``text_config``."""
    text = config.get("text_config")
    if isinstance(text, dict) and text:
        merged = dict(text)
        merged.setdefault("architectures", config.get("architectures"))
        merged.setdefault("model_type", text.get("model_type", config.get("model_type")))
        for key in ("torch_dtype", "dtype", "tie_word_embeddings"):
            if key not in merged and key in config:
                merged[key] = config[key]
        return merged
    return config


# peft's defaults for IA3 where target_modules is left to it (peft.utils.constants), by model_type.
IA3_TARGETS = {
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen3": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "gpt_neox": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
    "t5": (("k", "v", "wo"), ("wo",)),
    "mt5": (("k", "v", "wo"), ("wo",)),
}
