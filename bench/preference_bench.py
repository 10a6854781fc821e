"""Preference tuning on the demo, measured: what DPO after SFT (and ORPO alone) does to held-out answers,
DPO's memory beside SFT's, and tuiwiz's DPO speed beside a bare TRL DPO script.

- style: the quickstart SFT run, then DPO from it (model.start_from) on demo:preference, then ORPO straight
  from the demo model (profiles/demo-orpo.yaml). For each, the greedy answers to the held-out questions
  (demo:preference-heldout): how many begin with the chosen style "Sure!", and how many are exactly the
  chosen reply. DPO's held-out reward margin at each evaluation.
- memory: peak RSS of the runner (LogEvent.memory.peak_rss_mb, the process's ru_maxrss) for LoRA SFT on
  demo:alpaca and LoRA DPO on demo:preference from the demo model, with the same micro-batch and every
  sequence padded to the same max_length (DPO puts a chosen and a rejected sequence through per example,
  and scores both again with the adapter disabled for its reference).
- speed: tuiwiz's DPO and a bare TRL DPOTrainer script with the same settings, alternating, steps per
  second as the Trainer counts them (train_steps_per_second), medians and ranges.

    python bench/preference_bench.py [--repeats 3] [--json bench/results/preference.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STYLE = "Sure!"

# DPO after the quickstart's SFT: what made the style clear on the demo (see docs/preference.md)
DPO = {"beta": 0.02, "learning_rate": 1e-3, "epochs": 2, "batch": 8, "max_length": 128, "r": 16, "alpha": 32}

BARE = r'''
import json, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer

model_dir, data_file, out_dir, s = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in map(json.loads, open(data_file))]
config = DPOConfig(
    output_dir=out_dir, max_steps=s["steps"], learning_rate=s["learning_rate"], per_device_train_batch_size=s["batch"],
    lr_scheduler_type="cosine", logging_steps=5, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
    bf16=False, max_length=s["max_length"], beta=s["beta"], seed=42, data_seed=42, dataloader_num_workers=0,
    # what tuiwiz resolves, stated: TRL's own defaults differ (gradient checkpointing on)
    gradient_checkpointing=False, optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
)
lora = LoraConfig(task_type="CAUSAL_LM", r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.0, target_modules="all-linear")
trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                     peft_config=lora)
result = trainer.train()
print(json.dumps({"steps_per_second": result.metrics["train_steps_per_second"],
                  "train_loss": result.metrics["train_loss"]}))
'''


def run_profile(work: Path, env: dict, name: str, data: dict) -> tuple[Path, dict]:
    """Run a profile through the real CLI: (its run folder, its wall time and run_end metrics)."""
    data = {**data, "output": {"runs_dir": str(work / "runs"), "run_name": name, "report_to": []}}
    profile = work / f"{name}.yaml"
    profile.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    run = max((work / "runs").glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    return run, {"wall_s": round(wall, 2), **events(run)}


def events(run: Path) -> dict:
    found = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    logs = [e for e in found if e["type"] == "log"]
    end = [e for e in found if e["type"] == "run_end"][-1]
    return {"steps": end["step"], "steps_per_second": end["metrics"]["train_steps_per_second"],
            "peak_rss_mb": max(e["memory"]["peak_rss_mb"] for e in logs),
            "eval_margins": {e["step"]: round(e["eval_rewards/margins"], 4) for e in found
                             if e["type"] == "eval" and "eval_rewards/margins" in e}}


def held_out_answers(output: Path) -> dict:
    """The greedy answers of an adapter (on its base) to the held-out questions, scored against the style."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from tuiwiz.demo.preference import records

    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoPeftModelForCausalLM.from_pretrained(output).eval()
    styled = exact = 0
    samples = []
    pairs = records("preference-heldout")
    for pair in pairs:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": pair["prompt"]}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        styled += answer.startswith(STYLE)
        exact += answer == pair["chosen"]
        if len(samples) < 4:
            samples.append({"prompt": pair["prompt"], "answer": answer})
    return {"questions": len(pairs), "begin_with_style": styled, "exactly_chosen": exact, "samples": samples}


