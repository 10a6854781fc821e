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

    python bench/demo_learning.py --json bench/results/demo-learning.json --readme README.md
    python bench/demo_learning.py --from-json bench/results/demo-learning.json   # README block only
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


README_START, README_END = "<!-- demo-learning: start -->", "<!-- demo-learning: end -->"


def _cell(text: str, width: int) -> str:
    shown = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def readme_block(figures: dict) -> str:
    """The README's before/after lines, made from the figures alone (quoted, never retyped)."""
    before, after, n = figures["before"], figures["after"], figures["held_out_prompts"]
    lines = [
        README_START,
        f"On {n} held-out prompts (never trained on), before and after the quickstart: exact answers "
        f"{before['exact_count']} → {after['exact_count']} of {n}; held-out loss {before['held_out_loss']:.2f} → "
        f"{after['held_out_loss']:.2f}; answer tokens predicted right when each is given the expected tokens "
        f"before it (teacher forcing: the form of the answer, not its facts) {before['token_accuracy']:.0%} → "
        f"{after['token_accuracy']:.0%}. Training loss {figures['first_loss']:.2f} → {figures['last_loss']:.2f}.",
        "",
        "```",
        f"{'prompt':32}{'before training':35}after the quickstart",
    ]
    for b, a in list(zip(before["samples"], after["samples"]))[:3]:
        lines.append(f"{_cell(b['prompt'], 30):32}{_cell(b['answer'], 33):35}{_cell(a['answer'], 40)}")
    lines += ["```"]
    if figures.get("summary"):
        lines += ["", "The quickstart ends by saying what to do next, with the run's id (the benchmark run's last "
                  "lines, its folder paths relative):", "", "```", *figures["summary"], "```"]
    lines.append(README_END)
    return "\n".join(lines)


def write_readme(figures: dict, readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_block(figures) + text[end:], encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--readme", help="rewrite this README's demo-learning block from the figures")
    parser.add_argument("--from-json", help="take the figures from this file instead of measuring")
    args = parser.parse_args()
    if args.from_json:
        figures = json.loads(Path(args.from_json).read_text())
        for page in ([args.readme] if args.readme else [ROOT / "README.md", ROOT / "docs" / "benchmarks.md"]):
            write_readme(figures, Path(page))
        return 0
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
    lines = result.stdout.replace(f"{work}/", "").splitlines()
    summary = lines[next(i for i, line in enumerate(lines) if line.startswith("completed:")):]
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
        "load_average_1m": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),  # this machine is shared
        "first_loss": losses[0], "last_loss": losses[-1],  # training loss, first and last logged step
        "held_out_prompts": len(held_out),
        "summary": summary,  # what `tuiwiz --profile` printed last
        "before": before, "after": after,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if args.readme:
        for page in (Path(args.readme), ROOT / "docs" / "benchmarks.md"):
            write_readme(figures, page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
