"""The memory estimate: trainable counts against peft, byte terms against real tensors, the calibration file."""

import dataclasses
import json
from pathlib import Path

import pytest

from tuiwiz.errors import UserError
from tuiwiz.plan.activations import eager_scores_bytes, head_bytes, kept_outputs_bytes, layer_activation_bytes
from tuiwiz.plan.memory import CONSTANTS, Plan, estimate, trainable_parameters
from tuiwiz.plan.modelinfo import model_from_config

from .support.configs import load_config, tiny, torch_count, torch_model

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "bench" / "results" / "calibration-cpu.json"
ARCHS = ["llama3-8b", "qwen2.5-0.5b", "qwen3-0.6b", "gemma2-2b", "phi3-mini-4k", "gpt2", "pythia-410m"]


def peft_trainable(config: dict, peft_config) -> int:
    import peft

    model = peft.get_peft_model(torch_model(config, "cpu"), peft_config)
    return model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("name", ARCHS)
def test_lora_count_matches_peft(name):
    import peft

    config = tiny(load_config(name))
    info = model_from_config(config)
    for r, targets, dora in ((8, None, False), (4, ("v_proj", "c_attn", "query_key_value", "qkv_proj"), False),
                             (2, None, True)):
        present = tuple(t for t in targets or () if t in info.linear_modules) or None
        if targets and not present:
            continue
        expected = peft_trainable(config, peft.LoraConfig(task_type="CAUSAL_LM", r=r, use_dora=dora,
                                                          target_modules=list(present) if present else "all-linear"))
        plan = Plan(method="lora", lora_r=r, lora_targets=present, use_dora=dora)
        assert trainable_parameters(info, plan) == expected, (name, r, present, dora)


def test_lora_on_the_real_llama3_8b_shape_meta_device():
    import peft

    config = load_config("llama3-8b")
    expected = peft.get_peft_model(torch_model(config), peft.LoraConfig(task_type="CAUSAL_LM", r=16,
                                                                         target_modules="all-linear"))
    plan = Plan(method="qlora", lora_r=16)
    assert trainable_parameters(model_from_config(config), plan) == expected.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("name", ["llama3-8b", "qwen2.5-0.5b", "gpt2", "gemma2-2b"])
def test_other_peft_methods_match_peft(name):
    import peft

    config = tiny(load_config(name))
    info = model_from_config(config)
    cases = [
        (Plan(method="adalora", adalora_init_r=6),
         peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=6, target_r=2, target_modules="all-linear", total_step=10)),
        (Plan(method="ia3"), peft.IA3Config(task_type="CAUSAL_LM")),
        (Plan(method="prompt_tuning", num_virtual_tokens=7),
         peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7)),
        (Plan(method="prefix_tuning", num_virtual_tokens=5),
         peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        (Plan(method="prefix_tuning", num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=16),
         peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True,
                                 encoder_hidden_size=16)),
        (Plan(method="p_tuning", num_virtual_tokens=6, encoder_hidden_size=32),
         peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, encoder_hidden_size=32)),
    ]
    for plan, peft_config in cases:
        assert trainable_parameters(info, plan) == peft_trainable(config, peft_config), (name, plan.method)


@pytest.mark.parametrize("name", ["gpt2", "qwen2.5-0.5b", "bert-base-uncased"])
def test_full_and_bitfit_counts(name):
    config = tiny(load_config(name))
    model, info = torch_model(config, "cpu"), model_from_config(config)
    assert trainable_parameters(info, Plan(method="full")) == torch_count(model)
    # the runner's BitFit: every parameter whose name ends in .bias
    assert trainable_parameters(info, Plan(method="bitfit")) == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))


def test_unknown_lora_target_is_a_user_error():
    info = model_from_config(load_config("llama3-8b"))
    with pytest.raises(UserError, match="no linear layer"):
        trainable_parameters(info, Plan(method="lora", lora_targets=("c_attn",)))
    with pytest.raises(UserError, match="IA3"):
        trainable_parameters(model_from_config(load_config("phi3-mini-4k")), Plan(method="ia3"))


