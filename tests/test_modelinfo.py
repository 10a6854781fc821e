"""Model inspection from files: counts against torch's own, safetensors headers, the cache, and the errors."""

import json
import struct
from pathlib import Path

import pytest

from tuiwiz.errors import UserError
from tuiwiz.plan.architectures import config_parameter_count
from tuiwiz.plan.modelinfo import cached_models, inspect_model, model_from_config
from tuiwiz.plan.weights import read_safetensors_header

from .support.configs import CONFIG_NAMES, load_config, tiny, torch_count, torch_model
from .support.hub import fake_hub_cache

REQUIRED = {"llama3-8b", "qwen2.5-0.5b", "qwen2.5-7b", "mistral-7b", "phi3-mini-4k", "gemma2-2b", "gpt2",
            "bert-base-uncased", "qwen-7b"}
# what transformers can build; a config with auto_map needs its repository's own code (Qwen-7B's modeling_qwen.py)
IN_TRANSFORMERS = [name for name in CONFIG_NAMES if "auto_map" not in load_config(name)]


def test_fixtures_cover_the_required_architectures():
    assert REQUIRED <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", IN_TRANSFORMERS)
def test_config_count_is_exact(name):
    config = load_config(name)
    assert config_parameter_count(config) == torch_count(torch_model(config))


@pytest.mark.parametrize("name", IN_TRANSFORMERS)
def test_saved_weights_are_read_from_safetensors_headers(name, tmp_path):
    config = tiny(load_config(name))
    model = torch_model(config, "cpu")
    model.save_pretrained(tmp_path)
    info = inspect_model(str(tmp_path))
    assert info.parameter_source == "safetensors"
    assert info.num_parameters == torch_count(model) == info.config_parameters
    from_config = model_from_config(config)
    # module names and shapes found in the weights agree with the per-architecture table
    assert set(info.linear_layers) == set(from_config.linear_layers)
    assert info.linear_modules == from_config.linear_modules
    assert info.bias_parameters == from_config.bias_parameters == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    import torch

    linear_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    assert set(info.linear_modules) <= linear_names


def test_sharded_checkpoint(tmp_path):
    config = tiny(load_config("qwen2.5-0.5b"))
    model = torch_model(config, "cpu")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    info = inspect_model(str(tmp_path))
    assert len(info.weight_files) > 1
    assert info.num_parameters == torch_count(model)
    assert info.tie_word_embeddings and info.lm_head_parameters == 0


def test_fields_from_config():
    info = model_from_config(load_config("llama3-8b"))
    assert (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads, info.head_dim) == (32, 4096, 32, 8,
                                                                                                     128)
    assert (info.intermediate_size, info.vocab_size, info.context_length, info.dtype) == (14336, 128256, 8192,
                                                                                          "bfloat16")
    assert info.linear_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert not info.tie_word_embeddings
    gemma = model_from_config(load_config("gemma2-2b"))
    assert gemma.tie_word_embeddings and gemma.head_dim == 256  # explicit head_dim, not hidden / heads
    gpt2 = model_from_config(load_config("gpt2"))
    assert gpt2.linear_modules == ("c_attn", "c_proj", "c_fc") and gpt2.intermediate_size == 4 * 768


def test_qwen1_intermediate_size_counts_both_halves_of_its_mlp():
    """Qwen-7B (model_type qwen, remote code): w1 and w2 are each intermediate_size // 2 wide."""
    info = model_from_config(load_config("qwen-7b"))
    assert info.known_architecture and not info.warnings
    assert info.num_parameters == 7_721_324_544  # Qwen-7B's published count
    assert info.linear_modules == ("c_attn", "c_proj", "w1", "w2")  # what LoRA targets name in modeling_qwen.py
    assert (info.intermediate_size, info.head_dim, info.context_length) == (11008, 128, 8192)  # kv_channels
    assert not info.tie_word_embeddings and info.lm_head_parameters == 151936 * 4096
    assert info.bias_parameters == 32 * 3 * 4096  # c_attn alone has a bias (no_bias covers the rest)


def test_qwen1_weights_agree_with_the_table(tmp_path):
    """Tensor names and shapes as modeling_qwen.py's QWenLMHeadModel saves them (transformers cannot build it)."""
    config = load_config("qwen-7b")
    config.update(hidden_size=64, num_attention_heads=4, kv_channels=16, intermediate_size=192, num_hidden_layers=2,
                  vocab_size=320)
    (tmp_path / "config.json").write_text(json.dumps(config))
    H, V, mlp = 64, 320, 96
    shapes = {"transformer.wte.weight": (V, H), "transformer.ln_f.weight": (H,), "lm_head.weight": (V, H),
              "transformer.rotary_emb.inv_freq": (8,)}  # a buffer older checkpoints saved
    for i in range(2):
        block = f"transformer.h.{i}."
        shapes.update({block + "ln_1.weight": (H,), block + "attn.c_attn.weight": (3 * H, H),
                       block + "attn.c_attn.bias": (3 * H,), block + "attn.c_proj.weight": (H, H),
                       block + "ln_2.weight": (H,), block + "mlp.w1.weight": (mlp, H),
                       block + "mlp.w2.weight": (mlp, H), block + "mlp.c_proj.weight": (H, mlp)})
    write_safetensors(tmp_path / "model.safetensors", shapes)
    info = inspect_model(str(tmp_path))
    assert info.parameter_source == "safetensors" and info.num_parameters == info.config_parameters
    from_config = model_from_config(config)
    assert info.linear_layers == from_config.linear_layers and info.linear_modules == ("c_attn", "c_proj", "w1", "w2")
    assert info.bias_parameters == from_config.bias_parameters == 2 * 3 * H


