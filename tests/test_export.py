"""Exports: GGUF read back (names, shapes, metadata, tokenizer, chat template, q/k permutation),
Q8_0, the Ollama Modelfile, merged and adapter folders, the model card, the ONNX and Hub refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuiwiz.errors import UserError

from .support.processes import run_cli
from .support.trained_runs import copy_run, merged_once


@pytest.fixture(scope="module")
def lora_run(trained_run):
    run = trained_run("lora")
    merged_once(run)  # GGUF and Ollama exports reuse the verified merge in RUN/merged
    return run


def hf_tensors(folder):
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return reader, fields


@pytest.mark.slow
def test_gguf_f16_reads_back_with_llama_cpp_names_metadata_and_tokenizer(lora_run, tmp_path):
    import gguf
    from transformers import AutoTokenizer

    from tuiwiz.post.export import export_run

    result = export_run(str(lora_run.path), "gguf", tmp_path / "gguf", quant="f16")
    path = next(p for p in result.files if p.suffix == ".gguf")
    assert (tmp_path / "gguf" / "README.md").exists()
    reader, fields = read_gguf(path)
    merged = lora_run.path / "merged"
    config = json.loads((merged / "config.json").read_text())
    hf = hf_tensors(merged)

    assert len(reader.tensors) == len(hf)
    names = {t.name for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(config["num_hidden_layers"]):
        for part in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                     "ffn_down"):
            expected.add(f"blk.{i}.{part}.weight")
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            expected.add(f"blk.{i}.{part}.bias")
    assert names == expected
    by_name = {t.name: t for t in reader.tensors}
    # GGUF lists dimensions innermost first
    assert list(by_name["token_embd.weight"].shape) == list(reversed(hf["model.embed_tokens.weight"].shape))
    down = hf["model.layers.1.mlp.down_proj.weight"]
    assert list(by_name["blk.1.ffn_down.weight"].shape) == list(reversed(down.shape))
    assert by_name["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert by_name["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_allclose(by_name["output.weight"].data, hf["lm_head.weight"].numpy(), atol=2e-3)

    # llama.cpp's q/k layout: within each head, row 2i is HF row i and row 2i+1 is HF row d/2 + i
    n_head, n_kv, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    for gguf_name, hf_name, heads in (("blk.2.attn_q", "model.layers.2.self_attn.q_proj", n_head),
                                      ("blk.2.attn_k", "model.layers.2.self_attn.k_proj", n_kv)):
        for suffix in (".weight", ".bias"):
            ours = np.asarray(by_name[gguf_name + suffix].data, dtype=np.float32)
            theirs = hf[hf_name + suffix].numpy()
            assert ours.shape[0] == heads * d
            for h in range(heads):
                for i in range(d // 2):
                    np.testing.assert_allclose(ours[h * d + 2 * i], theirs[h * d + i], atol=2e-3)
                    np.testing.assert_allclose(ours[h * d + 2 * i + 1], theirs[h * d + d // 2 + i], atol=2e-3)
    np.testing.assert_allclose(np.asarray(by_name["blk.2.attn_v.weight"].data, dtype=np.float32),
                               hf["model.layers.2.self_attn.v_proj.weight"].numpy(), atol=2e-3)

    assert fields["general.architecture"] == "llama"
    assert fields["llama.context_length"] == config["max_position_embeddings"]
    assert fields["llama.embedding_length"] == config["hidden_size"]
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.feed_forward_length"] == config["intermediate_size"]
    assert fields["llama.attention.head_count"] == n_head
    assert fields["llama.attention.head_count_kv"] == n_kv
    assert fields["llama.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])

    tokenizer = AutoTokenizer.from_pretrained(merged)
    vocab = tokenizer.get_vocab()
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt2"
    assert len(tokens) == len(vocab) and all(tokens[i] == t for t, i in vocab.items())
    types = fields["tokenizer.ggml.token_type"]
    assert types[vocab["<|im_end|>"]] == gguf.TokenType.CONTROL and types[vocab["Ġcow"]] == gguf.TokenType.NORMAL
    merges = json.loads((merged / "tokenizer.json").read_text())["model"]["merges"]
    assert len(fields["tokenizer.ggml.merges"]) == len(merges)
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    template = fields["tokenizer.chat_template"]
    assert "{% generation %}" in tokenizer.chat_template and "{% generation %}" not in template
    # plain Jinja (no transformers extension) renders the GGUF's template as transformers renders the original
    import jinja2

    from tuiwiz.post.export_ollama import PROBE

    plain = jinja2.Environment().from_string(template).render(messages=PROBE, add_generation_prompt=True,
                                                              bos_token=tokenizer.bos_token)
    assert plain == tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_q8_0_and_ollama_modelfile(lora_run, tmp_path):
    import gguf

    from tuiwiz.post.export import export_run
    from tuiwiz.post.export_gguf import permute_qk

    result = export_run(str(lora_run.path), "ollama", tmp_path / "ollama", quant="q8_0")
    folder = tmp_path / "ollama"
    path = next(p for p in result.files if p.suffix == ".gguf")
    reader, fields = read_gguf(path)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    by_name = {t.name: t for t in reader.tensors}
    hf = hf_tensors(lora_run.path / "merged")
    q = by_name["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert by_name["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    config = json.loads((lora_run.path / "merged" / "config.json").read_text())
    expected = permute_qk(hf["model.layers.0.self_attn.q_proj.weight"], config["num_attention_heads"],
                          config["num_attention_heads"]).numpy()
    back = gguf.quants.dequantize(q.data, gguf.GGMLQuantizationType.Q8_0)
    assert back.shape == expected.shape
    assert np.abs(back - expected).max() <= np.abs(expected).max() / 127 + 1e-6
    assert not np.allclose(back, hf["model.layers.0.self_attn.q_proj.weight"].numpy(), atol=1e-2)

    modelfile = (folder / "Modelfile").read_text()
    lines = modelfile.splitlines()
    assert lines[0] == f"FROM ./{path.name}" and (folder / path.name).exists()
    from transformers import AutoTokenizer

    from tuiwiz.post.export_ollama import ollama_template

    translated = ollama_template(AutoTokenizer.from_pretrained(lora_run.path / "merged"))
    assert translated.exact and f'TEMPLATE """{translated.go}"""' in modelfile
    assert "{{ .Role }}" in translated.go and "{{ .Content }}" in translated.go and "<|im_start|>" in translated.go
    assert not any("approximately" in note for note in result.notes)
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    from tuiwiz.post.export_ollama import sampling_defaults

    sampling = sampling_defaults(lora_run.path / "merged")
    assert f"PARAMETER temperature {sampling['temperature']}" in lines
    assert f"PARAMETER top_p {sampling['top_p']}" in lines
    assert f"PARAMETER num_ctx {min(config['max_position_embeddings'], 8192)}" in lines
    assert any("ollama create" in note for note in result.notes)


def test_ollama_sampling_follows_the_models_generation_config(tmp_path):
    from tuiwiz.post.export_ollama import OllamaTemplate, modelfile_text, sampling_defaults

    assert sampling_defaults(tmp_path) == {"temperature": 0.7, "top_p": 0.9}  # tuiwiz chat's, without one
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6,
                                                                 "top_p": 0.95}))
    assert sampling_defaults(tmp_path) == {"temperature": 0.6, "top_p": 0.95}
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert sampling_defaults(tmp_path)["temperature"] == 0.0  # a greedy model stays greedy
    text, _ = modelfile_text("m.gguf", OllamaTemplate(None, (), False), None, context=131072, temperature=0.6)
    assert "PARAMETER num_ctx 8192" in text.splitlines()  # capped: Ollama allocates the whole KV cache


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")


@pytest.mark.parametrize("template, go, stops", [
    (CHATML, "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n",
     ("<|im_end|>", "<|im_start|>")),
    (LLAMA3, "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
             "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n", ("<|eot_id|>", "<|start_header_id|>")),
])
def test_chat_templates_translate_to_go(template, go, stops):
    from transformers import AutoTokenizer

    from tuiwiz.demo.build import ensure_demo_model
    from tuiwiz.post.export_ollama import modelfile_text, ollama_template

    tokenizer = AutoTokenizer.from_pretrained(ensure_demo_model())
    tokenizer.chat_template = template
    translated = ollama_template(tokenizer)
    assert translated.go == go and translated.stops == stops and translated.exact
    text, notes = modelfile_text("m.gguf", translated, "<|im_end|>")
    assert f'TEMPLATE """{go}"""' in text and notes == []
    tokenizer.chat_template = "{{ messages | length }} messages"
    unknown = ollama_template(tokenizer)
    assert unknown.go is None
    text, notes = modelfile_text("m.gguf", unknown, "<|im_end|>")
    assert "TEMPLATE" not in text and "could not be translated" in notes[0]


@pytest.mark.slow
def test_merged_and_adapter_exports_reload_and_carry_a_model_card(lora_run, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from tuiwiz.post.export import export_run
    from tuiwiz.run.events import read_events

    merged = export_run(str(lora_run.path), "merged", tmp_path / "merged")
    assert merged.location == str(tmp_path / "merged") and any("verified" in note for note in merged.notes)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 3

    adapter = export_run(str(lora_run.path), "adapter", tmp_path / "adapter")
    assert {p.name for p in adapter.files} >= {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                                 "tokenizer.json", "chat_template.jinja"}
    assert AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter") is not None

    end = next(e for e in read_events(lora_run.events) if e["type"] == "run_end")
    for folder, library in ((tmp_path / "merged", "transformers"), (tmp_path / "adapter", "peft")):
        card = (folder / "README.md").read_text()
        assert "base_model: demo-sharded" in card and f"library_name: {library}" in card
        assert "**lora**" in card and "`demo:alpaca`" in card
        assert "| training.learning_rate | 0.002 |" in card and "| method.r | 16 |" in card
        assert f"| train_loss | {end['metrics']['train_loss']:.6g} |" in card
        from tuiwiz import __version__

        assert f"tuiwiz {__version__}" in card
        assert "/" not in card.split("base_model: ")[1].splitlines()[0]  # no local path leaks into a card


@pytest.mark.slow
def test_refusals(lora_run, tmp_path, monkeypatch):
    from tuiwiz.post.export import export_run

    result = run_cli("export", lora_run.path, "--format", "zip")
    assert result.returncode == 2 and "unknown export format" in result.stderr and "hint" in result.stderr
    prompt = copy_run(lora_run, tmp_path / "prompt", method="prompt_tuning")
    with pytest.raises(UserError, match="virtual tokens"):
        export_run(str(prompt.path), "gguf", tmp_path / "g")
    with pytest.raises(UserError, match="classification runs"):
        export_run(str(lora_run.path), "onnx", tmp_path / "o")
    assert not (tmp_path / "g").exists() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_hub_needs_a_repo_a_network_and_a_token(lora_run, tmp_path):
    no_repo = run_cli("export", lora_run.path, "--format", "hub")
    assert no_repo.returncode == 2 and "--repo" in no_repo.stderr
    offline = run_cli("export", lora_run.path, "--format", "hub", "--repo", "someone/model",
                      env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr and "Traceback" not in offline.stderr
    no_token = run_cli("export", lora_run.path, "--format", "hub", "--repo", "someone/model",
                       env={"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")})
    assert no_token.returncode == 2 and "no Hugging Face token" in no_token.stderr
    assert "never stores" in no_token.stderr


@pytest.mark.slow
@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "factor": 4.0},
])
def test_gguf_writes_llama3_and_linear_rope_scaling(lora_run, tmp_path, rope):
    """Llama 3.1 and later scale RoPE: llama.cpp reads the llama3 kind as a per-frequency divisor tensor
    (rope_freqs), checked here against transformers' own scaled frequencies; linear as a factor."""
    import shutil

    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tuiwiz.post.export_gguf import write_gguf

    folder = tmp_path / "scaled"
    shutil.copytree(lora_run.path / "merged", folder)
    config = json.loads((folder / "config.json").read_text())
    key = "rope_parameters" if "rope_parameters" in config else "rope_scaling"
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    config[key] = {**rope, "rope_theta": theta}
    (folder / "config.json").write_text(json.dumps(config))
    reader, fields = read_gguf(write_gguf(folder, tmp_path / "scaled.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    if rope["rope_type"] == "linear":
        assert fields["llama.rope.scaling.type"] == "linear" and fields["llama.rope.scaling.factor"] == 4.0
        assert "rope_freqs.weight" not in tensors
        return
    hf = AutoConfig.from_pretrained(folder)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factors = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float64)
    assert factors.shape == (head_dim // 2,)
    # llama.cpp divides each frequency by its factor: that must give transformers' scaled frequencies
    np.testing.assert_allclose(plain.numpy() / factors, scaled.double().numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0 and len(set(factors.round(4))) > 2  # all three bands
    assert len(reader.tensors) == len(hf_tensors(folder)) + 1


def _sentencepiece_llama(folder, text_file):
    """A Llama 2 style model: a SentencePiece BPE tokenizer with byte fallback (trained here), random weights."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder.mkdir()
    spm.SentencePieceTrainer.train(input=str(text_file), model_prefix=str(folder / "sp"), vocab_size=320,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    tokenizer = LlamaTokenizer(vocab_file=str(folder / "sp.model"))
    tokenizer.save_pretrained(folder)  # its config and special tokens; the GGUF vocabulary comes from tokenizer.model
    (folder / "sp.model").rename(folder / "tokenizer.model")  # shipped beside it, as Llama 2 repositories do
    (folder / "sp.vocab").unlink()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_gguf_writes_a_sentencepiece_tokenizer_as_llama_cpp_does(tmp_path):
    """Llama 2 and Mistral v0.1 tokenizers: tokens, scores and types from SentencePiece's tokenizer.model,
    through gguf-py's vocab reader; without a tokenizer.model such a model is refused with a hint."""
    import sentencepiece as spm

    from tuiwiz.post.export_gguf import write_gguf

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"The cow number {i} says moo, and the cat says miaow {i * 7}." for i in range(400)))
    folder = _sentencepiece_llama(tmp_path / "llama2", text)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    reader, fields = read_gguf(write_gguf(folder, tmp_path / "sp.gguf"))
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("llama", "default")
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[:sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    types = fields["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == types[2] == 3  # unknown; control (<s>, </s>): gguf's TokenType
    assert types[sp.piece_to_id("<0x41>")] == 6  # a byte-fallback piece is a byte token
    scores = fields["tokenizer.ggml.scores"]
    assert scores[:sp.vocab_size()] == pytest.approx([sp.get_score(i) for i in range(sp.vocab_size())])
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert "tokenizer.ggml.merges" not in fields  # SentencePiece has scores, not merges
    assert len(tokens) == 320 and {t.name for t in reader.tensors} >= {"token_embd.weight", "output.weight"}
    (folder / "tokenizer.model").unlink()
    with pytest.raises(UserError, match=r"from their tokenizer\.model; this model has neither") as refused:
        write_gguf(folder, tmp_path / "none.gguf")
    assert "tokenizer.model" in refused.value.hint and not (tmp_path / "none.gguf").exists()
