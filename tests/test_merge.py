"""Shard-by-shard merge: equal to peft's merge_and_unload, verified, refused when it cannot work.

The runs train on the demo base saved in several shards. They are trained once per test
session and shared with the other post-training tests through the ``trained_run`` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuiwiz.errors import UserError
from tuiwiz.run.rundir import RunDir

from .support.processes import run_cli
from .support.trained_runs import RECIPES, assert_streamed_equals_loaded, copy_run, merged_tensors


def peft_merged_state(run: RunDir) -> dict:
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(run.output)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shard_merge_equals_peft_merge_and_unload(trained_run, tmp_path, name):
    import torch

    from tuiwiz.post.merge import merge_run
    from tuiwiz.post.merge_plan import plan_merge

    run = trained_run(name)
    plan = plan_merge(str(run.path))
    assert len(plan.shards) >= 4
    result = merge_run(plan, tmp_path / "merged")
    assert result.out == tmp_path / "merged" and result.shards == len(plan.shards)
    assert result.max_diff <= 1e-4 < result.changed_diff
    assert result.peak_rss_mb > 0 and result.seconds > 0

    ours = merged_tensors(result.out)
    index = json.loads((result.out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ours)
    assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in plan.shards)
    reference = peft_merged_state(run)
    assert set(reference) <= set(ours)
    changed = 0
    for key, expected in reference.items():
        assert ours[key].dtype == expected.dtype, key
        torch.testing.assert_close(ours[key], expected, rtol=1e-5, atol=1e-6, msg=key)
        changed += key.endswith("_proj.weight")
    assert changed > 0
    for name_ in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja", "README.md"):
        assert (result.out / name_).exists(), name_


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_streamed_model_gives_the_loaded_models_logits(trained_run, name):
    run = trained_run(name)
    from tuiwiz.post.merge_plan import plan_merge

    assert_streamed_equals_loaded(run, plan_merge(str(run.path)).source.base_model, adapter=True)


@pytest.mark.slow
def test_merged_model_reloads_and_generates_through_cli(trained_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained_run("lora")
    out = tmp_path / "cli-merged"
    result = run_cli("merge", run.path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout and str(out) in result.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the run's chat template came along
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What sound does the cow make?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        tokens = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert tokens.shape[1] > prompt["input_ids"].shape[1]
    again = run_cli("merge", run.path, "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["double-scale", "skip-one-module", "skip-all"])
def test_verification_catches_a_wrong_merge(trained_run, tmp_path, monkeypatch, fault):
    import tuiwiz.post.merge as merge
    import tuiwiz.post.merge_shards as merge_shards

    run = trained_run("lora")
    if fault == "double-scale":
        right = merge_shards._lora_scaling
        monkeypatch.setattr(merge_shards, "_lora_scaling", lambda config, module, rank: 2 * right(config, module, rank))
    else:
        right_weight = merge_shards._merged_weight

        def faulty(weight, adapter, module, config):
            if fault == "skip-all" or module.endswith("layers.2.mlp.down_proj"):
                return weight
            return right_weight(weight, adapter, module, config)

        monkeypatch.setattr(merge_shards, "_merged_weight", faulty)
    with pytest.raises(UserError) as info:
        merge.merge_run(str(run.path), tmp_path / "merged")
    assert info.value.kind == "verify"
    expected = "changed nothing" if fault == "skip-all" else "does not match"
    assert expected in info.value.message
    _no_leftovers(tmp_path, "merged")


@pytest.mark.slow
def test_refuses_when_memory_or_disk_is_short(trained_run, tmp_path, monkeypatch):
    from tuiwiz.post.merge import merge_run
    from tuiwiz.post.merge_plan import plan_merge

    run = trained_run("lora")
    plan = plan_merge(str(run.path))
    monkeypatch.setenv("TUIWIZ_MEMORY_BUDGET_MB", "1")
    with pytest.raises(UserError) as info:
        merge_run(plan, tmp_path / "merged")
    assert info.value.kind == "resources" and "free memory" in info.value.message
    monkeypatch.delenv("TUIWIZ_MEMORY_BUDGET_MB")
    with pytest.raises(UserError) as info:
        merge_run(plan, tmp_path / "merged", disk_budget_mb=plan.base_bytes / 2**20 / 2)
    assert "on disk" in info.value.message
    _no_leftovers(tmp_path, "merged")
    result = run_cli("merge", run.path, "--out", tmp_path / "m", env={"TUIWIZ_MEMORY_BUDGET_MB": "1"})
    assert result.returncode == 2 and "free memory" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method, expected", [
    ("prompt_tuning", "cannot be merged"), ("p_tuning", "cannot be merged"),
    ("full", "nothing to merge"), ("bitfit", "nothing to merge"),
])
def test_refuses_methods_that_do_not_merge(trained_run, tmp_path, method, expected):
    from tuiwiz.post.merge_plan import plan_merge

    run = copy_run(trained_run("lora"), tmp_path / "copy", method=method)
    with pytest.raises(UserError) as info:
        plan_merge(str(run.path))
    assert expected in info.value.message and info.value.hint


@pytest.mark.slow
def test_refuses_unfinished_runs_and_notes_qlora(trained_run, tmp_path):
    from tuiwiz.post.merge_plan import plan_merge

    source = trained_run("lora")
    qlora = copy_run(source, tmp_path / "qlora", method="qlora")
    assert "not the 4-bit" in plan_merge(str(qlora.path)).note
    assert plan_merge(str(source.path)).note is None
    failed = copy_run(source, tmp_path / "failed")
    state = json.loads(failed.state_file.read_text())
    failed.state_file.write_text(json.dumps({**state, "status": "stopped"}))
    with pytest.raises(UserError, match="not completed"):
        plan_merge(str(failed.path))
    result = run_cli("merge", "no-such-run")
    assert result.returncode == 2 and "no run" in result.stderr


def _gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, bos_token_id=0,
                                      eos_token_id=0))


def _demo():
    from transformers import AutoModelForCausalLM

    from tuiwiz.demo.build import ensure_demo_model

    return AutoModelForCausalLM.from_pretrained(ensure_demo_model())


@pytest.mark.parametrize("case", ["adalora", "lora-bias-alpha-pattern", "lora-embedding", "gpt2-dora-fan-in-fan-out",
                                  "gpt2-ia3-fan-in-fan-out"])
def test_delta_formulas_equal_peft_for_more_variants(tmp_path, case):
    """The per-module formulas against peft's merge_and_unload, for variants the trained runs do not cover."""
    import peft
    import torch

    from tuiwiz.post.merge_shards import _merged_bias, _merged_weight, _read_adapter

    model, config = {
        "adalora": (_demo, lambda: peft.AdaLoraConfig(task_type="CAUSAL_LM", total_step=100, init_r=6, target_r=4,
                                                       target_modules=["q_proj", "v_proj"])),
        "lora-bias-alpha-pattern": (_demo, lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                                    lora_bias=True,
                                                                    alpha_pattern={"layers.1.self_attn.q_proj": 2})),
        "lora-embedding": (_demo, lambda: peft.LoraConfig(r=4, lora_alpha=8,
                                                           target_modules=["embed_tokens", "q_proj"])),
        "gpt2-dora-fan-in-fan-out": (_gpt2, lambda: peft.LoraConfig(r=4, lora_alpha=8,
                                                                     target_modules=["c_attn", "c_proj"],
                                                                     fan_in_fan_out=True, use_dora=True)),
        "gpt2-ia3-fan-in-fan-out": (_gpt2, lambda: peft.IA3Config(target_modules=["c_attn", "c_fc"],
                                                                   feedforward_modules=["c_fc"], fan_in_fan_out=True)),
    }[case]
    base = model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    wrapped = peft.get_peft_model(base, config())
    torch.manual_seed(3)
    with torch.no_grad():  # trained-looking adapter weights: every part non-zero
        for name, param in wrapped.named_parameters():
            if "lora_" in name or "ia3_" in name:
                param.add_(torch.randn_like(param) * 0.05)
    wrapped.save_pretrained(tmp_path)
    reference = {k: v.clone() for k, v in wrapped.merge_and_unload().state_dict().items()}
    adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
    modules, _ = _read_adapter(tmp_path)
    assert modules
    for module, adapter in modules.items():
        weight = _merged_weight(before[f"{module}.weight"], adapter, module, adapter_config)
        assert not torch.equal(weight, before[f"{module}.weight"]), module
        torch.testing.assert_close(weight, reference[f"{module}.weight"], rtol=1e-5, atol=1e-6, msg=module)
        if f"{module}.bias" in before:
            bias = _merged_bias(before[f"{module}.bias"], adapter, module, adapter_config)
            bias = before[f"{module}.bias"] if bias is None else bias
            torch.testing.assert_close(bias, reference[f"{module}.bias"], rtol=1e-5, atol=1e-6, msg=module)