def lora(r: int = DPO["r"], alpha: int = DPO["alpha"]) -> dict:
    return {"type": "lora", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0}


def style(work: Path, env: dict) -> dict:
    quickstart = yaml.safe_load((ROOT / "profiles/quickstart.yaml").read_text())
    quickstart["training"]["save_steps"] = 10_000
    sft_run, _ = run_profile(work, env, "sft", quickstart)
    dpo_run, dpo = run_profile(work, env, "dpo", {
        "task": "dpo", "model": {"name_or_path": "demo", "start_from": str(sft_run)},
        "data": {"path": "demo:preference", "validation_path": "demo:preference-heldout",
                 "max_length": DPO["max_length"]},
        "method": lora(), "preference": {"beta": DPO["beta"]},
        "training": {"num_train_epochs": DPO["epochs"], "learning_rate": DPO["learning_rate"],
                     "per_device_train_batch_size": DPO["batch"], "logging_steps": 5, "eval_steps": 10,
                     "save_steps": 10_000}})
    orpo_profile = yaml.safe_load((ROOT / "profiles/demo-orpo.yaml").read_text())
    orpo_profile["training"]["save_steps"] = 10_000
    orpo_run, orpo = run_profile(work, env, "orpo", orpo_profile)
    return {"dpo_settings": DPO,
            "after_sft": held_out_answers(sft_run / "output"),
            "after_dpo": {**held_out_answers(dpo_run / "output"), "eval_margins": dpo["eval_margins"],
                          "wall_s": dpo["wall_s"]},
            "orpo_alone": {**held_out_answers(orpo_run / "output"), "eval_margins": orpo["eval_margins"],
                           "wall_s": orpo["wall_s"]}}


def memory(work: Path, env: dict, steps: int) -> dict:
    """Peak RSS of LoRA SFT and LoRA DPO at the same micro-batch and padded length, without and with gradient
    checkpointing (which keeps few activations: what is left to compare is then mostly the model and the libraries,
    so a reference copy of the model would show there)."""
    figures = {"steps": steps, "micro_batch": DPO["batch"], "padded_length": DPO["max_length"], "target": 1.15}
    for checkpointing in (False, True):
        common = {"method": lora(), "training": {
            "max_steps": steps, "per_device_train_batch_size": DPO["batch"], "pad_to_max_length": True,
            "gradient_checkpointing": checkpointing, "save_steps": 10_000, "logging_steps": 5}}
        suffix = "-checkpointing" if checkpointing else ""
        _, sft = run_profile(work, env, f"mem-sft{suffix}", {
            "task": "sft", "data": {"path": "demo:alpaca", "max_length": DPO["max_length"]}, **common})
        _, dpo = run_profile(work, env, f"mem-dpo{suffix}", {
            "task": "dpo", "data": {"path": "demo:preference", "max_length": DPO["max_length"]}, **common})
        figures["gradient_checkpointing" if checkpointing else "plain"] = {
            "sft_peak_rss_mb": sft["peak_rss_mb"], "dpo_peak_rss_mb": dpo["peak_rss_mb"],
            "dpo_over_sft": round(dpo["peak_rss_mb"] / sft["peak_rss_mb"], 3)}
    return figures


