"""What a forward pass holds, per token: the tensors a block saves for backward, a forward's transient working
set without gradients (a reference model scoring, generation), and the loss head's tiles or logits.

Decoder-only blocks are counted term by term (docs/fit.md); T5's encoder and decoder blocks by tables measured
with ``torch.autograd.graph.saved_tensors_hooks`` on T5 layers of varied shapes (exact for those shapes).
Pure Python: tuiwiz/plan/memory.py and task_costs.py add these up.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuiwiz.methods import METHODS
from tuiwiz.plan.fine_tune import Constants, Plan
from tuiwiz.plan.modelinfo import ModelInfo
from tuiwiz.tasks import TASKS

# Families whose blocks normalise with LayerNorm (saves its input; under autocast an fp32 copy) and whose MLP is one
# up projection with GELU; the others use RMSNorm written in Python (an fp32 copy of the input) and a gated MLP.
LAYER_NORM_FAMILIES = ("bert", "roberta", "gpt2", "gpt_neox")


def mask_bytes(plan: Plan, a: int) -> int:
    """A dropout's saved mask per element: CUDA's fused dropout keeps a bool mask; the CPU kernel multiplies by a
    noise tensor of the input's dtype."""
    return a if plan.device == "cpu" else 1


def layer_activation_bytes(model: ModelInfo, plan: Plan, a: int, r: int, c: Constants, *,
                           working_set: bool = False) -> float:
    """Bytes saved for backward per token in one transformer block (decoder or encoder-only).

    ``a``: activation dtype bytes (the autocast dtype); ``r``: the residual stream's. Autograd saves a linear
    layer's input only when its weight is trained (mm saves ``self`` only to compute the weight's gradient): under
    LoRA, IA3 and the prompt methods the frozen projections save nothing, so a block saves its norms' inputs,
    attention's q/k/v/output, the MLP's activation inputs and what the adapters save. Counted against
    ``torch.autograd.graph.saved_tensors_hooks`` on Llama 3.2 3B's and BERT-large's layer shapes (docs/fit.md).
    ``working_set``: a forward without gradients, whose linear layers hold their input beside their output whether
    their weights train or not.
    """
    out = a  # the MLP's intermediate outputs
    if plan.method == "qlora":
        # bitsandbytes' Linear4bit saves no input (its weight is frozen) and returns its input's dtype: an fp32
        # residual stream makes the MLP's gate, up and activation outputs fp32
        out, r = r, a
    H, q, kv, inter = model.hidden_size, model.q_dim, model.kv_dim, model.intermediate_size
    trained = plan.method == "full" or working_set  # base weights (and norm weights) with gradients
    layer_norm = model.model_type in LAYER_NORM_FAMILIES
    n_norms = 4 if model.model_type == "gemma2" else 2
    if layer_norm:  # native_layer_norm saves its input (fp32 under autocast), mean and rstd
        norms = n_norms * (4 * H + 8)
    else:  # RMSNorm casts to fp32 (saved by pow); a trained weight also saves the normalised input
        norms = n_norms * (4 + (r if trained else 0)) * H
    kv_saved = kv if plan.attn_implementation == "flash_attention_2" else q  # sdpa/eager repeat GQA heads
    # q, k, v and the output, which is also the o-projection's input: sdpa and flash return it in the layout the
    # o-projection reads, one tensor saved once (and a log-sum-exp per head, 4 bytes: left out). Eager keeps q, k, v
    # and its scores (eager_scores_bytes) and, when the o-projection trains, its input: counted as sdpa's, one
    # head-width tensor more than a frozen eager block holds
    attention = a * (2 * q + 2 * kv_saved)
    if plan.method == "prefix_tuning":  # the virtual tokens' keys and values join every sequence's
        attention += 2 * a * kv_saved * plan.num_virtual_tokens / plan.sequence_len
    mlp = (3 * out if model.gated_mlp else out) * inter  # gate, activation, up outputs; or the activation's input
    if trained:
        fused_qkv = any(layer.name in ("qkv_proj", "c_attn", "query_key_value") for layer in model.linear_layers)
        fused_mlp = any(layer.name == "gate_up_proj" for layer in model.linear_layers)
        attn_inputs = 1 if (r == a or fused_qkv) else 3  # autocast casts the residual once per projection
        mlp_inputs = 1 if (r == a or not model.gated_mlp or fused_mlp) else 2
        attention += a * attn_inputs * H  # the projections' input
        mlp += a * (mlp_inputs * H + inter)  # the up projections' input, the down projection's input
    if model.dropout > 0 and not plan.dropout_off:  # BERT's hidden dropout after attention and after the MLP
        mlp += 2 * mask_bytes(plan, a) * H
    extra = 0.0
    if METHODS[plan.method].low_rank:
        wrapped = [layer for layer in model.targeted_layers(plan.lora_targets) if layer.count == model.num_layers]
        extra = sum(lora_input_bytes(plan, a, layer.in_features) for layer in wrapped)
        if not trained:  # not in a no-grad forward's working set, whose inputs are counted above
            extra += lora_kept_input_bytes(plan, a, wrapped)
    elif plan.method == "ia3":
        extra = ia3_bytes(model, plan, a)
    return (norms + attention + mlp + extra) * cpu_scale(plan, c)