def _step(model, params, optimizer_cls, **kw):
    import torch

    optimizer = optimizer_cls(params, **kw)
    ids = torch.randint(0, 320, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = sum(p.grad.nbytes for p in params if p.grad is not None)
    optimizer.step()
    states = sum(t.nbytes for s in optimizer.state.values() for t in s.values() if hasattr(t, "nbytes")
                 and t.dim() > 0)
    return grads, states


def test_gradient_and_adamw_bytes_full_fp32():
    import torch

    config = tiny(load_config("llama3-8b"))
    model = torch_model(config, "cpu")
    grads, states = _step(model, list(model.parameters()), torch.optim.AdamW)
    est = estimate(model_from_config(config), Plan(method="full", device="cpu", precision="fp32"))
    assert est.per_device.gradients == grads
    assert est.per_device.optimizer == states
    assert est.per_device.weights == sum(p.nbytes for p in model.parameters())


def test_gradient_and_adamw_bytes_lora():
    import peft
    import torch

    config = tiny(load_config("qwen2.5-0.5b"))
    model = peft.get_peft_model(torch_model(config, "cpu").to(torch.bfloat16),
                                peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules="all-linear"))
    params = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in params} == {torch.float32}  # peft upcasts adapters: the estimate's 4 bytes
    grads, states = _step(model, params, torch.optim.AdamW)
    est = estimate(model_from_config(config), Plan(method="lora", lora_r=8, precision="bf16"))
    b = est.per_device
    assert (b.gradients, b.optimizer, b.adapter) == (grads, states, sum(p.nbytes for p in params))
    assert b.weights == sum(p.nbytes for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("upcast", [False, True])
def test_qlora_weight_bytes_match_bitsandbytes(tmp_path, upcast):
    """Load a tiny Llama in NF4 with double quantization (bitsandbytes works on the CPU) from bf16 weights, with and
    without peft's fp32 upcast of the rest (method.upcast_non_quantized), and weigh it."""
    import peft
    import torch
    import transformers

    config = tiny(load_config("llama3-8b"))
    config.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=64)
    torch_model(config, "cpu").save_pretrained(tmp_path)
    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant,
                                                              dtype=torch.bfloat16)
    if upcast:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    measured = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            measured += param.nbytes
            state = getattr(param, "quant_state", None)
            if state is not None:
                measured += state.absmax.nbytes + state.state2.absmax.nbytes + state.state2.code.nbytes
    est = estimate(model_from_config(config), Plan(method="qlora", qlora_bits=4, double_quant=True,
                                                   kbit_upcast=upcast))
    assert est.per_device.weights == pytest.approx(measured, rel=0.02)


LENGTHS = (512, 2048, 8192, 16384, 28672, 32768)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_qlora_is_never_heavier_than_lora_but_for_the_fp32_upcast(checkpointing):
    """Nothing 4-bit costs more than 16-bit; what can make QLoRA heavier is peft's fp32 upcast, which the runner
    applies with method.upcast_non_quantized (prepare_model_for_kbit_training), and the estimate then says so."""
    info = model_from_config(load_config("llama3-8b"))
    H, inter, layers = info.hidden_size, info.intermediate_size, info.num_layers
    for seq in LENGTHS:
        same = dict(seq_len=seq, gradient_checkpointing=checkpointing, lora_targets=info.linear_modules,
                    optimizer="paged_adamw_8bit")
        lora = estimate(info, Plan(method="lora", **same))
        plain = estimate(info, Plan(method="qlora", **same))  # the runner's default: no upcast
        assert plain.total <= lora.total and plain.per_device.activations == lora.per_device.activations
        qlora = estimate(info, Plan(method="qlora", kbit_upcast=True, **same))
        q, p = qlora.per_device, plain.per_device
        # the upcast: embeddings, norms and head in fp32; the residual stream (each checkpointed layer input, the
        # head's input) and the MLP's three intermediate outputs in fp32; the head cast to 16 bits for the loss
        assert q.weights - p.weights == 2 * (info.num_parameters - info.linear_weight_parameters)
        saved = seq * ((layers * 2 * H if checkpointing else layers * 3 * 2 * inter) + 2 * H)
        # beside what is saved, the larger of the loss head's peak and one block's backward (with the block
        # recomputed under checkpointing), whose MLP outputs the upcast makes fp32 too
        held = 2 if checkpointing else 1
        block = layer_activation_bytes(info, Plan(method="lora", **same), 2, 2, CONSTANTS)
        p_peak = max(p.logits, seq * held * block)
        q_peak = max(q.logits, seq * held * (block + 3 * 2 * inter))
        assert (q.activations + q.logits) - (p.activations + p.logits) == pytest.approx(saved + q_peak - p_peak, abs=4)
        assert q.logits - p.logits == 32768 * H * 2
        needs_more = [n for n in qlora.notes if "QLoRA needs more than LoRA" in n]
        assert bool(needs_more) == (qlora.total > lora.total), seq
    short = dict(seq_len=512, gradient_checkpointing=checkpointing, lora_targets=info.linear_modules)
    assert estimate(info, Plan(method="qlora", kbit_upcast=True, **short)).total < \
        estimate(info, Plan(method="lora", **short)).total


