"""The memory estimate and the recommender learn each task's cost (reward, DPO, KTO, ORPO, SimPO, GRPO, seq2seq).

(a) Each task's terms against numbers worked out by hand for small stated configs, T5 shapes against torch and
peft, the profile's task settings reaching the Plan, the commands, the recommender's reasons and the probe.
(b) Measured on the CPU (slow): real steps of TRL's own trainers on a small random Llama, and of transformers'
Seq2SeqTrainer on a small random T5 (tests/support/step_memory.py), against the estimate.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest

from tuiwiz.cli.main import main
from tuiwiz.data.stats import DataStats
from tuiwiz.errors import UserError
from tuiwiz.plan.activations import layer_activation_bytes
from tuiwiz.plan.fine_tune import CONSTANTS, Plan, task_fields
from tuiwiz.plan.hardware import probe as probe_hardware
from tuiwiz.plan.memory import estimate, trainable_parameters
from tuiwiz.plan.modelinfo import inspect_model, model_from_config
from tuiwiz.plan.recommend import recommend, step_down, to_profile
from tuiwiz.plan.task_costs import kv_cache_bytes
from tuiwiz.profile.schema import Profile
from tuiwiz.run.probe import probe_notes, probe_profile
from tuiwiz.tasks import TASK_NAMES, TASKS

from .support.step_memory import LLAMA, T5, grpo_prompts, measure

# A small Llama: hidden 64, MLP 128, 2 layers, 4 heads of 16 (2 key/value heads), vocabulary 1000, untied head.
H, MLP, L, V, KV = 64, 128, 2, 1000, 32
SMALL = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=H, intermediate_size=MLP,
             num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
             max_position_embeddings=512, tie_word_embeddings=False)
N = 2 * V * H + L * (H * H + 2 * H * KV + H * H + 3 * H * MLP) + (2 * L + 1) * H  # embeddings, head, blocks, norms

# By hand, fp32 on the CPU (activation bytes 4, residual 4), full fine-tuning, SDPA: what one block saves per
# token: two RMSNorms (fp32 input + output), attention's input, q, k and v (repeated to 4 heads), its output (which
# is o_proj's input: one tensor), the MLP's input, gate, up and activation outputs and down's input; times
# the fitted activation_scale.
BLOCK = (2 * (4 + 4) * H + 4 * (H + H + 2 * H + H) + 4 * H + (3 * 4 + 4) * MLP) * CONSTANTS.activation_scale
HEAD = (4 + 4 + 2 * 4) * H  # embeddings' output, final norm, LM head input
SAVED = (L + 1) * BLOCK + HEAD  # per token with gradients: every block, one block of backward, the head
FORWARD = BLOCK + HEAD  # per token under no_grad: one block's working set and the head
# fp32 copies of a fused-head tile on the CPU, with (fitted) and without backward
TILE_COPIES, FORWARD_TILE_COPIES = CONSTANTS.cpu_tile_copies, 4


def small(**config):
    return model_from_config({**SMALL, **config}, "small")


def plan(task: str, method: str = "full", **kw) -> Plan:
    return Plan(method=method, device="cpu", precision="fp32", **{**task_fields(task), **kw})


def terms(task: str, method: str = "full", **kw) -> dict:
    return estimate(small(), plan(task, method, **kw)).per_device.terms()


# ---------------------------------------------------------------- (a) each task's terms by hand


def test_dpo_scores_chosen_and_rejected_in_one_batch_and_a_full_copy_as_reference():
    got = terms("dpo", micro_batch=2, seq_len=32)
    tokens = 2 * 2 * 32  # two pairs, chosen and rejected concatenated: four sequences
    assert got["activations"] == pytest.approx(tokens * SAVED, abs=1)
    scored = 4 * 31  # the fused head scores every position but the last of each sequence
    assert got["logits"] == scored * V * 4 * TILE_COPIES + scored * H * 4 + V * H * 4  # + the trained head's grad
    assert got["reference"] == N * 4  # TRL loads a second fp32 copy under full fine-tuning
    assert got["reference_forward"] == pytest.approx(tokens * FORWARD + tokens * V * 4 * FORWARD_TILE_COPIES, abs=1)
    sft = terms("sft", micro_batch=2, seq_len=32)
    assert got["activations"] == pytest.approx(2 * sft["activations"], abs=2) and sft.get("reference") == 0


def test_dpo_under_lora_disables_the_adapter_instead_of_copying_and_precomputing_drops_the_reference():
    got = terms("dpo", "lora", micro_batch=2, seq_len=32)
    assert got["reference"] == 0
    # DPOConfig.disable_dropout: LoRA's dropout keeps no input copy; each of the 7 wrapped layers saves A's output
    lora_block = BLOCK + 7 * 4 * 16 * CONSTANTS.activation_scale
    assert got["reference_forward"] == pytest.approx(128 * (lora_block + HEAD) + 128 * V * 4 * FORWARD_TILE_COPIES,
                                                     abs=1)
    pre = estimate(small(), replace(plan("dpo"), reference=False, micro_batch=2, seq_len=32)).per_device
    assert (pre.reference, pre.reference_forward) == (0, 0)
    profile = Profile.model_validate({"task": "dpo", "method": {"type": "full"},
                                      "preference": {"precompute_ref_log_probs": True}})
    assert Plan.from_profile(profile, small(), device="cpu").reference is False


@pytest.mark.parametrize("targets", [None, ("q_proj", "v_proj"), ("o_proj", "up_proj", "down_proj")])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lora_without_dropout_saves_the_inputs_its_frozen_layers_do_not(precision, targets):
    """DPOConfig's disable_dropout sets LoRA's dropout p to 0 and the dropout returns its input: the frozen base layer
    saves nothing, so lora_A keeps that input for its weight's gradient. fp32: the tensor itself, once for the layers
    that read it (q, k and v; gate and up; down), none for o_proj (attention's output, counted); bf16 under autocast:
    each layer's own 16-bit cast of peft's fp32 cast. A middle block against saved_tensors_hooks: within 2% (the
    rotary tables and the attention mask, shared by the batch, are left out of the count, and so are autocast's
    16-bit copies of the fp32 adapters, 2 B a parameter whatever the tokens: taken off the measured bytes)."""
    import peft
    import torch
    import transformers

    from .support.step_memory import saved_in_block

    config = transformers.LlamaConfig(**{k: v for k, v in LLAMA.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = peft.get_peft_model(transformers.LlamaForCausalLM(config).to(dtype), peft.LoraConfig(
        task_type="CAUSAL_LM", r=16, lora_dropout=0.05, target_modules=list(targets) if targets else "all-linear"))
    for module in model.modules():  # trl's disable_dropout_in_model
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = torch.randint(0, config.vocab_size, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        block = model.get_base_model().model.layers[1]
        saved = saved_in_block(model, block, input_ids=ids)
    if precision == "bf16":
        saved -= 2 * sum(p.numel() for p in block.parameters() if p.requires_grad)
    p = Plan(method="lora", device="cpu" if precision == "fp32" else "cuda", precision=precision, lora_r=16,
             lora_targets=targets, **{k: v for k, v in task_fields("dpo").items() if k != "fused_loss"})
    a = 4 if precision == "fp32" else 2
    unscaled = replace(CONSTANTS, activation_scale=1.0)
    assert saved / 128 == pytest.approx(layer_activation_bytes(LLAMA_INFO, p, a, a, unscaled), rel=0.02)


def test_kto_puts_one_sequence_an_example_through_and_the_reference_beside_it():
    got = terms("kto", micro_batch=2, seq_len=32)
    assert got["activations"] == pytest.approx(64 * SAVED, abs=1)
    assert got["reference"] == N * 4
    assert got["reference_forward"] == pytest.approx(64 * FORWARD + 64 * V * 4 * FORWARD_TILE_COPIES, abs=1)


@pytest.mark.parametrize("task", ["orpo", "simpo"])
def test_orpo_and_simpo_hold_full_logits_of_both_sequences_and_no_reference(task):
    got = terms(task, micro_batch=2, seq_len=32)
    assert got["activations"] == pytest.approx(128 * SAVED, abs=1)
    # trl.experimental's concatenated_forward: logits, their fp32 log-softmax and its gradients, 12 bytes each
    assert got["logits"] == 4 * 31 * V * 12
    assert got["reference"] == got["reference_forward"] == 0


def test_a_reward_model_scores_both_sequences_with_a_head_and_no_vocabulary_logits():
    got = terms("reward", micro_batch=2, seq_len=32)
    assert got["logits"] == 0
    assert got["activations"] == pytest.approx(128 * SAVED, abs=1)
    assert got["reference"] == got["reference_forward"] == got["generation"] == 0


def test_grpo_generates_the_accumulated_batch_with_a_kv_cache_then_trains_on_a_micro_batch_of_completions():
    # micro-batch 2 completions x 2 accumulation steps: TRL generates 4 at once, 8-token prompts + 120 tokens
    p = plan("grpo", micro_batch=2, gradient_accumulation=2, seq_len=8, completion_len=120, num_generations=2)
    b = estimate(small(), p).per_device
    assert b.activations == pytest.approx(2 * 128 * SAVED, abs=1)  # the micro-batch's completions, 128 tokens each
    assert kv_cache_bytes(small(), 4, 128, 4) == 2 * L * KV * 4 * 4 * 128
    cache = 2 * L * KV * 4 * 4 * 128
    growth = cache // (2 * L)  # torch.cat: one layer's keys twice for a moment
    decoding = 4 * V * 4 * 3 + int(4 * FORWARD)  # sampling rows; one position per sequence through the model
    prefill = int(4 * 8 * FORWARD) + 2 * L * KV * 4 * 4 * 8
    assert b.generation == max(cache + growth + decoding, prefill)
    assert b.generation == cache + growth + decoding  # at these lengths the full cache is the moment
    assert b.reference == 0  # beta 0: TRL loads no reference
    assert b.peak_dynamic == max(b.forward_backward, b.gradients + b.optimizer_step, b.generation)


def test_grpo_with_a_kl_penalty_keeps_a_reference_and_scores_with_it_a_micro_batch_at_a_time():
    p = replace(plan("grpo", micro_batch=2, gradient_accumulation=2, seq_len=8, completion_len=120,
                     num_generations=2), reference=True)
    b = estimate(small(), p).per_device
    assert b.reference == N * 4
    scoring = int(2 * 128 * FORWARD + 2 * 128 * V * 4 * FORWARD_TILE_COPIES)
    assert b.generation == scoring  # larger than the cache phase here
    assert b.reference_forward == 0  # GRPO scores before the forward with gradients, not beside it
    lora = estimate(small(), replace(p, method="lora")).per_device
    assert lora.reference == 0 and lora.generation > 0


def test_grpo_generation_grows_with_accumulation_not_with_the_micro_batch_alone():
    base = dict(seq_len=8, completion_len=120, num_generations=2)
    one = estimate(small(), plan("grpo", micro_batch=2, gradient_accumulation=1, **base)).per_device
    four = estimate(small(), plan("grpo", micro_batch=2, gradient_accumulation=4, **base)).per_device
    assert four.activations == one.activations
    assert four.generation > 3 * one.generation  # the cache scales with the completions generated at once


# T5 (seq2seq): d_model 64, d_kv 16 x 4 heads, gated MLP 128, 2 + 2 layers, dropout 0.1, vocabulary 1000.
T5_SMALL = dict(architectures=["T5ForConditionalGeneration"], model_type="t5", d_model=64, d_kv=16, num_heads=4,
                d_ff=128, num_layers=2, num_decoder_layers=2, vocab_size=1000, feed_forward_proj="gated-gelu",
                dropout_rate=0.1, decoder_start_token_id=0)


def test_seq2seq_counts_the_encoder_over_the_input_and_the_decoder_over_the_target():
    model = model_from_config(T5_SMALL)
    b = estimate(model, plan("seq2seq", micro_batch=2, seq_len=32, target_len=16)).per_device
    Ti, Tt = 32, 16
    # the measured T5 tables (activations.py), fp32 with dropout: per token of one block
    encoder = 32 * 64 + 16 * 64 + 32 * 128 + 12 * 4 * Ti + 2 * 4
    decoder = 48 * 64 + 24 * 64 + 32 * 128 + 12 * 4 * Tt + 3 * 4 + 12 * 4 * Ti  # self- and cross-attention
    cross_kv = 8 * 64  # per input token and decoder block: cross-attention's keys and values
    per_input = 2 * encoder + 2 * cross_kv + HEAD
    per_target = 2 * decoder + HEAD
    assert b.activations == 2 * Ti * per_input + 2 * Tt * per_target
    assert b.logits == 2 * Tt * 3 * 4 * V  # full logits over the target, no upcast: log-softmax and two gradients
    assert b.reference == b.generation == 0


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("target_len", [16, 48])
def test_t5_blocks_save_what_the_estimate_counts(method, target_len):
    """The T5 tables count trained weights (full fine-tuning); under LoRA the frozen layers keep neither their inputs
    nor the norms' normalised inputs, and each wrapped layer's dropout keeps its output and its noise (fp32 on the
    CPU). A middle block of each stack against saved_tensors_hooks, times the layers: within 1%."""
    import peft
    import torch
    import transformers

    from tuiwiz.plan.activations import encoder_decoder_bytes, head_bytes

    from .support.step_memory import saved_in_block

    cfg = transformers.T5Config(**{k: v for k, v in T5_SMALL.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    model = base = transformers.T5ForConditionalGeneration(cfg)
    if method == "lora":
        model = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=16, lora_dropout=0.05,
                                                          target_modules="all-linear"))
    B, Ti = 2, 64
    ids = torch.randint(2, cfg.vocab_size, (B, Ti))
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  labels=torch.randint(2, cfg.vocab_size, (B, target_len)))
    encoder = saved_in_block(model, base.encoder.block[1], **inputs)
    decoder = saved_in_block(model, base.decoder.block[1], **inputs)
    if method == "full":  # trained k and v keep the encoder's output: one tensor for all decoder blocks, not a block's
        decoder -= B * Ti * 4 * cfg.d_model
    info = model_from_config(T5_SMALL)
    counted = encoder_decoder_bytes(info, plan("seq2seq", method, micro_batch=B, seq_len=Ti, target_len=target_len),
                                    4, 4)
    head = head_bytes(info, 4, 4)
    expected = B * Ti * (counted.per_input_token - head) + B * target_len * (counted.per_target_token - head)
    assert cfg.num_layers * encoder + cfg.num_decoder_layers * decoder == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
@pytest.mark.parametrize("config", ["T5Config", "MT5Config"])
@pytest.mark.parametrize("tie", [True, False])
def test_t5_parameter_count_equals_torch(ff, config, tie):
    import torch
    import transformers

    cfg = getattr(transformers, config)(vocab_size=300, d_model=64, d_kv=16, d_ff=96, num_layers=2,
                                        num_decoder_layers=3, num_heads=4, feed_forward_proj=ff,
                                        tie_word_embeddings=tie, decoder_start_token_id=0)
    cls = transformers.MT5ForConditionalGeneration if config == "MT5Config" else transformers.T5ForConditionalGeneration
    with torch.device("meta"):
        model = cls(cfg)
    info = model_from_config({**cfg.to_dict(), "architectures": [cls.__name__], "tie_word_embeddings": tie})
    assert info.num_parameters == sum(p.numel() for p in model.parameters())
    assert (info.num_layers, info.num_decoder_layers, info.head_dim, info.intermediate_size) == (2, 3, 16, 96)
    assert info.encoder_decoder and info.dropout == 0.1 and info.gated_mlp == (ff != "relu")


def test_a_t5_checkpoint_read_from_its_files_counts_what_transformers_loads(tmp_path):
    """Its relative attention biases are embeddings, not linear layers; a flan-T5-style file that stores its own
    lm_head.weight loads tied in transformers 5, so the stored head is not counted."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    cfg = transformers.T5Config(**{k: v for k, v in T5_SMALL.items() if k not in ("architectures", "model_type")})
    model = transformers.T5ForConditionalGeneration(cfg)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, "lm_head.weight": torch.zeros(V, 64)}, tmp_path / "model.safetensors")
    info = inspect_model(str(tmp_path))
    assert info.parameter_source == "safetensors"
    expected = sum(p.numel() for p in model.parameters())
    assert info.num_parameters == expected == model_from_config(T5_SMALL).num_parameters
    assert set(info.linear_layers) == set(model_from_config(T5_SMALL).linear_layers)
    assert info.linear_modules == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def test_t5_trainable_counts_match_peft():
    import peft
    import transformers

    cfg = transformers.T5Config(**{k: v for k, v in T5_SMALL.items() if k not in ("architectures", "model_type")})
    info = model_from_config(T5_SMALL)
    cases = [(Plan(method="lora", lora_r=4, task="seq2seq"),
              peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules="all-linear")),
             (Plan(method="ia3", task="seq2seq"), peft.IA3Config(task_type="SEQ_2_SEQ_LM")),
             (Plan(method="prompt_tuning", num_virtual_tokens=5, task="seq2seq"),
              peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5))]
    for p, config in cases:
        model = peft.get_peft_model(transformers.T5ForConditionalGeneration(cfg), config)
        assert trainable_parameters(info, p) == model.get_nb_trainable_parameters()[0], p.method


