"""What the quickstart teaches the demo model, measured on prompts it never trained on.

Runs `tuiwiz --profile profiles/quickstart.yaml` in a fresh cache (the demo build
included), times the whole command, then answers the held-out demo prompts
greedily with the base model and with the fine-tuned one and scores both:

- exact answers: the greedy answer equals the expected one, character for character (the facts);
- held-out loss: mean cross-entropy of the expected answer's tokens given the prompt;
- answer tokens right (teacher forcing): each answer token predicted from the prompt and the
  *expected* tokens before it, so it measures the form of the answer (template, the animal named
  in the question, the kind of word), not whether the model produces the facts on its own.

The README's before/after table is the first samples of the JSON, quoted as they are
(tests/test_readme_figures.py checks it).

    python bench/demo_learning.py [--json bench/results/demo-learning.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def score(model, tokenizer, pairs: list[tuple[str, str]]) -> dict:
    import torch

    exact = token_right = token_total = 0
    nll = 0.0
    samples = []
    for question, answer in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        exact += text == answer
        target = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False).input_ids
        full = torch.cat([ids, torch.tensor([target])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=full).logits[0, ids.shape[1] - 1:-1]
        token_right += int((logits.argmax(-1) == torch.tensor(target)).sum())
        nll += float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target), reduction="sum"))
        token_total += len(target)
        if len(samples) < 6:
            samples.append({"prompt": question, "expected": answer, "answer": text})
    return {"exact": exact / len(pairs), "exact_count": exact, "held_out_loss": nll / token_total,
            "token_accuracy": token_right / token_total, "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-bench-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state")}
    profile = work / "quickstart.yaml"
    profile.write_text((ROOT / "profiles/quickstart.yaml").read_text().replace("../runs", str(work / "runs")))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stdout, result.stderr, file=sys.stderr)
        return 1
    run = next(p for p in (work / "runs").iterdir() if not p.name.startswith("."))
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["type"] == "log"]

    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuiwiz.demo.build import demo_model_dir, qa_pairs

    _, held_out = qa_pairs()
    tokenizer = AutoTokenizer.from_pretrained(run / "output")
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    before = score(base, tokenizer, held_out)
    tuned = PeftModel.from_pretrained(base, run / "output")
    after = score(tuned, tokenizer, held_out)
    figures = {
        "quickstart_wall_s": round(wall, 1),
        "first_loss": losses[0], "last_loss": losses[-1],  # training loss, first and last logged step
        "held_out_prompts": len(held_out),
        "before": before, "after": after,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