def test_qlora_at_28k_tokens_on_an_80gb_card_says_why_it_needs_more_than_lora():
    """Issue 15's case: Llama 3 8B, micro-batch 1, 28,672 tokens, checkpointing, bf16 (an H100), with the upcast;
    without it (the default) QLoRA needs less than LoRA."""
    info = model_from_config(load_config("llama3-8b"))
    same = dict(seq_len=28672, gradient_checkpointing=True, lora_targets=info.linear_modules, precision="bf16")
    lora = estimate(info, Plan(method="lora", **same)).total
    qlora = estimate(info, Plan(method="qlora", optimizer="paged_adamw_8bit", kbit_upcast=True, **same))
    assert lora < qlora.total < 80 * 10**9 * 0.92
    assert any(n.startswith("at 28,672 tokens QLoRA needs more than LoRA") for n in qlora.notes)
    plain = estimate(info, Plan(method="qlora", optimizer="paged_adamw_8bit", **same))
    assert plain.total < lora and not any("needs more than LoRA" in n for n in plain.notes)


def _saved_per_token(folder: Path, method: str, seq: int, upcast: bool = True):
    """One middle block's tensors saved for backward, bytes per token, with the model wrapped as the runner wraps
    it (bf16 weights; QLoRA: NF4 and prepare_model_for_kbit_training) under bf16 autocast. On the CPU: the dtypes
    follow the same rules as on a GPU. Returns (the block's input dtype, bytes per token)."""
    import peft
    import torch
    import transformers

    kwargs: dict = {"dtype": torch.bfloat16}
    if method == "qlora":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if method == "qlora" and upcast:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_dropout=0.05,
                                                       target_modules="all-linear"))
    ids = torch.randint(0, model.config.vocab_size, (1, seq))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtype, saved = _saved_in_block(model, model.get_base_model().model.layers[1], input_ids=ids, labels=ids)
    return dtype, saved / seq


def _saved_in_block(model, block, **inputs):
    """A training forward of ``model`` on ``inputs``: the dtype of ``block``'s input and the bytes of the tensors
    the block saves for backward (weights left out, a storage counted once)."""
    import torch

    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    state: dict = {"inside": False}
    saved: dict[int, int] = {}

    def enter(module, args, kwargs):
        state.update(inside=True, dtype=(args[0] if args else kwargs["hidden_states"]).dtype)

    def leave(*_):
        state["inside"] = False

    def pack(t):
        storage = t.untyped_storage()
        if state["inside"] and storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    block.register_forward_pre_hook(enter, with_kwargs=True)
    block.register_forward_hook(leave)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return state["dtype"], sum(saved.values())


