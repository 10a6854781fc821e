"""What TRL's fused loss head costs in a training step on the CPU, against the model's own whole-logits loss.

TRL 1.x scores every SFT, DPO, KTO, ORPO, SimPO and GRPO step through its fused LM head
(trl.kernels.chunked_logprob): it projects a tile of positions onto the vocabulary at a time and never holds the
whole logits, which is what keeps a 128k vocabulary's logits out of memory (bench/memory_paths.py). On the CPU its
torch fallback makes several passes over each tile and recomputes the projection in the backward. This bench
times one LoRA training step (forward, backward, AdamW; r8 on every linear layer, no dropout, fp32, rows packed
with restarted position_ids as tuiwiz packs them) three ways, alternating, on two models with the demo's blocks
(4 layers, width 128): the demo's own vocabulary and Llama 3's 128,256 tokens (random weights):

- whole logits: the runner's loss over the model's whole logits, with the metrics it logs
  (train/whole_logits.py's whole_logits_loss, what ``training.loss_head: whole`` runs);
- fused, 256-position tiles: TRL's head as tuiwiz runs it on the CPU (train/modeling.py's cap_head_tiles);
- fused, 4096-position tiles: TRL's own tile.

Medians and ranges of the step time over alternating rounds, in one process (the step is the unit; no peak memory
here: memory_paths.py measures that in separate processes).

    python bench/loss_head.py --json bench/results/loss-head.json [--rounds 6]
    python bench/loss_head.py --from-json bench/results/loss-head.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.step_timing import ROW_LENGTH, ROWS, alternating_ms, ms_cells, packed_batch

WIDE_VOCAB = 128_256


def build(vocab: int | None):
    """The demo model (or its blocks with ``vocab`` tokens, random weights) with LoRA r8 and TRL's fused head."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from tuiwiz.demo.build import ensure_demo_model

    torch.manual_seed(0)
    if vocab is None:
        model = AutoModelForCausalLM.from_pretrained(ensure_demo_model(), dtype=torch.float32)
    else:
        config = AutoConfig.from_pretrained(ensure_demo_model())
        config.vocab_size = vocab
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what TRL's SFTTrainer asks for
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer


def step(model, optimizer, inputs: dict, way: str) -> None:
    from trl.kernels import chunked_logprob

    if way == "whole logits":
        from tuiwiz.train.whole_logits import whole_logits_loss

        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        loss = whole_logits_loss(logits, inputs["labels"])[0]
    else:
        chunked_logprob.TOKEN_CHUNK_SIZE = 256 if way == "fused, 256-position tiles" else 4096
        out = model(**inputs, fused_lm_head=True)
        loss = -out.log_probs.sum() / out.label_mask.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


WAYS = ("whole logits", "fused, 256-position tiles", "fused, 4096-position tiles")


def measure(vocab: int | None, rounds: int, steps: int = 4) -> dict:
    model, optimizer = build(vocab)
    inputs = packed_batch(model.config.vocab_size)
    for way in WAYS:  # warm-up
        step(model, optimizer, inputs, way)
    return {"vocab": model.config.vocab_size,
            **alternating_ms(WAYS, rounds, steps, lambda way: step(model, optimizer, inputs, way))}


def docs_block(f: dict) -> str:
    lines = ["| vocabulary | " + " | ".join(f"{way}, ms a step (range)" for way in WAYS) + " | fused 256 / whole |",
             "|---|" + "---|" * (len(WAYS) + 1)]
    for point in f["points"]:
        cells = ms_cells(point, WAYS)
        ratio = point["median_ms"][WAYS[1]] / point["median_ms"][WAYS[0]]
        lines.append(f"| {point['vocab']:,} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    lines.append("")
    lines.append(f"One LoRA step of {f['rows']} packed rows of {f['row_length']} tokens on the demo's blocks, fp32, "
                 f"{f['cpu_count']} CPUs, torch {f['torch']}, TRL {f['trl']}; medians of {f['rounds']} alternating "
                 f"rounds of {f['steps']} steps; load average {f['load'][0]:.1f} to {f['load'][1]:.1f}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json")
    parser.add_argument("--from-json", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    import torch
    import trl

    load = [os.getloadavg()[0]]
    points = [measure(None, args.rounds), measure(WIDE_VOCAB, args.rounds)]
    load.append(os.getloadavg()[0])
    out = {"rows": ROWS, "row_length": ROW_LENGTH, "rounds": args.rounds, "steps": 4, "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "trl": trl.__version__, "load": [min(load), max(load)], "points": points}
    print(docs_block(out), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
