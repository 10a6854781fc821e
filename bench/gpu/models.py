"""The model shapes the GPU runbook measures: real architectures' config.json values, written out so nothing is
downloaded there, and the tiny versions the --dry-run builds on a CPU."""

from __future__ import annotations

_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
          "attention_dropout": 0.0, "initializer_range": 0.02, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
          "tie_word_embeddings": True, "use_sliding_window": False, "torch_dtype": "bfloat16",
          "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151643}

# Qwen/Qwen2.5-{0.5B,1.5B,3B} and meta-llama/Meta-Llama-3-8B, as their config.json files say.
CONFIGS = {
    "qwen2.5-0.5b": {**_QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "max_window_layers": 24, "sliding_window": 32768},
    "qwen2.5-1.5b": {**_QWEN2, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 131072,
                     "max_window_layers": 21, "sliding_window": 131072},
    "qwen2.5-3b": {**_QWEN2, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                   "max_window_layers": 70, "sliding_window": 32768},
    "llama3-8b": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                  "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
                  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
                  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
                  "torch_dtype": "bfloat16", "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001},
}

# The same layouts (tying, grouped KV heads, gated MLP) a few thousand times smaller: the dry run's shapes.
TINY = {
    "qwen2.5-0.5b": {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2},
    "qwen2.5-1.5b": {"hidden_size": 96, "intermediate_size": 224, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2},
    "qwen2.5-3b": {"hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2},
    "llama3-8b": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2},
}
TINY_COMMON = {"vocab_size": 1024, "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": 2,
               "max_window_layers": 2, "sliding_window": 4096}


def config(arch: str, tiny: bool = False) -> dict:
    """The config.json dict of ``arch``; its tiny version for the dry run."""
    values = dict(CONFIGS[arch])
    if tiny:
        values.update(TINY[arch])
        values.update({k: v for k, v in TINY_COMMON.items() if k in values or k.endswith("token_id")})
    return values
