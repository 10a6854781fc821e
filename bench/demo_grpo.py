"""GRPO on the demo: does exact-answer accuracy on questions GRPO never sampled rise over the run?

Runs profiles/demo-grpo.yaml as shipped (SFT on demo:compare-sft, then GRPO on demo:compare with an
exact-answer reward) through `tuiwiz --profile` in a fresh cache, once for each training seed (both
stages' ``training.seed``; 42, the default, is the profile as shipped), and answers greedily with the SFT
stage's model and with the GRPO stage's, scored by the run's own exact_answer reward, on the three disjoint
parts of the pairs of number words (tuiwiz/demo/compare.py):

- held_out: demo:compare-heldout, pairs neither stage trained on;
- grpo: demo:compare, the questions GRPO sampled on;
- sft: demo:compare-sft, the pairs SFT trained on.

Each part also counts the replies that are one of the question's two words (the format SFT taught).

    python bench/demo_grpo.py --json bench/results/demo-grpo.json
    python bench/demo_grpo.py --from-json bench/results/demo-grpo.json   # print the docs block
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

PROFILE = "demo-grpo.yaml"
SHIPPED_SEED = 42  # the schema's default: the shipped profile sets none
PARTS = {"held_out": "compare-heldout", "grpo": "compare", "sft": "compare-sft"}


def run_seed(seed: int, folder: Path, env: dict) -> tuple[dict[str, Path], float]:
    """Run the profile with ``seed`` in both stages: (stage name -> run folder, seconds the command took)."""
    data = yaml.safe_load((ROOT / "profiles" / PROFILE).read_text())
    data["output"] = {**data.get("output", {}), "runs_dir": str(folder / "runs"), "report_to": []}
    if seed != SHIPPED_SEED:
        for stage in data["stages"]:
            stage.setdefault("training", {})["seed"] = seed
    path = folder / PROFILE
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(path)], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode:
        sys.exit(result.stdout + result.stderr)
    from tuiwiz.run.pipeline import PipelineDir

    pipe = next(PipelineDir(p) for p in (folder / "runs").iterdir() if (p / "pipeline.json").exists())
    return {s.name: Path(s.run) for s in pipe.read().stages}, seconds


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def accuracy(output: Path, pattern: str) -> dict:
    """Greedy replies of the model in ``output`` to every question of each part, scored by exact_answer."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from tuiwiz.demo.compare import questions, the_two_words
    from tuiwiz.profile.schema import ExactAnswerReward
    from tuiwiz.train.rewards import exact_answer_reward

    exact = exact_answer_reward(ExactAnswerReward(pattern=pattern))
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoPeftModelForCausalLM.from_pretrained(output).merge_and_unload().eval()
    figures = {}
    for key, name in PARTS.items():
        records = questions(name)
        replies = []
        for record in records:
            text = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                                 add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        right = exact(prompts=[r["prompt"] for r in records], completions=replies,
                      answer=[r["answer"] for r in records])
        in_question = sum(reply.rstrip(".") in the_two_words(r["prompt"]) for r, reply in zip(records, replies))
        figures[key] = {"right": int(sum(right)), "of": len(records), "one_of_the_two_words": in_question,
                        "samples": [{"prompt": r["prompt"], "reply": a} for r, a in list(zip(records, replies))[:3]]}
    return figures


def measure(seed: int, root: Path) -> dict:
    folder = root / f"seed-{seed}"
    folder.mkdir()
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(folder / "cache"), "TUIWIZ_STATE_DIR": str(folder / "state"),
           "HF_HUB_OFFLINE": "1"}
    os.environ.update({k: env[k] for k in ("TUIWIZ_CACHE_DIR", "TUIWIZ_STATE_DIR")})  # the demo data here too
    load_before = os.getloadavg()
    runs, seconds = run_seed(seed, folder, env)
    load_after = os.getloadavg()
    stage_seconds = {}
    for name, run in runs.items():
        events = _events(run)
        stage_seconds[name] = round(events[-1]["time"] - events[0]["time"], 1)
    grpo_events = _events(runs["grpo"])
    rewards = [e["task_metrics"]["reward"] for e in grpo_events if e["type"] == "log"
               and "reward" in (e.get("task_metrics") or {})]
    start = next(e for e in grpo_events if e["type"] == "run_start")
    pattern = yaml.safe_load((ROOT / "profiles" / PROFILE).read_text())["stages"][1]["grpo"]["rewards"][0]["pattern"]
    return {"seed": seed, "wall_s": round(seconds, 1), "stage_s": stage_seconds,
            "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            "grpo_max_steps": start["max_steps"],
            "sampled_reward_first_last": [round(rewards[0], 4), round(rewards[-1], 4)],
            "before": accuracy(runs["sft"] / "output", pattern), "after": accuracy(runs["grpo"] / "output", pattern)}


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)} to {max(values)}"


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    first = f["seeds"][0]
    of = {key: first["before"][key]["of"] for key in PARTS}
    rows = ["| training seed | held out of both stages: after SFT → after GRPO | GRPO's questions | SFT's "
            "questions | mean sampled reward, first → last log | whole command |", "|---|---|---|---|---|---|"]
    for s in f["seeds"]:
        cells = [f"{s['before'][k]['right']} → {s['after'][k]['right']} of {of[k]}" for k in PARTS]
        first_reward, last_reward = s["sampled_reward_first_last"]
        name = f"{s['seed']} (as shipped)" if s["seed"] == SHIPPED_SEED else str(s["seed"])
        rows.append(f"| {name} | {' | '.join(cells)} | {first_reward:.2f} → {last_reward:.2f} | "
                    f"{s['wall_s']:.0f} s (SFT {s['stage_s']['sft']:.0f} s, GRPO {s['stage_s']['grpo']:.0f} s) |")
    before = [s["before"]["held_out"]["right"] for s in f["seeds"]]
    after = [s["after"]["held_out"]["right"] for s in f["seeds"]]
    rises = ", ".join(f"{a - b:+d}" for b, a in zip(before, after))
    named = {when: [s[when]["held_out"]["one_of_the_two_words"] for s in f["seeds"]] for when in ("before", "after")}
    rows.append("")
    rows.append(f"Held out ({of['held_out']} questions, {len(f['seeds'])} seeds): after SFT {_span(before)} right, "
                f"after GRPO {_span(after)}; the change in each seed {rises}. Replies that are one of the "
                f"question's two words: {_span(named['before'])} after SFT, {_span(named['after'])} after GRPO.")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of figures written before")
    parser.add_argument("--seeds", type=int, nargs="+", default=[SHIPPED_SEED, 1, 2], help="training seeds")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return
    figures = {"profile": f"profiles/{PROFILE}", "cpu_count": os.cpu_count(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "seeds": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            figures["seeds"].append(measure(seed, Path(tmp)))
            s = figures["seeds"][-1]
            print(f"seed {seed}: " + ", ".join(f"{k} {s['before'][k]['right']} -> {s['after'][k]['right']} of "
                                               f"{s['after'][k]['of']}" for k in PARTS)
                  + f"; sampled reward {s['sampled_reward_first_last']}; {s['wall_s']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(docs_block(figures), end="")


if __name__ == "__main__":
    main()
