"""A hub model that is not downloaded is inspected from the Hub's metadata, without a weight downloaded.

The Hub is a fake on 127.0.0.1 serving a real model folder (the demo model, whole or split into shards),
reached through HF_ENDPOINT by the real huggingface_hub client: the file list with sizes, the text files,
and the safetensors headers through range requests. The result must equal what the downloaded folder gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuiwiz.errors import UserError

from .support.hub import ModelHub, online
from .support.processes import run_cli


@pytest.fixture
def demo_folder():
    from tuiwiz.demo.build import ensure_demo_model

    return ensure_demo_model()


def sharded_copy(folder: Path, into: Path) -> Path:
    """The same model in two safetensors shards with an index, as large models are published."""
    from safetensors.torch import load_file, save_file

    into.mkdir()
    for f in folder.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, into / f.name)
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, part in halves.items():
        save_file({n: tensors[n].contiguous() for n in part}, into / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (into / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return into


SAME = ("architecture", "model_type", "known_architecture", "num_layers", "hidden_size", "num_heads", "num_kv_heads",
        "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings", "dtype", "max_position_embeddings",
        "num_parameters", "parameter_source", "linear_layers", "embedding_parameters", "lm_head_parameters",
        "bias_parameters", "gated_mlp")


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_a_hub_model_reads_as_its_downloaded_folder_without_its_weights(tmp_path, monkeypatch, demo_folder, layout):
    from tuiwiz.plan.modelinfo import inspect_model

    folder = demo_folder if layout == "single" else sharded_copy(demo_folder, tmp_path / "sharded")
    with ModelHub({"acme/tiny-llama": folder}) as hub:
        cache = online(monkeypatch, tmp_path, hub)
        with pytest.raises(UserError, match="not in the Hugging Face cache"):
            inspect_model("acme/tiny-llama")  # offline by default: planning never reaches the network
        info = inspect_model("acme/tiny-llama", online=True)
    local = inspect_model(str(folder))
    assert {k: getattr(info, k) for k in SAME} == {k: getattr(local, k) for k in SAME}
    assert (info.source, info.license, info.size_on_disk) == ("hub", "apache-2.0", local.size_on_disk)
    assert info.weight_files == local.weight_files
    weights = [(name, span) for name, span in hub.reads if name.endswith(".safetensors")]
    assert sorted(name for name, _ in weights) == sorted(local.weight_files)  # each header read once
    assert all(span == "bytes=0-100000" for _, span in weights)  # a range: no weight downloaded
    assert all((folder / name).stat().st_size > 100_001 for name, _ in weights)  # so the range really cut
    # the text files the Data step renders samples with, in tuiwiz's cache; nothing in the Hugging Face cache
    meta = Path(info.path)
    assert sorted(p.name for p in meta.iterdir()) == sorted(
        ["chat_template.jinja", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"])
    assert (meta / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert not cache.exists() or not any(cache.rglob("*"))


def test_hub_model_errors_name_the_field(tmp_path, monkeypatch, demo_folder):
    from tuiwiz.plan.modelinfo import inspect_model

    no_config = tmp_path / "adapter-only"
    no_config.mkdir()
    (no_config / "adapter_config.json").write_text("{}")
    with ModelHub({"acme/tiny-llama": demo_folder, "acme/adapter": no_config}) as hub:
        online(monkeypatch, tmp_path, hub)
        with pytest.raises(UserError) as missing:
            inspect_model("acme/misspelt", online=True)
        with pytest.raises(UserError) as adapter:
            inspect_model("acme/adapter", online=True)
    assert missing.value.field == "model.name_or_path"
    assert missing.value.message == (f"no model acme/misspelt on the Hugging Face Hub ({hub.url}), "
                                     "and it is not in the cache")
    assert adapter.value.message == "acme/adapter on the Hugging Face Hub has no config.json"
    assert "adapter-only repositories" in adapter.value.hint


def test_tuiwiz_inspect_reads_a_hub_model_before_its_download(tmp_path, demo_folder):
    with ModelHub({"acme/tiny-llama": demo_folder}) as hub:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
               "HF_TOKEN": ""}
        result = run_cli("inspect", "acme/tiny-llama", env=env, timeout=120)
        as_json = run_cli("inspect", "acme/tiny-llama", "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acme/tiny-llama (Hugging Face Hub, not downloaded)" in result.stdout
    assert "to download" in result.stdout and "LlamaForCausalLM" in result.stdout
    data = json.loads(as_json.stdout)
    assert data["source"] == "hub" and data["num_parameters"] > 1_000_000
