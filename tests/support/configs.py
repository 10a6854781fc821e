"""Model configs of real architectures (tests/fixtures/configs/NAME.json), and models built from them."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "fixtures" / "configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob("*.json"))


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def torch_model(config: dict, device: str = "meta"):
    """The model class the config names, built by transformers (random weights, or none on meta)."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    cls = getattr(transformers, config["architectures"][0])
    with torch.device(device):
        return cls(cfg)


def torch_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def tiny(config: dict) -> dict:
    """The same architecture at toy size (token ids dropped: they would fall outside the small vocabulary)."""
    small = {k: v for k, v in config.items() if k != "rope_scaling"}
    small.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    small.update({k: v for k, v in dict(hidden_size=64, n_embd=64, intermediate_size=96, num_hidden_layers=2,
                                         n_layer=2, num_attention_heads=4, n_head=4, vocab_size=320,
                                         max_position_embeddings=64, n_positions=64, n_ctx=64).items()
                  if k in config})
    if "num_key_value_heads" in config:
        small["num_key_value_heads"] = 4 if config["num_key_value_heads"] == config["num_attention_heads"] else 2
    if config.get("head_dim"):
        small["head_dim"] = 24
    return small
