"""The lighter memory paths (issue 14): QLoRA without peft's fp32 upcast, SFT's loss through TRL's fused LM head,
and gradient checkpointing only where memory needs it. bench/memory_paths.py measures both paths' peaks."""

from dataclasses import replace

import pytest

from tuiwiz.data.stats import DataStats
from tuiwiz.plan.hardware import probe
from tuiwiz.plan.memory import Plan, estimate
from tuiwiz.plan.modelinfo import model_from_config
from tuiwiz.plan.recommend import fit_on, recommend
from tuiwiz.profile.schema import Profile

from .support.configs import load_config


def test_the_profile_says_whether_qlora_upcasts_and_the_estimate_follows():
    info = model_from_config(load_config("llama3-8b"))
    default = Profile.model_validate({"method": {"type": "qlora"}, "data": {"max_length": 2048}})
    upcast = Profile.model_validate({"method": {"type": "qlora", "upcast_non_quantized": True},
                                     "data": {"max_length": 2048}})
    assert default.method.upcast_non_quantized is False
    light, heavy = Plan.from_profile(default, info), Plan.from_profile(upcast, info)
    assert (light.kbit_upcast, heavy.kbit_upcast) == (False, True)
    a, b = estimate(info, light), estimate(info, heavy)
    # 2 bytes more for every unquantized parameter (Llama 3 8B: 1.05 B in the embeddings and head)
    assert b.per_device.weights - a.per_device.weights == 2 * (info.num_parameters - info.linear_weight_parameters)
    assert b.total > a.total and not any("fp32" in note for note in a.notes)
    assert any("peft upcasts them" in note for note in b.notes)


def test_a_wrong_upcast_value_names_the_field():
    with pytest.raises(ValueError, match="upcast_non_quantized"):
        Profile.model_validate({"method": {"type": "qlora", "upcast_non_quantized": "sometimes"}})
    with pytest.raises(ValueError, match="upcast_non_quantized"):  # a QLoRA setting, not LoRA's
        Profile.model_validate({"method": {"type": "lora", "upcast_non_quantized": False}})


MACHINES = ("h100-80gb", "a100-40gb", "rtx4090-24gb", "t4-16gb", "cpu-only")
MODELS = ("qwen2.5-0.5b", "llama3.2-1b", "llama3-8b", "mistral-7b")


def test_checkpointing_is_on_only_where_the_same_micro_batch_does_not_fit_without_it():
    """recommend() turns gradient checkpointing on for a micro-batch only when that micro-batch needs it: never
    where memory is ample (issue 14)."""
    on = off = 0
    for snapshot in MACHINES:
        machine = probe(snapshot=snapshot)
        for name in MODELS:
            info = model_from_config(load_config(name), name)
            for seq in (512, 2048, 8192):
                for option in recommend(machine, info, DataStats.assumed(seq)).options:
                    if not option.fits:
                        continue
                    if not option.plan.gradient_checkpointing:
                        off += 1
                        continue
                    on += 1
                    plan = replace(option.plan, gradient_checkpointing=False)
                    n = max(1, len(option.gpu_indices))
                    _, why = fit_on(machine, estimate(info, plan, n), option.gpu_indices)
                    assert why is not None, (snapshot, name, seq, option.key, option.plan.micro_batch)
    assert on and off  # both cases occur, so the check above is not vacuous


def tiny_llama(vocab: int):
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.slow  # importing TRL takes seconds
def test_the_fused_head_equals_the_models_own_loss_and_gradients():
    """TRL's fused LM head (what the runner's SFTTrainer scores with: tiles of 32,768 vocabulary columns, never the
    full logits) gives the model's own cross-entropy and the same gradients, over a vocabulary of two tiles with
    ignored positions."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_llama(40_000)
    add_fused_lm_head(model)
    ids = torch.randint(0, 40_000, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[1, -3:] = -100  # padding
    grads = []
    for fused in (False, True):
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, fused_lm_head=fused).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (fused, fused_grads) = grads
    assert fused == pytest.approx(plain.item(), rel=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-6), name


def sft_trainer(tmp_path, profile: Profile):
    """The SFT recipe's ready trainer for ``profile``, and the list its logged losses go to."""
    import transformers

    from tuiwiz.run.rundir import RunDir
    from tuiwiz.train.recipes.sft import set_up

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    losses = []

    class Losses(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    return set_up(profile, run, [Losses()]).trainer, losses


@pytest.mark.slow
@pytest.mark.parametrize("head", ["fused", "whole"])
def test_the_runners_sft_scores_through_the_head_it_states_and_trains(tmp_path, demo_built, monkeypatch, head):
    """loss_head fused: the SFT recipe's trainer scores through TRL's fused head, and the LM head module never runs
    forward (its weight is read tile by tile); whole: it runs once a step (train/whole_logits.py). The loss falls
    either way."""
    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(demo_built))
    profile = Profile(data={"path": "demo:alpaca", "max_length": 64, "limit": 64}, method={"type": "lora"},
                      training={"max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                                "logging_steps": 1, "save_steps": 1000, "loss_head": head}, output={"report_to": []})
    trainer, losses = sft_trainer(tmp_path, profile)
    head_calls = []
    trainer.model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    trainer.train()
    assert len(head_calls) == (0 if head == "fused" else 6) and len(losses) == 6
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.slow
def test_qlora_without_the_upcast_trains_in_16_bit_and_reloads(tmp_path, demo_built, monkeypatch):
    """The default QLoRA keeps the demo's bf16 embeddings, norms and head in bf16 (4-bit linear layers), its loss
    falls, and the saved adapter on a freshly quantized base gives the trained model's logits."""
    import peft
    import torch
    import transformers

    from tuiwiz.demo.build import demo_model_dir

    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(demo_built))
    profile = Profile(model={"name_or_path": "demo", "dtype": "bfloat16"},
                      data={"path": "demo:alpaca", "max_length": 64, "limit": 64}, method={"type": "qlora"},
                      training={"max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                                "logging_steps": 1, "save_steps": 1000}, output={"report_to": []})
    trainer, losses = sft_trainer(tmp_path, profile)
    base = trainer.model.get_base_model()
    quantized = {n for n, p in base.named_parameters() if p.__class__.__name__ == "Params4bit"}
    kept = {n: p.dtype for n, p in base.named_parameters() if n not in quantized and "lora_" not in n}
    assert quantized and set(kept.values()) == {torch.bfloat16}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(kept)
    trainer.train()
    assert losses[-1] < losses[0] - 0.3, losses

    trainer.model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, base.config.vocab_size, (2, 16))
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(input_ids=ids).logits
    fresh = transformers.AutoModelForCausalLM.from_pretrained(
        demo_model_dir(), dtype=torch.bfloat16, quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32))
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
        with reloaded.disable_adapter():
            untrained = reloaded(input_ids=ids).logits
    saved, loaded = peft.get_peft_model_state_dict(trainer.model), peft.get_peft_model_state_dict(reloaded)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # close to the trained logits (a bf16 residual stream; measured 0.08 of the distance), far from the base's
    off, moved = (again.float() - trained.float()).abs().mean(), (untrained.float() - trained.float()).abs().mean()
    assert off < 0.25 * moved, (off, moved)
