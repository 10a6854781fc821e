"""The demo profiles of the tasks past SFT, run as shipped: what moved, by how much, over how many held-out
items, and the wall time of each whole command (2-core CPU here; a fresh cache, so the demo builds count).

- demo-dpo.yaml (SFT then DPO): greedy answers to the 27 held-out preference questions, after the SFT
  stage and after the DPO stage: how many begin "Sure!" (the chosen style) and how many are the chosen
  reply exactly; the DPO stage's held-out reward margin at its first and last evaluation.
- demo-kto.yaml, demo-simpo.yaml (SFT then KTO, SFT then SimPO): the same, for their preference stage; KTO's
  margin is its eval rewards of the desirable completions over the undesirable ones.
- demo-orpo.yaml (ORPO straight from the demo model): the held-out answers of the untrained demo model and after
  ORPO; ORPO's held-out reward margin at its first and last evaluation.
- demo-reward.yaml: the reward model's held-out pairwise accuracy (27 pairs).
- demo-seq2seq.yaml: held-out exact match and ROUGE-L of the untrained demo T5 and of the trained run
  (80 held-out questions, greedy).
- demo-grpo.yaml (SFT then GRPO): the mean sampled reward at the GRPO stage's first and last log
  (bench/demo_grpo.py measures greedy exact answers on held-out pairs of number words).
- demo-pipeline.yaml (SFT, reward model, GRPO): every stage's status and time, the reward model's
  held-out accuracy, the GRPO stage's sampled reward, and the share of its sampled completions that begin
  "Sure!" in its first and last samples.

    python bench/demo_tasks.py --json bench/results/demo-tasks.json
    python bench/demo_tasks.py --from-json bench/results/demo-tasks.json   # print the docs block
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

STYLE = "Sure!"


def run_shipped(name: str, folder: Path, env: dict) -> tuple[float, int, str]:
    """Run profiles/NAME as shipped (its runs sent to ``folder``, no trackers). (seconds, exit code, output)."""
    data = yaml.safe_load((ROOT / "profiles" / name).read_text())
    data["output"] = {**data.get("output", {}), "runs_dir": str(folder / "runs"), "report_to": []}
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(path)], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    return time.perf_counter() - began, result.returncode, result.stdout + result.stderr


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def _stage_runs(folder: Path) -> dict[str, Path]:
    from tuiwiz.run.pipeline import PipelineDir

    pipe = next(PipelineDir(p) for p in (folder / "runs").iterdir() if (p / "pipeline.json").exists())
    return {s.name: Path(s.run) for s in pipe.read().stages}


def _evals(run: Path, key: str) -> list[float]:
    return [e[key] for e in _events(run) if e["type"] == "eval" and key in e]


def _greedy(output: Path, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    if (Path(output) / "adapter_config.json").exists():
        model = AutoPeftModelForCausalLM.from_pretrained(output).merge_and_unload().eval()
    else:  # a whole model: the untrained demo
        model = AutoModelForCausalLM.from_pretrained(output).eval()
    answers = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def _style(answers: list[str], chosen: list[str]) -> dict:
    return {"questions": len(answers), "begin_with_style": sum(a.startswith(STYLE) for a in answers),
            "exactly_chosen": sum(a == c for a, c in zip(answers, chosen)),
            "samples": [{"answer": a} for a in answers[:3]]}


def _held_out() -> tuple[list[str], list[str]]:
    from tuiwiz.demo.preference import records

    held = records("preference-heldout")
    return [r["prompt"] for r in held], [r["chosen"] for r in held]


def _after_sft(profile: str, stage: str, folder: Path, env: dict) -> dict:
    """A pipeline of an SFT stage then a preference stage: the held-out answers after each stage, and the
    preference stage's held-out reward margin at its first and last evaluation."""
    seconds, code, log = run_shipped(profile, folder, env)
    assert code == 0, log
    runs = _stage_runs(folder)
    prompts, chosen = _held_out()
    margins = _evals(runs[stage], "eval_rewards/margins")
    return {"wall_s": round(seconds, 1), "after_sft": _style(_greedy(runs["sft"] / "output", prompts), chosen),
            f"after_{stage}": _style(_greedy(runs[stage] / "output", prompts), chosen),
            "eval_margin_first_last": [round(margins[0], 4), round(margins[-1], 4)], "evaluations": len(margins)}


def dpo(folder: Path, env: dict) -> dict:
    return _after_sft("demo-dpo.yaml", "dpo", folder, env)


def kto(folder: Path, env: dict) -> dict:
    return _after_sft("demo-kto.yaml", "kto", folder, env)