def test_qlora_fp32_activations_match_what_torch_saves(tmp_path):
    """Measured: the fp32 upcast makes QLoRA's blocks take fp32 inputs (what checkpointing keeps per layer), and
    its MLP save three fp32 intermediates where LoRA saves 16-bit ones; without the upcast the blocks match LoRA."""
    import torch

    config = tiny(load_config("llama3-8b"))
    config.update(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=64, num_hidden_layers=3)
    torch_model(config, "cpu").save_pretrained(tmp_path)
    seq = 128
    lora_input, lora = _saved_per_token(tmp_path, "lora", seq)
    qlora_input, qlora = _saved_per_token(tmp_path, "qlora", seq)
    _, plain = _saved_per_token(tmp_path, "qlora", seq, upcast=False)
    assert (lora_input, qlora_input) == (torch.bfloat16, torch.float32)
    assert plain == lora
    info = model_from_config(config)
    same = dict(seq_len=seq, lora_targets=info.linear_modules)
    per_block = (layer_activation_bytes(info, Plan(method="qlora", **same), 2, 4, CONSTANTS)
                 - layer_activation_bytes(info, Plan(method="lora", **same), 2, 2, CONSTANTS))
    # the rotary cos/sin are fp32 too: 2 x head_dim x 2 bytes more per token, left out of the estimate
    assert qlora - lora == pytest.approx(per_block + 4 * info.head_dim, rel=0.01)


LLAMA_SMALL = dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                   num_hidden_layers=3)


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt_tuning", "prefix_tuning"])
def test_block_counts_match_what_torch_saves_in_bf16_without_autocast(method):
    """peft's method comparison's setting (bench/published/points.json): bf16 weights, no autocast, peft's adapters in
    fp32. A middle block's saved tensors against the per-token count the estimate multiplies: frozen projections save
    no input, the attention's output is the o-projection's input (saved once), LoRA's A keeps an fp32 copy of its
    input, IA3 an fp32 copy of the down projection's input and the k and v outputs as they are, prefix tuning's
    virtual keys and values join every sequence's. What is left out (the padding mask, a log-sum-exp per head, the
    rotary tables shared by the batch) is under 1.5% here."""
    import peft
    import torch

    config = {**tiny(load_config("llama3-8b")), **LLAMA_SMALL}
    model = torch_model(config, "cpu").to(torch.bfloat16)
    info = model_from_config(config)
    seq, virtual = 32, 8
    plan = Plan(method=method, precision="bf16", weights_dtype="bfloat16", autocast=False, seq_len=seq,
                num_virtual_tokens=virtual, lora_r=8, lora_targets=("q_proj", "v_proj"), lora_dropout=0.0)
    peft_config = {"lora": peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"],
                                           lora_dropout=0.0),
                   "ia3": peft.IA3Config(task_type="CAUSAL_LM"),
                   "prompt_tuning": peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual),
                   "prefix_tuning": peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual)}
    if method != "full":
        model = peft.get_peft_model(model, peft_config[method])
    base = model.get_base_model() if method != "full" else model
    ids = torch.randint(0, config["vocab_size"], (4, seq))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # a padded row, as in a batch of unequal lengths
    _, saved = _saved_in_block(model, base.model.layers[1], input_ids=ids, attention_mask=mask, labels=ids)
    tokens = 4 * (seq + (virtual if method == "prompt_tuning" else 0))  # the positions the blocks process
    counted = layer_activation_bytes(info, plan, 2, 2, CONSTANTS)
    assert saved / tokens == pytest.approx(counted, rel=0.015), (method, saved / tokens, counted)


def test_bert_block_counts_match_what_torch_saves_on_the_cpu():
    """LayerNorm, GELU, eager attention with dropout (the CPU's dropout keeps a noise tensor of its input's dtype),
    fp32: the count before the CPU's fitted activation_scale."""
    import torch

    config = {**tiny(load_config("bert-base-uncased")), "hidden_size": 128, "intermediate_size": 512}
    info = model_from_config(config)
    seq = 48
    plan = Plan(method="full", device="cpu", precision="fp32", task="classification", attn_implementation="eager",
                seq_len=seq)
    torch.manual_seed(0)
    model = torch_model({**config, "attn_implementation": "eager"}, "cpu")
    ids = torch.randint(0, config["vocab_size"], (2, seq))
    _, saved = _saved_in_block(model, model.bert.encoder.layer[1], input_ids=ids)
    unscaled = dataclasses.replace(CONSTANTS, activation_scale=1.0)
    counted = layer_activation_bytes(info, plan, 4, 4, unscaled) + eager_scores_bytes(info, plan, 4, seq, unscaled)
    assert saved / (2 * seq) == pytest.approx(counted, rel=0.01)


