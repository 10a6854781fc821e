"""Every fine-tuning method tuiwiz knows, in one table.

A method's name is the profile's ``method.type``; everything else that depends on the method
(whether peft wraps the model, whether the result can be merged, which learning rate it starts
from, what the memory estimate counts) reads this table instead of spelling names again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["full", "adapter", "prompt"]


@dataclass(frozen=True)
class Method:
    name: str  # the profile's method.type
    title: str  # how the screens and messages name it
    # full: base weights train and the output is a whole model; adapter: small weights beside the
    # frozen base, foldable into it (merge); prompt: virtual tokens before the input, never merged
    family: Family
    uses_peft: bool
    # When the profile leaves training.learning_rate unset, and the recommender's starting point: the rate
    # for a pretrained 7-8B model (hidden size 4096), which it scales by width (docs/settings.md).
    learning_rate: float
    # For a model too small to be a useful pretrained one (a toy, or randomly initialised like the demo):
    # it learns from the data, at rates like those small models train from scratch at. Full fine-tuning's
    # is nanoGPT's for its smallest model; the others are the rates the demo profiles of each method learn
    # at (profiles/demo-*.yaml, tests/test_training.py).
    tiny_learning_rate: float
    low_rank: bool = False  # LoRA-style A and B matrices on each wrapped linear layer
    quantized: bool = False  # the frozen base is loaded in 4 or 8 bits (bitsandbytes)
    virtual_tokens: bool = False  # adds trained tokens to every sequence (prompt and p-tuning)

    @property
    def mergeable(self) -> bool:
        """Its output folds into the base model (``tuiwiz merge``)."""
        return self.family == "adapter"

    @property
    def whole_model(self) -> bool:
        """Its output is a whole model (the base weights trained), not an adapter beside the base."""
        return self.family == "full"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", "full fine-tuning", "full", uses_peft=False, learning_rate=2e-5, tiny_learning_rate=1e-3),
    Method("lora", "LoRA", "adapter", uses_peft=True, learning_rate=2e-4, tiny_learning_rate=2e-3,
           low_rank=True),
    Method("qlora", "QLoRA", "adapter", uses_peft=True, learning_rate=2e-4, tiny_learning_rate=2e-3,
           low_rank=True, quantized=True),
    Method("prompt_tuning", "prompt tuning", "prompt", uses_peft=True, learning_rate=3e-2,
           tiny_learning_rate=3e-2, virtual_tokens=True),
    Method("prefix_tuning", "prefix tuning", "prompt", uses_peft=True, learning_rate=1e-2,
           tiny_learning_rate=3e-2),
    Method("p_tuning", "p-tuning", "prompt", uses_peft=True, learning_rate=1e-2, tiny_learning_rate=1e-2,
           virtual_tokens=True),
    Method("ia3", "IA3", "adapter", uses_peft=True, learning_rate=3e-3, tiny_learning_rate=5e-2),
    Method("adalora", "AdaLoRA", "adapter", uses_peft=True, learning_rate=1e-3, tiny_learning_rate=2e-3,
           low_rank=True),
    # BitFit trains the bias terms of the base model itself: its output is a whole model
    Method("bitfit", "BitFit", "full", uses_peft=False, learning_rate=1e-3, tiny_learning_rate=5e-3),
)}

METHOD_NAMES = tuple(METHODS)


def method(name: str) -> Method:
    return METHODS[name]


@dataclass(frozen=True)
class Unavailable:
    """A method users know that tuiwiz cannot offer, why, and the methods that come closest."""

    name: str
    package: str  # the PyPI package that would bring it
    requirement: str  # that package's newest release and what it requires, as its metadata says
    closest: tuple[str, ...]

    @property
    def why(self) -> str:
        return (f"{self.requirement}; tuiwiz runs on transformers 5 and the two cannot be installed together. "
                f"Closest here: {', '.join(METHODS[m].title for m in self.closest)}")


# tests/test_methods_unavailable.py reads the newest release's metadata from the package index and fails
# when it accepts tuiwiz's transformers: then the row can become a method.
UNAVAILABLE = (
    Unavailable("bottleneck adapters (Houlsby, Pfeiffer; the adapters library)", "adapters",
                "adapters 1.3.0 requires transformers ~=4.57.6", ("lora", "ia3")),
)