def speed(work: Path, env: dict, repeats: int, steps: int) -> dict:
    from tuiwiz.demo.build import demo_model_dir, resolve_demo_uri

    settings = {**DPO, "steps": steps}
    profile = {"task": "dpo", "data": {"path": "demo:preference", "max_length": DPO["max_length"]}, "method": lora(),
               "preference": {"beta": DPO["beta"]},
               "training": {"max_steps": steps, "learning_rate": DPO["learning_rate"], "logging_steps": 5,
                            "per_device_train_batch_size": DPO["batch"], "save_steps": 10_000, "warmup_steps": 0}}
    script = work / "bare_dpo.py"
    script.write_text(BARE)
    runs: dict[str, list[dict]] = {"tuiwiz": [], "bare_trl": []}
    for i in range(repeats):
        for name in (("tuiwiz", "bare_trl") if i % 2 == 0 else ("bare_trl", "tuiwiz")):
            if name == "tuiwiz":
                _, figures = run_profile(work, env, f"speed-{i}", profile)
                figures = {"steps_per_second": figures["steps_per_second"], "wall_s": figures["wall_s"]}
            else:
                start = time.perf_counter()
                result = subprocess.run([sys.executable, str(script), str(demo_model_dir()),
                                         str(resolve_demo_uri("demo:preference")), str(work / "bare-out"),
                                         json.dumps(settings)], env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    raise SystemExit(result.stdout + result.stderr)
                figures = {**json.loads(result.stdout.strip().splitlines()[-1]),
                           "wall_s": round(time.perf_counter() - start, 2)}
            runs[name].append(figures)
            print(name, json.dumps(figures), flush=True)
    summary = {name: {"median": statistics.median(r["steps_per_second"] for r in rows),
                      "range": [min(r["steps_per_second"] for r in rows), max(r["steps_per_second"] for r in rows)]}
               for name, rows in runs.items()}
    ratio = round(summary["tuiwiz"]["median"] / summary["bare_trl"]["median"], 3)
    return {"steps": steps, "repeats": repeats, "runs": runs, "steps_per_second": summary, "tuiwiz_over_bare": ratio}


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    style, memory, speed = f["style"], f["memory"], f["speed"]
    sft, dpo, orpo = style["after_sft"], style["after_dpo"], style["orpo_alone"]
    margins = list(dpo["eval_margins"].values())
    rates = speed["steps_per_second"]
    return "\n".join([
        "| measured | figure |",
        "|---|---|",
        f"| held-out answers beginning \"Sure!\" (of {sft['questions']}) | {sft['begin_with_style']} after SFT, "
        f"{dpo['begin_with_style']} after DPO, {orpo['begin_with_style']} after ORPO alone; exactly the chosen "
        f"reply: {dpo['exactly_chosen']} after DPO |",
        f"| DPO's held-out reward margin, by evaluation | {', '.join(f'{m:.3f}' for m in margins)} |",
        f"| peak RSS, DPO over the same SFT run (LoRA, micro-batch {memory['micro_batch']}, padded to "
        f"{memory['padded_length']}) | {memory['plain']['dpo_over_sft']:.2f}x "
        f"({memory['plain']['dpo_peak_rss_mb']:.0f} / {memory['plain']['sft_peak_rss_mb']:.0f} MiB); with gradient "
        f"checkpointing {memory['gradient_checkpointing']['dpo_over_sft']:.2f}x (target {memory['target']}x) |",
        f"| DPO steps/s, tuiwiz vs a bare TRL script ({speed['repeats']} alternating runs of {speed['steps']} steps) "
        f"| {rates['tuiwiz']['median']:.2f} ({rates['tuiwiz']['range'][0]:.2f}-{rates['tuiwiz']['range'][1]:.2f}) vs "
        f"{rates['bare_trl']['median']:.2f} ({rates['bare_trl']['range'][0]:.2f}-{rates['bare_trl']['range'][1]:.2f})"
        f": {speed['tuiwiz_over_bare']:.2f}x |",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of the memory and speed runs")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-preference-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1"}
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])
    from tuiwiz.demo.build import ensure_demo_dataset, ensure_demo_model

    ensure_demo_model()  # built once, outside the timings
    for name in ("alpaca", "preference", "preference-heldout"):
        ensure_demo_dataset(name)
    import trl

    out = {"trl": trl.__version__, "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "style": style(work, env)}
    print(json.dumps(out["style"], indent=2), flush=True)
    out["memory"] = memory(work, env, args.steps)
    print(json.dumps(out["memory"], indent=2), flush=True)
    out["speed"] = speed(work, env, args.repeats, args.steps)
    print(json.dumps(out["speed"]["steps_per_second"], indent=2), out["speed"]["tuiwiz_over_bare"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