def test_a_task_and_a_model_of_the_other_kind_are_refused_naming_the_field():
    with pytest.raises(UserError, match="encoder-decoder") as err:
        estimate(small(), plan("seq2seq"))
    assert err.value.field == "model.name_or_path"
    with pytest.raises(UserError, match="task seq2seq") as err:
        estimate(model_from_config(T5_SMALL), plan("dpo"))
    assert err.value.field == "task"


# ---------------------------------------------------------------- the profile's task reaches the plan


def test_plan_from_profile_carries_what_each_task_needs():
    model = small()

    def from_profile(**data):
        return Plan.from_profile(Profile.model_validate(data), model, device="cpu")

    assert (from_profile(task="sft").sequences_per_example, from_profile(task="sft").reference) == (1, False)
    dpo = from_profile(task="dpo", method={"type": "full"}, preference={"precompute_ref_log_probs": False})
    assert (dpo.sequences_per_example, dpo.reference, dpo.fused_loss, dpo.dropout_off) == (2, True, True, True)
    # auto: precomputed under full fine-tuning (no copy); under adapters the plan keeps the step's reference forward
    assert not from_profile(task="dpo", method={"type": "full"}).reference
    assert from_profile(task="dpo").reference and from_profile(task="kto").reference
    assert from_profile(task="kto").sequences_per_example == 1
    assert from_profile(task="orpo").fused_loss is False and not from_profile(task="orpo").reference
    grpo = from_profile(task="grpo", data={"max_length": 300},
                        grpo={"rewards": [{"type": "exact_answer"}], "num_generations": 8, "max_completion_length": 99,
                              "beta": 0.04})
    assert (grpo.seq_len, grpo.completion_len, grpo.num_generations, grpo.reference) == (300, 99, 8, True)
    assert grpo.sequence_len == 399
    capped = from_profile(task="grpo", grpo={"rewards": [{"type": "exact_answer"}], "max_prompt_length": 40})
    assert (capped.seq_len, capped.reference) == (40, False)
    s2s = from_profile(task="seq2seq", data={"max_length": 200})
    assert (s2s.seq_len, s2s.decoder_len, s2s.fused_loss) == (200, 200, False)