def test_nested_text_config_is_used():
    outer = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "torch_dtype": "float16",
             "vision_config": {"hidden_size": 1024}, "text_config": load_config("llama3-8b")}
    info = model_from_config(outer)
    assert info.model_type == "llama" and info.known_architecture
    assert info.num_parameters == config_parameter_count(load_config("llama3-8b"))


def test_builtin_minilm_real_weights():
    info = inspect_model("minilm")
    assert info.source == "builtin" and info.model_type == "bert"
    assert info.parameter_source == "safetensors"
    assert info.num_parameters == info.config_parameters  # BertModel: with its pooler
    assert info.license == "apache-2.0"
    assert info.size_on_disk > info.num_parameters * 4  # fp32 weights plus tokenizer files


def test_demo_not_built_then_built(tmp_path, monkeypatch):
    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="not built yet"):
        inspect_model("demo")
    info = inspect_model("demo", build_demo=True)
    assert info.source == "builtin" and info.parameter_source == "safetensors"
    assert info.num_parameters == info.config_parameters


def test_unknown_architecture(tmp_path):
    config = {"model_type": "mystery", "architectures": ["MysteryForCausalLM"], "hidden_size": 256,
              "num_hidden_layers": 4, "num_attention_heads": 8, "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    info = inspect_model(str(tmp_path))
    assert not info.known_architecture and info.parameter_source == "estimate"
    assert any("unknown architecture" in w for w in info.warnings)
    # weights, when present, still give the exact count
    write_safetensors(tmp_path / "model.safetensors", {"blocks.0.mix.weight": (256, 256), "embed.weight": (1000, 256)})
    info = inspect_model(str(tmp_path))
    assert info.parameter_source == "safetensors" and info.num_parameters == 256 * 256 + 1000 * 256


def write_safetensors(path: Path, shapes: dict, *, corrupt: str | None = None) -> None:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4
        for s in shape:
            size *= s
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * offset
    if corrupt == "truncated":
        data = data[: len(data) - 8]
    elif corrupt == "length":
        data = struct.pack("<Q", 10**9) + data[8:]
    elif corrupt == "json":
        data = struct.pack("<Q", len(raw)) + raw[:-3] + b"!!!" + b"\0" * offset
    elif corrupt == "short":
        data = b"\x01\x02"
    path.write_bytes(data)


@pytest.mark.parametrize("corrupt, message", [
    ("truncated", "truncated safetensors"), ("length", "runs past the end"), ("json", "bad safetensors header"),
    ("short", "shorter than"),
])
def test_corrupt_safetensors(tmp_path, corrupt, message):
    (tmp_path / "config.json").write_text(json.dumps(tiny(load_config("llama3-8b"))))
    target = tmp_path / "model.safetensors"
    write_safetensors(target, {"model.embed_tokens.weight": (320, 64)}, corrupt=corrupt)
    with pytest.raises(UserError, match=message) as info:
        inspect_model(str(tmp_path))
    assert info.value.file == str(target) and info.value.hint


def test_header_of_a_good_file(tmp_path):
    write_safetensors(tmp_path / "w.safetensors", {"a.weight": (3, 4), "b.bias": (5,)})
    tensors = read_safetensors_header(tmp_path / "w.safetensors")
    assert [(t.name, t.shape, t.numel) for t in tensors] == [("a.weight", (3, 4), 12), ("b.bias", (5,), 5)]


def test_missing_shard(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny(load_config("llama3-8b"))))
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="missing") as info:
        inspect_model(str(tmp_path))
    assert info.value.file.endswith("model.safetensors.index.json")


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match=r"no config\.json") as info:
        inspect_model(str(tmp_path))
    assert info.value.hint


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    with pytest.raises(UserError, match="not valid JSON") as info:
        inspect_model(str(tmp_path))
    assert info.value.file == str(tmp_path / "config.json") and info.value.line == 3
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        inspect_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="lacks the model's shape"):
        inspect_model(str(tmp_path))


def test_missing_folder_and_uncached_hub_id(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        inspect_model(str(tmp_path / "nope") + "/")
    with pytest.raises(UserError, match="not in the Hugging Face cache") as info:
        inspect_model("someone/not-downloaded", cache_dir=tmp_path)
    assert "download" in info.value.hint


def test_hugging_face_cache(tmp_path):
    config = tiny(load_config("qwen2.5-0.5b"))
    model = torch_model(config, "cpu")
    weights_dir = tmp_path / "saved"
    model.save_pretrained(weights_dir)
    files = {"config.json": (weights_dir / "config.json").read_bytes(),
             "model.safetensors": (weights_dir / "model.safetensors").read_bytes(),
             "README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n"}
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "acme/tiny-qwen", files)
    info = inspect_model("acme/tiny-qwen", cache_dir=cache)
    assert info.source == "hf-cache" and info.num_parameters == torch_count(model)
    assert info.license == "apache-2.0"
    listed = cached_models(cache)
    assert [m.repo_id for m in listed] == ["acme/tiny-qwen"]
    assert listed[0].size_on_disk == sum(len(b) for b in files.values())
    assert cached_models(tmp_path / "no-cache-here") == ()
