"""GRPO on the demo: does exact-answer accuracy rise over a run started from SFT?

Runs the quickstart (LoRA SFT of the demo model on demo:alpaca), then GRPO from it (``model.start_from``)
on demo:arithmetic with an exact-answer reward, both through `tuiwiz --profile` in a fresh cache, and
answers greedily with the SFT model and with SFT + GRPO, scored by the run's own exact_answer reward:

- grpo prompts: demo:arithmetic, the sums GRPO sampled on;
- held out: demo:arithmetic-heldout, sums the SFT data has and GRPO never saw;
- never trained: the sums the alpaca data holds out (their answers, four and thirteen, no training shows).

    python bench/demo_grpo.py --json bench/results/demo-grpo.json
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAST_WORD = r"(\w+)\W*$"
# What worked on 2 CPU cores (docs/grpo.md): a low temperature, so that most samples are the SFT model's
# own answers and the reward tells them apart; 4 prompts x 8 completions a step.
GRPO_PROFILE = {
    "version": 1, "task": "grpo",
    "model": {"name_or_path": "demo", "start_from": None},
    "data": {"path": "demo:arithmetic", "max_length": 64},
    "method": {"type": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0},
    "grpo": {"num_generations": 8, "max_completion_length": 12, "temperature": 0.4, "log_completions": 4,
             "rewards": [{"type": "exact_answer", "pattern": LAST_WORD}]},
    "training": {"max_steps": 160, "learning_rate": 0.0003, "per_device_train_batch_size": 32,
                 "logging_steps": 10, "save_steps": 1000},
    "output": {"runs_dir": None, "report_to": []},
}


def run_profile(profile: dict, folder: Path, env: dict) -> tuple[Path, float]:
    """(the run's folder, seconds the whole command took)."""
    path = folder / f"{profile['task']}.yaml"
    profile["output"]["runs_dir"] = str(folder / profile["task"])
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(path)], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode:
        sys.exit(result.stdout + result.stderr)
    return next((folder / profile["task"]).glob("[!.]*")), seconds


def answer_sets() -> dict[str, list[dict]]:
    from tuiwiz.demo.arithmetic import records
    from tuiwiz.demo.build import qa_pairs

    never = [{"prompt": q, "answer": a.rstrip(".").rsplit(" ", 1)[1]} for q, a in qa_pairs()[1] if " plus " in q]
    return {"grpo_prompts": records("arithmetic"), "held_out": records("arithmetic-heldout"), "never_trained": never}


def accuracy(output: Path, sets: dict[str, list[dict]]) -> dict:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from tuiwiz.profile.schema import ExactAnswerReward
    from tuiwiz.train.rewards import exact_answer_reward

    exact = exact_answer_reward(ExactAnswerReward(pattern=LAST_WORD))
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoPeftModelForCausalLM.from_pretrained(output).merge_and_unload().eval()
    figures = {}
    for name, records in sets.items():
        answers = []
        for record in records:
            text = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                                 add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        right = exact(prompts=[r["prompt"] for r in records], completions=answers,
                      answer=[r["answer"] for r in records])
        figures[name] = {"right": int(sum(right)), "of": len(records),
                         "samples": [{"prompt": r["prompt"], "answer": a} for r, a in list(zip(records, answers))[:4]]}
    return figures


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    names = {"grpo_prompts": "the sums GRPO sampled on", "held_out": "held out of GRPO (the SFT data has them)",
             "never_trained": "sums no training data answers"}
    rows = ["| greedy exact answers | before GRPO (after SFT) | after GRPO |", "|---|---|---|"]
    for key, name in names.items():
        before, after = f["before"][key], f["after"][key]
        rows.append(f"| {name} | {before['right']} of {before['of']} | {after['right']} of {after['of']} |")
    first, last = f["sampled_reward_first_last"]
    rows.append(f"| mean sampled reward, first and last log | {first:.3f} | {last:.3f} |")
    rows.append(f"| wall time | SFT {f['sft_seconds']:.0f} s | GRPO {f['grpo_seconds']:.0f} s |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "TUIWIZ_CACHE_DIR": str(folder / "cache"), "TUIWIZ_STATE_DIR": str(folder / "state"),
               "HF_HUB_OFFLINE": "1"}
        os.environ.update({k: env[k] for k in ("TUIWIZ_CACHE_DIR", "TUIWIZ_STATE_DIR")})  # the demo data here too
        sft = yaml.safe_load((ROOT / "profiles" / "quickstart.yaml").read_text())
        sft["output"]["report_to"] = []
        sft_run, sft_seconds = run_profile(sft, folder, env)
        grpo = json.loads(json.dumps(GRPO_PROFILE))
        grpo["model"]["start_from"] = str(sft_run)
        grpo_run, grpo_seconds = run_profile(grpo, folder, env)
        events = [json.loads(line) for line in (grpo_run / "events.jsonl").read_text().splitlines()]
        rewards = [e["task_metrics"]["reward"] for e in events if e["type"] == "log"]
        sets = answer_sets()
        figures = {
            "sft_profile": "profiles/quickstart.yaml", "grpo_profile": GRPO_PROFILE, "cpu_count": os.cpu_count(),
            "sft_seconds": round(sft_seconds, 1), "grpo_seconds": round(grpo_seconds, 1),
            "sampled_reward_first_last": [rewards[0], rewards[-1]],
            "before": accuracy(sft_run / "output", sets), "after": accuracy(grpo_run / "output", sets),
        }
    for name in sets:
        before, after = figures["before"][name], figures["after"][name]
        print(f"{name}: {before['right']} -> {after['right']} of {after['of']} (greedy, exact answer)")
    print(f"sampled reward {rewards[0]:.3f} -> {rewards[-1]:.3f}; SFT {sft_seconds:.0f} s, GRPO {grpo_seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
