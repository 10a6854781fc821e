"""What fusing each LoRA layer into one autograd function (tuiwiz/train/fused_lora.py) saves in a training step.

One LoRA training step (forward, backward, AdamW; r8 on every linear layer, fp32, the loss over the
whole logits as the runner scores SFT on the CPU, rows packed with restarted position_ids as tuiwiz packs them:
2 rows of 448 tokens), two ways, alternating, on the same model and batch: peft's own ``lora.Linear`` forward, and
the same layers fused as the runner runs them. Two widths: the demo model (4 layers, width 128), and its blocks at
width 512 (intermediate 1,376; random weights), where the matrix products are a larger share of the step; both
without LoRA dropout (what `tuiwiz recommend` sets), and the demo with the schema's default dropout, 0.05.
Medians and ranges of the step time over alternating rounds, in one process; the first step's loss of each way,
which must agree.

    python bench/lora_speed.py --json bench/results/lora-speed.json [--rounds 6]
    python bench/lora_speed.py --from-json bench/results/lora-speed.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.step_timing import ROW_LENGTH, ROWS, alternating_ms, ms_cells, packed_batch  # noqa: E402

WAYS = ("peft's forward", "fused (tuiwiz)")


def build(width: int | None, fused: bool, dropout: float = 0.0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuiwiz.demo.build import ensure_demo_model
    from tuiwiz.train.fused_lora import fuse

    torch.manual_seed(0)
    if width is None:
        model = AutoModelForCausalLM.from_pretrained(ensure_demo_model(), dtype=torch.float32)
    else:
        config = AutoConfig.from_pretrained(ensure_demo_model())
        config.hidden_size, config.intermediate_size = width, width * 43 // 16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    if fused:
        assert fuse(model)[0] > 0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model.train(), optimizer


def step(model, optimizer, inputs: dict) -> float:
    from tuiwiz.train.whole_logits import whole_logits_loss

    logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
    loss = whole_logits_loss(logits, inputs["labels"])[0]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def measure(width: int | None, rounds: int, steps: int, dropout: float = 0.0) -> dict:
    pairs = {way: build(width, fused=way == WAYS[1], dropout=dropout) for way in WAYS}
    inputs = packed_batch(pairs[WAYS[0]][0].config.vocab_size)
    import torch

    first_loss = {}
    for way, pair in pairs.items():  # also the warm-up; seeded alike, so a dropout draws the same masks
        torch.manual_seed(2)
        first_loss[way] = step(*pair, inputs)
    timed = alternating_ms(WAYS, rounds, steps, lambda way: step(*pairs[way], inputs))
    config = pairs[WAYS[0]][0].config
    return {"width": config.hidden_size, "layers": config.num_hidden_layers, "dropout": dropout, **timed,
            "first_loss": first_loss}


def docs_block(f: dict) -> str:
    ways = " | ".join(f"{way}, ms a step (range)" for way in WAYS)
    lines = [f"| width | LoRA dropout | {ways} | fused / peft |",
             "|---|---|" + "---|" * (len(WAYS) + 1)]
    for point in f["points"]:
        cells = ms_cells(point, WAYS)
        ratio = point["median_ms"][WAYS[1]] / point["median_ms"][WAYS[0]]
        lines.append(f"| {point['width']} | {point.get('dropout', 0.0):g} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    lines.append("")
    losses = "; ".join(f"width {p['width']}, dropout {p.get('dropout', 0.0):g}: "
                       + " and ".join(f"{v:.6f}" for v in p["first_loss"].values()) for p in f["points"])
    lines.append(f"One LoRA step (r8 on every linear layer) of {f['rows']} packed rows of {f['row_length']} tokens, "
                 f"fp32, {f['cpu_count']} CPUs, torch {f['torch']}, peft {f['peft']}; medians of {f['rounds']} "
                 f"alternating rounds of {f['steps']} steps; load average {f['load'][0]:.1f} to {f['load'][1]:.1f}. "
                 f"First step's loss, each way: {losses}.")
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
    import peft
    import torch

    load = [os.getloadavg()[0]]
    points = [measure(None, args.rounds, steps=4), measure(512, args.rounds, steps=2),
              measure(None, args.rounds, steps=4, dropout=0.05)]
    load.append(os.getloadavg()[0])
    out = {"rows": ROWS, "row_length": ROW_LENGTH, "rounds": args.rounds, "steps": "4 (width 128), 2 (width 512)",
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "peft": peft.__version__,
           "load": [round(x, 2) for x in load], "points": points}
    print(docs_block(out), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