def simpo(folder: Path, env: dict) -> dict:
    return _after_sft("demo-simpo.yaml", "simpo", folder, env)


def orpo(folder: Path, env: dict) -> dict:
    """ORPO straight from the demo model: the held-out answers of the demo model itself and after ORPO."""
    from tuiwiz.demo.build import ensure_demo_model

    seconds, code, log = run_shipped("demo-orpo.yaml", folder, env)
    assert code == 0, log
    run = next(p for p in (folder / "runs").iterdir() if not p.name.startswith("."))
    prompts, chosen = _held_out()
    margins = _evals(run, "eval_rewards/margins")
    return {"wall_s": round(seconds, 1), "untrained": _style(_greedy(ensure_demo_model(), prompts), chosen),
            "after_orpo": _style(_greedy(run / "output", prompts), chosen),
            "eval_margin_first_last": [round(margins[0], 4), round(margins[-1], 4)], "evaluations": len(margins)}


def reward(folder: Path, env: dict) -> dict:
    seconds, code, log = run_shipped("demo-reward.yaml", folder, env)
    assert code == 0, log
    run = next(p for p in (folder / "runs").iterdir() if not p.name.startswith("."))
    accuracy = _evals(run, "eval_accuracy")
    return {"wall_s": round(seconds, 1), "pairs": 27, "eval_accuracy_first_last": [accuracy[0], accuracy[-1]]}


def seq2seq(folder: Path, env: dict) -> dict:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tuiwiz.demo.seq2seq import ensure_demo_t5, records
    from tuiwiz.train.text_metrics import exact_match, rouge_l

    held = records("seq2seq-heldout")
    base = ensure_demo_t5()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSeq2SeqLM.from_pretrained(base).eval()
    predictions = []
    for record in held:
        ids = tokenizer(record["input"], return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False)
        predictions.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    targets = [r["target"] for r in held]
    seconds, code, log = run_shipped("demo-seq2seq.yaml", folder, env)
    assert code == 0, log
    run = next(p for p in (folder / "runs").iterdir() if not p.name.startswith("."))
    return {"wall_s": round(seconds, 1), "held_out": len(held),
            "untrained": {"exact_match": exact_match(predictions, targets), "rougeL": rouge_l(predictions, targets)},
            "trained": {"exact_match": _evals(run, "eval_exact_match")[-1],
                        "rougeL": _evals(run, "eval_rougeL")[-1]}}


def _rewards(run: Path) -> list[float]:
    return [e["task_metrics"]["reward"] for e in _events(run) if e["type"] == "log" and "reward" in
            (e.get("task_metrics") or {})]


def grpo(folder: Path, env: dict) -> dict:
    seconds, code, log = run_shipped("demo-grpo.yaml", folder, env)
    assert code == 0, log
    rewards = _rewards(_stage_runs(folder)["grpo"])
    return {"wall_s": round(seconds, 1), "sampled_reward_first_last": [round(rewards[0], 4), round(rewards[-1], 4)]}


def pipeline(folder: Path, env: dict) -> dict:
    from tuiwiz.run.pipeline import PipelineDir

    seconds, code, log = run_shipped("demo-pipeline.yaml", folder, env)
    assert code == 0, log
    runs = _stage_runs(folder)
    pipe = next(PipelineDir(p) for p in (folder / "runs").iterdir() if (p / "pipeline.json").exists())
    samples = [e["samples"] for e in _events(runs["grpo"]) if e["type"] == "samples"]

    def styled(batch: list[dict]) -> list[int]:
        return [sum(str(s["completion"]).strip().startswith(STYLE) for s in batch), len(batch)]

    rewards = _rewards(runs["grpo"])
    return {"wall_s": round(seconds, 1), "stages": {s.name: s.status for s in pipe.read().stages},
            "reward_eval_accuracy": _evals(runs["reward"], "eval_accuracy")[-1],
            "grpo_sampled_reward_first_last": [round(rewards[0], 4), round(rewards[-1], 4)],
            "grpo_samples_styled_first_last": [styled(samples[0]), styled(samples[-1])]}