def cpu_scale(plan: Plan, c: Constants) -> float:
    """CPU plans: what a block saves times the factor fitted on whole-process peaks (bench/calibrate.py: the
    allocator's slack and the CPU kernels' scratch grow with it); a GPU plan counts what autograd saves and nothing
    more (docs/fit.md: the backward's peak)."""
    return c.activation_scale if plan.device == "cpu" else 1.0


def ia3_bytes(model: ModelInfo, plan: Plan, a: int) -> float:
    """peft's IA3 casts a feed-forward layer's input to its fp32 vector's dtype and multiplies it (the product saves
    that fp32 copy); it multiplies the other targets' outputs as they are (saved in the activation dtype)."""
    from tuiwiz.plan.architectures import IA3_TARGETS

    default = IA3_TARGETS.get(model.model_type) or ((), ())
    targets = plan.ia3_targets or default[0]
    feedforward = plan.ia3_feedforward or default[1]
    total = 0.0
    for layer in model.targeted_layers(tuple(targets)):
        if layer.count != model.num_layers:
            continue
        ff = any(layer.matches(t) for t in feedforward)
        total += 4 * layer.in_features if ff else a * layer.out_features
    return total


def lora_dropout_on(plan: Plan) -> bool:
    """LoRA's dropout runs (a p of 0, or a trainer's disable_dropout, returns the input itself)."""
    return plan.lora_dropout > 0 and not plan.dropout_off


def lora_input_bytes(plan: Plan, a: int, in_features: int) -> float:
    """Per token, what one LoRA-wrapped layer saves: its dropout's output and mask and A's output (without dropout,
    what A saves of the layer's input: lora_kept_input_bytes)."""
    rank = plan.adalora_init_r if plan.method == "adalora" else plan.lora_r
    dropout = lora_dropout_on(plan)
    if not plan.autocast and a != 4:
        # a 16-bit model trained without autocast: peft casts each wrapped layer's input to its fp32 adapter's
        # dtype (_cast_input_dtype), and lora_A saves that fp32 copy, dropout or not
        return (4 + (mask_bytes(plan, 4) if dropout else 0)) * in_features + 4 * rank
    return (a + mask_bytes(plan, a) if dropout else 0) * in_features + a * rank


# Output projections: their input is attention's output, which a block's attention term counts already
ATTENTION_OUTPUTS = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "attention.output.dense",
                     "SelfAttention.o", "EncDecAttention.o")


def lora_kept_input_bytes(plan: Plan, a: int, wrapped) -> float:
    """Per token and block, the inputs LoRA's A saves for its weight's gradient when dropout is off (TRL's
    disable_dropout for DPO, KTO, ORPO, SimPO and reward models; or lora_dropout 0) and the frozen base layer saves
    none. Under 16-bit autocast each wrapped layer's own 16-bit cast of peft's fp32 cast; in fp32 the tensor itself,
    once per tensor read (q, k and v read one normalised hidden state, gate and up another, down the MLP's
    product), none for an output projection (attention's output)."""
    if lora_dropout_on(plan) or (not plan.autocast and a != 4):  # dropout's copies, or fp32 casts: lora_input_bytes
        return 0.0
    if a != 4:
        return float(a * sum(layer.in_features for layer in wrapped))
    inputs = {(layer.path.rsplit(".", 1)[0], layer.in_features) for layer in wrapped
              if layer.path not in ATTENTION_OUTPUTS}
    return float(a * sum(width for _, width in inputs))


