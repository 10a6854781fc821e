"""What LoRA's dropout costs a training step: the demo model with LoRA r8 on every linear layer, dropout 0.05
(the profile schema's default) against 0 (peft's and LLaMA-Factory's default, and what `tuiwiz recommend`
chooses), forward and backward of the same packed batch (2 rows of 448 tokens), in one process, alternating,
medians and ranges; and the bytes the autograd graph keeps for backward in each (saved_tensors_hooks).

    python bench/lora_dropout.py --json bench/results/lora-dropout.json
    python bench/lora_dropout.py --from-json bench/results/lora-dropout.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DROPOUTS = (0.0, 0.05)


def saved_bytes(model, batch: dict) -> int:
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()  # a tensor kept twice is counted once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)  # the forward is what saves; its loss is not needed
    return sum(seen.values())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json")
    parser.add_argument("--from-json")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuiwiz.demo.build import demo_model_dir, ensure_demo_model

    ensure_demo_model()
    torch.manual_seed(0)
    models = {}
    for p in DROPOUTS:
        base = AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype=torch.float32)
        models[p] = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=p,
                                                    target_modules="all-linear")).train()
    ids = torch.randint(0, models[0.0].config.vocab_size, (2, 448))
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(112).repeat(4).repeat(2, 1)}
    times: dict[float, list[float]] = {p: [] for p in DROPOUTS}
    for i in range(args.repeats + 1):
        for p in (DROPOUTS if i % 2 == 0 else DROPOUTS[::-1]):
            began = time.perf_counter()
            models[p](**batch).loss.backward()
            if i:  # the first round warms up
                times[p].append(time.perf_counter() - began)
    out = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load": os.getloadavg()[0],
           "repeats": args.repeats, "batch": [2, 448],
           "step_s": {str(p): {"median": statistics.median(t), "range": [min(t), max(t)]} for p, t in times.items()},
           "saved_mib": {str(p): saved_bytes(models[p], batch) / 2**20 for p in DROPOUTS}}
    out["ratio"] = out["step_s"]["0.05"]["median"] / out["step_s"]["0.0"]["median"]
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def docs_block(f: dict) -> str:
    """The lines docs/benchmarks.md quotes (tests/test_readme_figures.py checks them)."""
    on, off = f["step_s"]["0.05"], f["step_s"]["0.0"]
    return (f"LoRA dropout on the demo model (r8, every linear layer, 2 packed rows of 448 tokens, forward and "
            f"backward, {f['repeats']} alternating runs, {f['threads']} thread{'s' if f['threads'] > 1 else ''}): "
            f"dropout 0.05 takes "
            f"{on['median'] * 1000:.0f} ms ({on['range'][0] * 1000:.0f} to {on['range'][1] * 1000:.0f}), dropout 0 "
            f"{off['median'] * 1000:.0f} ms ({off['range'][0] * 1000:.0f} to {off['range'][1] * 1000:.0f}): "
            f"{f['ratio']:.2f}x; the graph keeps {f['saved_mib']['0.05']:.0f} MiB for backward against "
            f"{f['saved_mib']['0.0']:.0f} MiB.\n")


if __name__ == "__main__":
    sys.exit(main())
