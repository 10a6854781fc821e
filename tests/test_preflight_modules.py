"""A method that names modules the model lacks is refused before a run exists (peft would stop the
run at its start, and the run would read as a bug): exit 2, the field, the modules the model has."""

from __future__ import annotations

import pytest

from tuiwiz.plan.modelinfo import inspect_model

from .support.processes import run_cli

PROFILE = """\
model:
  name_or_path: demo
data:
  path: demo:alpaca
method:
  type: {method}
  target_modules: [q_proj, {wrong}]
training:
  max_steps: 1
output:
  runs_dir: runs
"""


@pytest.mark.parametrize("method, wrong", [("lora", "attention.wq"), ("ia3", "query_key_value")])
def test_a_module_the_model_lacks_is_refused_before_a_run_exists(tmp_path, demo_built, method, wrong):
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE.format(method=method, wrong=wrong), encoding="utf-8")
    env = {"TUIWIZ_CACHE_DIR": str(demo_built), "TUIWIZ_STATE_DIR": str(tmp_path / "state"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("--profile", profile, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"method.target_modules names '{wrong}', which demo does not have" in result.stderr
    assert "its linear layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_modules_are_matched_as_peft_matches_them(tmp_path, demo_built, monkeypatch):
    from tuiwiz.demo.builtin import resolve_builtin

    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(demo_built))
    model = inspect_model(str(resolve_builtin("demo", build=False)))
    assert model.has_module("q_proj") and model.has_module("self_attn.q_proj")
    assert model.has_module("model.layers.0.self_attn.q_proj") and model.has_module("embed_tokens")
    assert model.has_module("lm_head") and not model.has_module("attn.q_proj")  # a suffix of whole names
    assert not model.has_module("proj")