BENCHES = {"dpo": dpo, "kto": kto, "simpo": simpo, "orpo": orpo, "reward": reward, "seq2seq": seq2seq, "grpo": grpo,
           "pipeline": pipeline}


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    d, r, s, g, p = f["dpo"], f["reward"], f["seq2seq"], f["grpo"], f["pipeline"]
    k, sp, o = f["kto"], f["simpo"], f["orpo"]
    lines = [
        "| profile (as shipped) | what moved | held-out items | whole command |",
        "|---|---|---|---|",
        f"| `demo-dpo.yaml` (SFT, then DPO) | greedy answers beginning \"Sure!\": {d['after_sft']['begin_with_style']}"
        f" after SFT, {d['after_dpo']['begin_with_style']} after DPO; held-out reward margin "
        f"{d['eval_margin_first_last'][0]:.3f} at the first evaluation, {d['eval_margin_first_last'][1]:.3f} at the "
        f"last | {d['after_dpo']['questions']} questions | {d['wall_s']:.0f} s |",
        f"| `demo-kto.yaml` (SFT, then KTO) | greedy answers beginning \"Sure!\": {k['after_sft']['begin_with_style']}"
        f" after SFT, {k['after_kto']['begin_with_style']} after KTO; held-out reward margin (desirable over "
        f"undesirable) {k['eval_margin_first_last'][0]:.3f} at the first evaluation, "
        f"{k['eval_margin_first_last'][1]:.3f} at the last | {k['after_kto']['questions']} questions | "
        f"{k['wall_s']:.0f} s |",
        f"| `demo-simpo.yaml` (SFT, then SimPO) | greedy answers beginning \"Sure!\": "
        f"{sp['after_sft']['begin_with_style']} after SFT, {sp['after_simpo']['begin_with_style']} after SimPO; "
        f"held-out reward margin {sp['eval_margin_first_last'][0]:.3f} at the first evaluation, "
        f"{sp['eval_margin_first_last'][1]:.3f} at the last | {sp['after_simpo']['questions']} questions | "
        f"{sp['wall_s']:.0f} s |",
        f"| `demo-orpo.yaml` (no SFT stage) | greedy answers beginning \"Sure!\": {o['untrained']['begin_with_style']}"
        f" untrained, {o['after_orpo']['begin_with_style']} after ORPO; held-out reward margin "
        f"{o['eval_margin_first_last'][0]:.3f} at the first evaluation, {o['eval_margin_first_last'][1]:.3f} at the "
        f"last | {o['after_orpo']['questions']} questions | {o['wall_s']:.0f} s |",
        f"| `demo-reward.yaml` | held-out pairwise accuracy {r['eval_accuracy_first_last'][0]:.2f} at the first "
        f"evaluation, {r['eval_accuracy_first_last'][1]:.2f} at the last | {r['pairs']} pairs | {r['wall_s']:.0f} s |",
        f"| `demo-seq2seq.yaml` | exact match {s['untrained']['exact_match']:.2f} untrained, "
        f"{s['trained']['exact_match']:.2f} trained; ROUGE-L {s['untrained']['rougeL']:.2f} to "
        f"{s['trained']['rougeL']:.2f} | {s['held_out']} questions | {s['wall_s']:.0f} s |",
        f"| `demo-grpo.yaml` (SFT, then GRPO) | mean sampled reward {g['sampled_reward_first_last'][0]:.2f} at the "
        f"first log, {g['sampled_reward_first_last'][1]:.2f} at the last | (bench/demo_grpo.py) "
        f"| {g['wall_s']:.0f} s |",
        f"| `demo-pipeline.yaml` (SFT, reward model, GRPO) | reward model accuracy {p['reward_eval_accuracy']:.2f}; "
        f"GRPO's sampled reward {p['grpo_sampled_reward_first_last'][0]:.2f} to "
        f"{p['grpo_sampled_reward_first_last'][1]:.2f}; samples beginning \"Sure!\" "
        f"{p['grpo_samples_styled_first_last'][0][0]} of {p['grpo_samples_styled_first_last'][0][1]} first, "
        f"{p['grpo_samples_styled_first_last'][1][0]} of {p['grpo_samples_styled_first_last'][1][1]} last "
        f"| 27 pairs | {p['wall_s']:.0f} s |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of figures written before")
    parser.add_argument("--only", nargs="*", choices=list(BENCHES), help="run these alone")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return
    figures = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for name in args.only or BENCHES:
            folder = Path(tmp) / name
            folder.mkdir()
            env = {**os.environ, "TUIWIZ_CACHE_DIR": str(cache), "TUIWIZ_STATE_DIR": str(folder / "state"),
                   "HF_HUB_OFFLINE": "1"}
            os.environ.update({k: env[k] for k in ("TUIWIZ_CACHE_DIR", "TUIWIZ_STATE_DIR")})
            figures[name] = BENCHES[name](folder, env)
            print(name, json.dumps({k: v for k, v in figures[name].items() if "samples" not in str(k)}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if not args.only:
        print(docs_block(figures), end="")


if __name__ == "__main__":
    main()