# Architectures whose transformers implementation has no SDPA path: "auto" means eager for them.
EAGER_ONLY = ("gemma2",)


def attention_implementation(model: ModelInfo, plan: Plan) -> str:
    if plan.attn_implementation == "sdpa" and model.model_type in EAGER_ONLY:
        return "eager"
    return plan.attn_implementation


def eager_scores_bytes(model: ModelInfo, plan: Plan, a: int, seq: int, c: Constants) -> float:
    """Per token per layer: eager attention keeps the softmax (fp32) and its 16-bit cast, heads x keys (on the CPU
    times the fitted scale, as the rest of the block)."""
    if attention_implementation(model, plan) != "eager":
        return 0
    # the softmax's fp32 output; with attention dropout its mask and output (saved by the product with v), else the
    # 16-bit cast the product saves
    dropout = model.attention_dropout > 0 and not plan.dropout_off
    per_score = 4 + (mask_bytes(plan, a) + a if dropout else (a if a != 4 else 0))
    if plan.softmax_saves_input:  # the softmax's fp32 input too
        per_score += 4
    return per_score * model.num_heads * seq * cpu_scale(plan, c)


def head_bytes(model: ModelInfo, a: int, r: int) -> int:
    """Per token outside the blocks: the embeddings' output, the final norm, the LM head's input."""
    return (4 + r + 2 * a) * model.hidden_size


def head_tile(model: ModelInfo, plan: Plan, tokens: int, c: Constants) -> tuple[int, int]:
    """The fused head's tile over ``tokens`` scored positions: (positions, vocabulary columns). On the CPU the
    runner's (fine_tune.CPU_HEAD_TILE_TOKENS positions), elsewhere TRL's own."""
    chunk = c.cpu_fused_token_chunk if plan.device == "cpu" else c.fused_token_chunk
    return min(tokens, chunk), min(model.vocab_size, c.fused_vocab_chunk)


def logits_bytes(model: ModelInfo, plan: Plan, tokens: int, a: int, wb: int, lm_head_trained: bool,
                 c: Constants) -> int:
    """The loss head at its peak over ``tokens`` scored positions, backward included."""
    if TASKS[plan.task].model == "sequence_score":
        return 0  # a score head (hidden x labels): no vocabulary-wide logits
    V, H = model.vocab_size, model.hidden_size
    if not plan.fused_loss:
        # logits (a), their fp32 upcast and log-softmax in forward; in backward log-softmax, its incoming and
        # outgoing gradients (fp32 each): the larger of the two moments. Trainer drops the outputs before backward;
        # a loop that keeps them holds the logits beside the backward's three fp32 copies.
        old_torch = 4 if plan.softmax_saves_input else 0  # log-softmax keeps its fp32 input too
        return tokens * V * (max(a + 8, 12 + (a if plan.keep_outputs else 0)) + old_torch)
    chunk_tokens, chunk_vocab = head_tile(model, plan, tokens, c)
    if plan.device == "cpu":
        tile = chunk_tokens * chunk_vocab * 4 * c.cpu_tile_copies
    else:
        tile = chunk_tokens * chunk_vocab * a
    grads = tokens * H * 4 + (V * H * 4 if lm_head_trained else 0)  # fp32 accumulators of the backward
    weight_cast = chunk_vocab * H * a if wb != a else 0
    return int(tile + grads + weight_cast)


def kept_outputs_bytes(model: ModelInfo, plan: Plan, tokens: int, scored: int, a: int) -> tuple[int, int]:
    """What a training loop that holds the model's outputs through backward (``Plan.keep_outputs``) keeps beside the
    saved tensors: (the logits over ``scored`` positions, the key/value cache over ``tokens``). transformers fills a
    DynamicCache in training whenever ``use_cache`` is on (the configs' default; checkpointing turns it off): every
    layer's keys and values as the projections return them, before GQA repeats them, prefix tokens included."""
    if not plan.keep_outputs:
        return 0, 0
    logits = 0 if plan.fused_loss or TASKS[plan.task].model == "sequence_score" else scored * model.vocab_size * a
    cache = 0
    if not plan.gradient_checkpointing:
        virtual = plan.num_virtual_tokens / plan.sequence_len if plan.method == "prefix_tuning" else 0
        cache = int(tokens * (1 + virtual) * 2 * model.kv_dim * a * model.num_layers)
    return logits, cache