def test_a_gpu_step_peaks_at_its_larger_moment_a_cpu_step_as_fitted():
    """On a GPU the estimate counts what autograd saves and adds the larger of the loss head's peak and one block's
    backward (its gradients in flight, bounded by what it saved); the CPU keeps the form its constants were fitted
    with: one block more, every block times activation_scale, added to the loss head's peak."""
    info = model_from_config(load_config("llama3-8b"))
    L = info.num_layers
    for fused, seq in ((False, 1024), (True, 4096)):
        plan = Plan(method="lora", seq_len=seq, fused_loss=fused)
        b = estimate(info, plan).per_device
        block = layer_activation_bytes(info, plan, 2, 2, CONSTANTS)
        saved = seq * (L * block + head_bytes(info, 2, 2))
        assert b.activations + b.logits == pytest.approx(saved + max(b.logits, seq * block), abs=L)
        # the unfused loss's logits outweigh a block: nothing beyond what is saved; the fused head's tile does not
        assert (b.activations == pytest.approx(saved, abs=L)) == (not fused)
        assert b.overhead == int(CONSTANTS.cuda_allocator_fraction * b.peak_dynamic)  # weights are not slack
    cpu = Plan(method="lora", device="cpu", precision="fp32", seq_len=256)
    b = estimate(info, cpu).per_device
    block = layer_activation_bytes(info, cpu, 4, 4, CONSTANTS)
    unscaled = layer_activation_bytes(info, cpu, 4, 4, dataclasses.replace(CONSTANTS, activation_scale=1.0))
    assert block > unscaled  # the fitted scale applies on the CPU only
    assert b.activations == pytest.approx(256 * ((L + 1) * block + head_bytes(info, 4, 4)), abs=L)


def test_a_loop_that_keeps_the_outputs_keeps_the_key_value_cache():
    """transformers fills a DynamicCache in a training forward while use_cache is on (checkpointing turns it off); a
    loop holding the outputs through backward (peft's method comparison) holds every layer's keys and values."""
    import torch

    config = {**tiny(load_config("llama3-8b")), **LLAMA_SMALL}
    model = torch_model(config, "cpu").to(torch.bfloat16)
    model.train()
    ids = torch.randint(0, config["vocab_size"], (2, 24))
    cache = model(input_ids=ids, labels=ids).cache
    held = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    info = model_from_config(config)
    plan = Plan(method="lora", seq_len=24, keep_outputs=True, fused_loss=False)
    logits, kept = kept_outputs_bytes(info, plan, 48, 46, 2)
    assert kept == held and logits == 46 * info.vocab_size * 2
    model.gradient_checkpointing_enable()
    assert model(input_ids=ids, labels=ids).cache is None
    assert kept_outputs_bytes(info, dataclasses.replace(plan, gradient_checkpointing=True), 48, 46, 2)[1] == 0


def test_more_gpus_less_memory_with_zero():
    info = model_from_config(load_config("llama3-8b"))
    plan = Plan(method="full", seq_len=2048, gradient_checkpointing=True)
    single = estimate(info, plan).total
    zero2 = [estimate(info, dataclasses.replace(plan, strategy="zero2"), n).total for n in (2, 4, 8)]
    zero3 = [estimate(info, dataclasses.replace(plan, strategy="zero3"), n).total for n in (2, 4, 8)]
    assert single > zero2[0] > zero2[1] > zero2[2]
    assert zero2[0] > zero3[0] and zero3[0] > zero3[1] > zero3[2]
    offload = estimate(info, dataclasses.replace(plan, strategy="zero3_offload_optimizer"), 8)
    assert offload.total < zero3[2] and offload.cpu_ram > 16 * info.num_parameters
    ddp = estimate(info, dataclasses.replace(plan, strategy="ddp"), 8)
    assert ddp.total > single  # DDP keeps its own copy of the gradients