# ---------------------------------------------------------------- commands


@pytest.fixture
def configs(tmp_path, monkeypatch):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "cpu-only")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal width
    llama, t5 = tmp_path / "llama.json", tmp_path / "t5.json"
    llama.write_text(json.dumps(SMALL))
    t5.write_text(json.dumps(T5_SMALL))
    return llama, t5


def test_estimate_takes_every_task_and_reports_what_the_api_computes(configs, capsys):
    llama, t5 = configs
    for task in TASK_NAMES:
        config = t5 if TASKS[task].model == "seq2seq" else llama
        assert main(["estimate", "--config", str(config), "--task", task, "--method", "full", "--micro-batch", "2",
                     "--seq-len", "64", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["plan"]["task"] == task
        model = model_from_config(json.loads(config.read_text()))
        p = Plan(**report["plan"])
        assert report["per_device"] == estimate(model, p).per_device.terms()
    main(["estimate", "--config", str(llama), "--task", "dpo", "--method", "full", "--micro-batch", "2",
          "--seq-len", "64"])
    out = capsys.readouterr().out  # precompute_ref_log_probs auto: scored before training under full fine-tuning
    assert "reference model" not in out and "2 × 2 sequences of 64 tokens" in out
    assert "scores the data once before training (preference.precompute_ref_log_probs)" in out
    kept = llama.parent / "kept.yaml"
    kept.write_text("task: dpo\npreference: {precompute_ref_log_probs: false}\n")
    main(["estimate", str(kept), "--config", str(llama), "--method", "full", "--micro-batch", "2", "--seq-len", "64"])
    out = capsys.readouterr().out
    assert "reference model" in out and "precompute_ref_log_probs scores the data with it once" in out


def test_estimate_refuses_seq2seq_on_a_decoder_with_exit_2(configs, capsys):
    llama, _ = configs
    assert main(["estimate", "--config", str(llama), "--task", "seq2seq"]) == 2
    assert "model.name_or_path" in capsys.readouterr().err


def test_recommend_accepts_every_task(configs, capsys, tmp_path):
    llama, t5 = configs
    for task in TASK_NAMES:
        folder = tmp_path / task
        folder.mkdir()
        (folder / "config.json").write_text((t5 if TASKS[task].model == "seq2seq" else llama).read_text())
        assert main(["recommend", "--model", str(folder), "--task", task, "--seq-len", "128", "--json"]) == 0, task
        options = json.loads(capsys.readouterr().out)["options"]
        assert options and all(o["plan"]["task"] == task for o in options)


# ---------------------------------------------------------------- the recommender


def llama8b():
    from .support.configs import load_config

    return model_from_config(load_config("llama3-8b"), "llama3-8b")


def test_recommend_says_what_dpo_costs_where_it_decides():
    rec = recommend(probe_hardware(snapshot="h100-80gb"), llama8b(), DataStats.assumed(1024), "dpo")
    lora = rec.option("lora")
    assert "twice the sequences" in lora.reason and "adapter disabled: no second copy" in lora.reason
    full = rec.option("full")  # precompute_ref_log_probs auto: no reference in memory under full fine-tuning
    assert "scores the data once before training" in full.reason and "no second copy" in full.reason
    assert full.estimate.per_device.reference == 0 and full.estimate.per_device.reference_forward == 0
    kept = estimate(llama8b(), replace(full.plan, reference=True)).per_device  # what the copy would take
    assert kept.reference == llama8b().num_parameters * 4
    sft = recommend(probe_hardware(snapshot="h100-80gb"), llama8b(), DataStats.assumed(1024), "sft").option("lora")
    # the same micro-batch, with the model's own logits, which outweigh one block's backward: what is saved alone
    dpo = {**task_fields("dpo"), "fused_loss": False, "reference": False}
    at_sft = estimate(llama8b(), replace(sft.plan, **dpo)).per_device
    no_dropout = estimate(llama8b(), replace(sft.plan, dropout_off=True, fused_loss=False)).per_device  # as DPOConfig
    assert at_sft.activations == pytest.approx(2 * no_dropout.activations, rel=1e-9)


def test_recommend_grpo_writes_a_valid_profile_and_names_its_generation():
    rec = recommend(probe_hardware(snapshot="h100-80gb"), llama8b(), DataStats.assumed(256), "grpo")
    best = rec.best
    assert "completions" in best.reason and "KV cache" in best.reason
    profile = to_profile(best, "llama3-8b", "prompts.jsonl", "grpo")
    assert profile.task == "grpo" and profile.grpo.rewards


def test_the_new_tasks_never_pack():
    varied = DataStats.from_lengths([25 + (i * 37) % 380 for i in range(1000)])
    machine = probe_hardware(snapshot="h100-80gb")
    assert any(o.packing for o in recommend(machine, llama8b(), varied, "sft").options)
    for task in TASK_NAMES:
        if not TASKS[task].packs and TASKS[task].model != "seq2seq":
            assert not any(o.packing for o in recommend(machine, llama8b(), varied, task).options), task


def test_step_down_drops_a_full_reference_copy_first():
    profile = Profile.model_validate({"task": "dpo", "method": {"type": "full"},
                                      "preference": {"precompute_ref_log_probs": False},
                                      "training": {"per_device_train_batch_size": 4}})
    step = step_down(profile, llama8b(), probe_hardware(snapshot="h100-80gb"))
    assert step.kind == "reference" and step.profile.preference.precompute_ref_log_probs is True
    auto = profile.model_copy(update={"preference": Profile().preference})  # auto: precomputed already
    assert step_down(auto, llama8b(), probe_hardware(snapshot="h100-80gb")).kind == "micro_batch"
    after = step_down(step.profile, llama8b(), probe_hardware(snapshot="h100-80gb"))
    assert after.kind == "micro_batch"
    lora = profile.model_copy(update={"method": Profile().method})
    assert step_down(lora, llama8b(), probe_hardware(snapshot="h100-80gb")).kind == "micro_batch"


# ---------------------------------------------------------------- the probe


def test_the_probe_keeps_what_each_task_needs():
    grpo = Profile.model_validate({"task": "grpo", "grpo": {"rewards": [{"type": "exact_answer"}]},
                                   "training": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}})
    probed = probe_profile(grpo, 3)
    assert probed.training.gradient_accumulation_steps == 4  # the generation batch stays as the run's
    assert probed.training.pad_to_max_length and probed.grpo.log_completions == 0
    sft = probe_profile(Profile(training={"gradient_accumulation_steps": 4}), 3)
    assert sft.training.gradient_accumulation_steps == 1
    dpo = Profile.model_validate({"task": "dpo", "preference": {"precompute_ref_log_probs": True},
                                  "training": {"per_device_train_batch_size": 2}})
    assert probe_profile(dpo, 3).data.limit == 6  # the reference scores only the rows the probe trains on
    # auto: precomputed under full fine-tuning (so limited too); under LoRA the probe's few steps score in the step
    full = dpo.model_copy(update={"preference": Profile().preference,
                                  "method": Profile(method={"type": "full"}).method})
    assert probe_profile(full, 3).data.limit == 6
    lora = dpo.model_copy(update={"preference": Profile().preference})
    assert probe_profile(lora, 3).data.limit is None
    assert probe_notes(Profile(task="orpo")) and not probe_notes(Profile(task="dpo"))


def probe_files(tmp_path, task: str):
    """A profile of ``task`` on small data of its format, for the demo (a random T5 beside it, for seq2seq)."""
    import yaml

    sounds = [("cow", "moo"), ("cat", "meow"), ("dog", "woof"), ("duck", "quack")] * 6
    rows = {
        "preference": [{"prompt": f"What does the {a} say?", "chosen": f"Sure! The {a} says {s}.",
                        "rejected": f"The {a} says nothing {i}."} for i, (a, s) in enumerate(sounds)],
        "unpaired": [{"prompt": f"What does the {a} say?", "completion": f"The {a} says {s if i % 2 else i}.",
                      "label": bool(i % 2)} for i, (a, s) in enumerate(sounds)],
        "prompt": [{"prompt": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)} for i in range(24)],
        "seq2seq": [{"input": f"what does the {a} say {i}", "target": s} for i, (a, s) in enumerate(sounds)],
    }[TASKS[task].formats[0]]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = {"task": task, "data": {"path": str(data), "max_length": 64}, "method": {"type": "lora"},
               "training": {"per_device_train_batch_size": 4, "max_steps": 4},
               "output": {"runs_dir": str(tmp_path / "runs"), "report_to": []}}
    if task == "grpo":
        profile["grpo"] = {"rewards": [{"type": "exact_answer"}], "max_completion_length": 16}
        profile["training"]["gradient_accumulation_steps"] = 2
    if task == "seq2seq":
        profile["model"] = {"name_or_path": str(t5_folder(tmp_path / "t5"))}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def t5_folder(folder):
    """A random T5 that reads with the demo's tokenizer (the probe needs a model folder, not its quality)."""
    import shutil

    import transformers

    from tuiwiz.demo.builtin import resolve_builtin

    config = transformers.T5Config(vocab_size=1100, d_model=128, d_kv=32, num_heads=4, d_ff=256, num_layers=2,
                                   num_decoder_layers=2, feed_forward_proj="gated-gelu", decoder_start_token_id=3,
                                   pad_token_id=3, eos_token_id=2)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    demo = resolve_builtin("demo", build=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(demo / name, folder / name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("task", [t for t in TASK_NAMES if t not in ("sft", "pretrain", "classification")])
def test_the_probe_runs_every_task_through_the_real_runner(tmp_path, task):
    import yaml

    from .support.processes import run_cli

    out = tmp_path / "fitted.yaml"
    result = run_cli("probe", probe_files(tmp_path, task), "--steps", "2", "--write", out)
    assert result.returncode == 0, result.stdout + result.stderr
    fit = yaml.safe_load(out.read_text())["fit"]
    assert 200 < fit["measured_peak_mb"] < fit["budget_mb"]
    assert 0.5 < fit["estimated_peak_mb"] / fit["measured_peak_mb"] < 2.0
    assert not any((tmp_path / "runs" / ".probes").iterdir())


# ---------------------------------------------------------------- (b) measured on the CPU
#
# Each step's peak is the rise of the resident set above where it stood as the step began (steps after the first,
# which also allocates the optimizer's states); the median of the later steps. The estimate's task-specific
# increment over the same model's SFT step is compared with the measured one.
#
# Tolerance: the decoder-only tasks' activations come from the SFT count (every block, one more block for the
# backward, times the fitted activation_scale 1.15), which on this 4-layer model counts about 40% more than
# autograd saves (the fit was made on whole-process peaks whose first step carries more than the step itself).
# Their increments may therefore lie from 0.85x to 1.6x the measured ones: high is the safe side, and a missing
# term (the second sequence, the reference copy, the KV cache) falls far outside. Terms counted exactly (T5's
# measured block tables, GRPO's KV cache) must be within 15%. The reference copy's bytes equal its tensors'
# exactly; what stays resident with it varies by some 10 MiB from run to run (malloc's heap, the trainers' own
# state), so the resident difference is held to 40%.

LLAMA_INFO = model_from_config(LLAMA)
T5_INFO = model_from_config(T5)
MiB = 2**20


def measured(result: dict, key: str = "step") -> float:
    return statistics.median(result[key][1:])


def cpu_plan(task: str, method: str, **kw) -> Plan:
    return Plan(method=method, device="cpu", precision="fp32", **{**task_fields(task), **kw})


# The measuring process maps and unmaps large tensors with the step (MALLOC_MMAP_THRESHOLD_), so its resident set
# follows the tensors themselves: the estimate's counts, without the CPU's fitted allocator scale on the blocks
TENSORS_ONLY = replace(CONSTANTS, activation_scale=1.0)


def dynamic(model, p: Plan) -> int:
    return estimate(model, p, constants=TENSORS_ONLY).per_device.peak_dynamic


def within(estimated: float, measured_: float, low: float, high: float) -> None:
    ratio = estimated / measured_
    print(f"estimated / measured {ratio:.2f} ({estimated / MiB:.1f} / {measured_ / MiB:.1f} MiB)")
    assert low <= ratio <= high, f"estimated {estimated / MiB:.1f} MiB, measured {measured_ / MiB:.1f} MiB"


@pytest.mark.slow
def test_dpo_with_lora_measured(tmp_path):
    sft, dpo = measure([dict(kind="sft", method="lora", micro_batch=2, seq_len=128, steps=3),
                        dict(kind="dpo", method="lora", micro_batch=2, seq_len=128, steps=3)], tmp_path)
    est = dynamic(LLAMA_INFO, cpu_plan("dpo", "lora", micro_batch=2, seq_len=128)) - \
        dynamic(LLAMA_INFO, cpu_plan("sft", "lora", micro_batch=2, seq_len=128))
    within(est, measured(dpo) - measured(sft), 0.85, 1.6)
    assert dpo["reference_bytes"] == 0  # the adapter disabled is the reference


@pytest.mark.slow
def test_dpo_full_fine_tuning_measured_with_its_reference_copy(tmp_path):
    _, sft, dpo = measure([dict(kind="sft", method="full", micro_batch=1, seq_len=32, steps=1),  # imports, first
                           dict(kind="sft", method="full", micro_batch=2, seq_len=128, steps=3),
                           dict(kind="dpo", method="full", micro_batch=2, seq_len=128, steps=3)], tmp_path)
    p = cpu_plan("dpo", "full", micro_batch=2, seq_len=128)
    est = dynamic(LLAMA_INFO, p) - dynamic(LLAMA_INFO, cpu_plan("sft", "full", micro_batch=2, seq_len=128))
    within(est, measured(dpo) - measured(sft), 0.85, 1.6)
    reference = estimate(LLAMA_INFO, p).per_device.reference
    assert reference == dpo["reference_bytes"] == LLAMA_INFO.num_parameters * 4  # TRL's copy, tensor by tensor
    within(reference, dpo["resident"] - sft["resident"], 0.6, 1.4)


@pytest.mark.slow
def test_reward_model_measured(tmp_path):
    """Against SFT on as many sequences: the pairs' activations, without SFT's vocabulary-wide loss."""
    sft, reward = measure([dict(kind="sft", method="lora", micro_batch=4, seq_len=128, steps=3),
                           dict(kind="reward", method="lora", micro_batch=2, seq_len=128, steps=3)], tmp_path)
    est = dynamic(LLAMA_INFO, cpu_plan("reward", "lora", micro_batch=2, seq_len=128)) - \
        dynamic(LLAMA_INFO, cpu_plan("sft", "lora", micro_batch=4, seq_len=128))
    within(-est, measured(sft) - measured(reward), 0.85, 1.6)


@pytest.mark.slow
def test_grpo_with_lora_measured(tmp_path):
    from transformers import AutoTokenizer

    from tuiwiz.demo.builtin import resolve_builtin

    tokenizer = AutoTokenizer.from_pretrained(resolve_builtin("demo", build=True))
    prompt = max(len(tokenizer(p)["input_ids"]) for p in grpo_prompts(64))
    C = 96
    sft, grpo = measure([dict(kind="sft", method="lora", micro_batch=4, seq_len=prompt + C, steps=2),
                         dict(kind="grpo", method="lora", micro_batch=4, accumulation=4, num_generations=4,
                              completion_len=C, steps=2)], tmp_path)
    assert grpo["prompt_len"] == prompt
    p = cpu_plan("grpo", "lora", micro_batch=4, gradient_accumulation=4, seq_len=prompt, completion_len=C,
                 num_generations=4)
    b = estimate(LLAMA_INFO, p).per_device
    # generation: 16 completions at once, their KV cache (counted exactly) and sampling
    within(b.generation, measured(grpo, "generation"), 0.85, 1.15)
    # then a micro-batch of 4 completions of prompt + C tokens, as SFT on 4 such sequences (not 4 x generations)
    sft_plan = cpu_plan("sft", "lora", micro_batch=4, seq_len=prompt + C, gradient_accumulation=4)
    est = b.forward_backward - estimate(LLAMA_INFO, sft_plan).per_device.forward_backward
    assert abs(est - (measured(grpo) - measured(sft))) < 0.15 * measured(sft)


@pytest.mark.slow
def test_seq2seq_encoder_and_decoder_measured(tmp_path):
    base, longer_input, longer_target = measure(
        [dict(kind="seq2seq", method="lora", micro_batch=4, seq_len=128, target_len=32, steps=3),
         dict(kind="seq2seq", method="lora", micro_batch=4, seq_len=256, target_len=32, steps=3),
         dict(kind="seq2seq", method="lora", micro_batch=4, seq_len=128, target_len=128, steps=3)], tmp_path)

    def est(Ti, Tt):
        return dynamic(T5_INFO, cpu_plan("seq2seq", "lora", micro_batch=4, seq_len=Ti, target_len=Tt))

    within(est(128, 32), measured(base), 0.85, 1.15)
    within(est(256, 32) - est(128, 32), measured(longer_input) - measured(base), 0.85, 1.15)  # the encoder's
    within(est(128, 128) - est(128, 32), measured(longer_target) - measured(base), 0.85, 1.15)  # the decoder's