def forward_tile_bytes(model: ModelInfo, plan: Plan, tokens: int, a: int, c: Constants) -> int:
    """The fused head's forward alone (no backward follows: a reference model's log-probabilities)."""
    chunk_tokens, chunk_vocab = head_tile(model, plan, tokens, c)
    if plan.device == "cpu":
        return int(chunk_tokens * chunk_vocab * 4 * c.cpu_forward_tile_copies)
    return chunk_tokens * chunk_vocab * a  # the Triton kernel folds each tile in place


def no_grad_forward_bytes(model: ModelInfo, plan: Plan, tokens: int, a: int, r: int, c: Constants, *,
                          scored: bool = True) -> int:
    """A forward under torch.no_grad over ``tokens``: nothing is saved, so the peak is one block's working set
    (bounded by what it would save) and, where every position is ``scored``, the loss head's forward tile."""
    layer = (layer_activation_bytes(model, plan, a, r, c, working_set=True)
             + eager_scores_bytes(model, plan, a, plan.sequence_len, c))
    tile = forward_tile_bytes(model, plan, tokens, a, c) if scored else 0
    return int(tokens * (layer + head_bytes(model, a, r)) + tile)


# ---------------------------------------------------------------- T5 (seq2seq)


@dataclass(frozen=True)
class _T5Layer:
    """Bytes one T5 block saves for backward per token: coefficients of the shapes they multiply."""

    hidden: float  # x d_model
    inner: float  # x heads * d_kv
    ff: float  # x d_ff, ReLU MLP (wi)
    ff_gated: float  # x d_ff, gated-GELU MLP (wi_0, wi_1: gelu_new keeps four d_ff tensors)
    self_scores: float  # x heads x the keys it attends (the position-bias mask; softmax and dropout under dropout)
    heads: float = 0.0  # x heads (SDPA's log-sum-exp)
    cross_scores: float = 0.0  # decoder: x heads x encoder tokens
    encoder_inner: float = 0.0  # decoder: per encoder token, cross-attention's keys and values


# Counted with saved_tensors_hooks on T5ForConditionalGeneration (SDPA, transformers 5.25, torch 2.13 CPU) for
# d_model 64/128, d_kv 16/32, d_ff 256/512, 32/64 input and 16/32 target tokens, micro-batch 1/2: a least-squares
# fit with no residual. Keyed by (activation bytes, dropout on). 16-bit: weights loaded in bf16 under autocast.
# Every weight trained (full fine-tuning): frozen_t5_saves is what a frozen base keeps less.
T5_ENCODER_LAYER = {
    (4, False): _T5Layer(hidden=24, inner=16, ff=4, ff_gated=28, self_scores=4, heads=2),
    (4, True): _T5Layer(hidden=32, inner=16, ff=12, ff_gated=32, self_scores=12, heads=2),
    (2, False): _T5Layer(hidden=20, inner=14, ff=2, ff_gated=14, self_scores=4, heads=2),
    (2, True): _T5Layer(hidden=24, inner=14, ff=6, ff_gated=16, self_scores=12, heads=2),
}
T5_DECODER_LAYER = {
    (4, False): _T5Layer(hidden=36, inner=24, ff=4, ff_gated=28, self_scores=4, heads=7, cross_scores=4,
                         encoder_inner=8),
    (4, True): _T5Layer(hidden=48, inner=24, ff=12, ff_gated=32, self_scores=12, heads=3, cross_scores=12,
                        encoder_inner=8),
    (2, False): _T5Layer(hidden=30, inner=18, ff=2, ff_gated=14, self_scores=4, heads=7, cross_scores=2,
                         encoder_inner=4),
    (2, True): _T5Layer(hidden=36, inner=20, ff=6, ff_gated=16, self_scores=12, heads=3, cross_scores=12,
                        encoder_inner=8),
}


@dataclass(frozen=True)
class EncoderDecoderActivations:
    """Per encoder token and per decoder token, what a T5 step saves for backward (the blocks, embeddings and
    norms), and the LM head's logits over the decoder tokens."""

    per_input_token: float
    per_target_token: float
    logits_per_target_token: float