def test_activation_knobs_move_the_estimate_the_right_way():
    info = model_from_config(load_config("qwen2.5-7b"))
    plan = Plan(method="lora", seq_len=1024, micro_batch=4)
    acts = estimate(info, plan).per_device.activations
    assert estimate(info, dataclasses.replace(plan, gradient_checkpointing=True)).per_device.activations < acts / 5
    eager = estimate(info, dataclasses.replace(plan, attn_implementation="eager")).per_device.activations
    eager2 = estimate(info, dataclasses.replace(plan, attn_implementation="eager", seq_len=2048)).per_device
    sdpa2 = estimate(info, dataclasses.replace(plan, seq_len=2048)).per_device.activations
    assert eager > acts and (eager2.activations - sdpa2) == pytest.approx(4 * (eager - acts), rel=1e-6)
    flash = estimate(info, dataclasses.replace(plan, attn_implementation="flash_attention_2")).per_device
    assert flash.activations < acts  # no repeated key/value heads
    unfused = estimate(info, dataclasses.replace(plan, fused_loss=False)).per_device.logits
    assert unfused >= 4 * 1024 * info.vocab_size * 12 * 0.99  # full logits, their fp32 copies and gradient


def test_breakdown_total_and_disk():
    info = model_from_config(load_config("qwen2.5-0.5b"))
    est = estimate(info, Plan(method="full", precision="bf16", micro_batch=2, gradient_accumulation=4))
    b = est.per_device
    assert b.total == sum(v for k, v in b.terms().items() if k not in ("activations", "logits", "gradients",
                                                                        "optimizer_step")) + b.peak_dynamic
    assert est.disk_output == 4 * info.num_parameters  # the runner trains and saves full fine-tunes in fp32
    assert est.disk_total == est.disk_output + 2 * est.disk_checkpoint
    lora = estimate(info, Plan(method="lora"))
    assert lora.disk_output == 4 * lora.trainable_parameters and lora.cpu_ram_merge > 2 * info.num_parameters


def test_plan_from_profiles():
    from tuiwiz.profile.io import load_profile

    from .support.runs import shipped_profiles

    info = model_from_config(load_config("llama3-8b"))
    for _, profile in shipped_profiles():  # a pipeline's stages each a profile of their own
        plan = Plan.from_profile(profile, info, device="cuda", bf16=False)
        assert plan.method == profile.method.type
        assert plan.micro_batch == profile.training.per_device_train_batch_size
        assert plan.seq_len == profile.data.max_length
        assert plan.precision == (profile.training.precision if profile.training.precision != "auto" else "fp16")
    cpu = Plan.from_profile(load_profile(ROOT / "profiles" / "quickstart.yaml").profile, info, device="cpu")
    assert cpu.precision == "fp32" and cpu.device == "cpu"


def _calibration():
    if not CALIBRATION.is_file():
        pytest.skip("no calibration file yet: run bench/calibrate.py")
    return json.loads(CALIBRATION.read_text())


def test_estimate_within_25_percent_of_every_calibration_point():
    """The estimate, recomputed now, against RAM measured by bench/calibrate.py (CPU, fp32, tiny models)."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import calibrate

    report = _calibration()
    assert report["device"] == "cpu" and len(report["results"]) >= 15
    for result in report["results"]:
        est = calibrate.estimate_point(result["point"])["estimate"]
        error = (est - result["measured"]) / result["measured"]
        assert -0.15 <= error <= 0.25, (result["point"], f"{error:+.1%}")
    assert report["constants"]["activation_scale"] == CONSTANTS.activation_scale
    assert report["constants"]["cpu_tile_copies"] == CONSTANTS.cpu_tile_copies


def test_process_runtime_constant_covers_the_measured_baseline():
    report = _calibration()
    assert CONSTANTS.cpu_runtime >= report["baseline_rss_max"]
    assert CONSTANTS.cuda_context == 500 * 2**20


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError):
        Plan(method="nope")
    with pytest.raises(ValueError):
        Plan(micro_batch=0)