def frozen_t5_saves(model: ModelInfo, a: int, dropout: bool, *, norms: int, attentions: int) -> int:
    """Per token, what a T5 block saves only because its weights train (the tables count full fine-tuning): each
    norm's normalised input (for its weight), the input of q/k/v (one tensor), of wi (one) and of wo (the dropout's
    output or the gated product; ReLU's output, which ReLU keeps, without dropout), and o's input (attention's output;
    without dropout SDPA's, which SDPA keeps). The other differences of a frozen block without dropout (the position
    bias has no gradient, so SDPA keeps less) are left counted: the high side. With dropout, equal to what
    saved_tensors_hooks sees a frozen block keep less (fp32 and bf16; tests/test_memory_tasks.py checks fp32 LoRA)."""
    H, inner, ff = model.hidden_size, model.q_dim, model.intermediate_size
    wo = ff if (dropout or model.gated_mlp) else 0
    o = inner if dropout else 0
    return a * ((norms + attentions + 1) * H + attentions * o + wo)


def encoder_decoder_bytes(model: ModelInfo, plan: Plan, a: int, r: int) -> EncoderDecoderActivations:
    """T5: encoder blocks over the input, decoder blocks (self-attention, cross-attention over the input, MLP)
    over the target; the decoder's keys and values of the encoder output count per input token."""
    H, inner, ff, heads = model.hidden_size, model.q_dim, model.intermediate_size, model.num_heads
    Ti, Tt = plan.seq_len, plan.decoder_len
    dropout = model.dropout > 0
    enc, dec = T5_ENCODER_LAYER[(a, dropout)], T5_DECODER_LAYER[(a, dropout)]

    def block(t: _T5Layer, keys: int) -> float:
        mlp = t.ff_gated if model.gated_mlp else t.ff
        return t.hidden * H + t.inner * inner + mlp * ff + t.self_scores * heads * keys + t.heads * heads

    encoder = block(enc, Ti)
    decoder = block(dec, Tt) + dec.cross_scores * heads * Ti
    cross_kv = dec.encoder_inner * inner  # per input token, per decoder block
    if plan.method != "full":  # the tables count trained weights; frozen ones keep neither input nor normalised input
        encoder -= frozen_t5_saves(model, a, dropout, norms=2, attentions=1)
        decoder -= frozen_t5_saves(model, a, dropout, norms=3, attentions=2)
    if r != a:  # fp32 weights under 16-bit autocast (full fine-tuning on a GPU): fp32 norms, a cast per linear input
        ups = 2 if model.gated_mlp else 1
        encoder += (r - a) * 2 * H + a * (3 + ups) * H
        decoder += (r - a) * 3 * H + a * (4 + ups) * H
        cross_kv += 2 * a * H
    targets = model.targeted_layers(plan.lora_targets) if METHODS[plan.method].low_rank else ()
    for layer in targets:  # LoRA's saved inputs, by where each wrapped layer runs
        extra = lora_input_bytes(plan, a, layer.in_features)
        if layer.path.startswith("EncDecAttention."):
            if layer.name in ("k", "v"):
                cross_kv += extra
            else:
                decoder += extra
        else:  # SelfAttention and DenseReluDense run in every block of both stacks
            encoder += extra
            decoder += extra
    if plan.gradient_checkpointing:  # each block keeps its input; one block is recomputed at a time
        per_input = model.num_layers * r * H + 2 * encoder + model.num_decoder_layers * cross_kv
        per_target = model.num_decoder_layers * r * H + 2 * decoder
    else:
        # every block's saved tensors and nothing more: a step of the 4 + 4-layer T5 in tests/test_memory_tasks.py
        # peaks at what its blocks save (the first block's gradients replace the loss's, no block's are added)
        per_input = model.num_layers * encoder + model.num_decoder_layers * cross_kv
        per_target = model.num_decoder_layers * decoder
    # the LM head's logits are not upcast before CrossEntropyLoss (T5ForConditionalGeneration.forward): at the
    # loss's backward the saved log-softmax, its incoming and its outgoing gradient
    return EncoderDecoderActivations(per_input + head_bytes(model, a, r), per_target + head_bytes(model, a, r),
                                     3 * a * model.vocab_size)
