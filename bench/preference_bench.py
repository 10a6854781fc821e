"""Preference tuning on the demo, measured: what DPO after SFT (and ORPO alone) does to held-out answers,
DPO's memory beside SFT's, and tuiwiz's DPO speed beside a bare TRL DPO script.

- style: the quickstart SFT run, then DPO from it (model.start_from) with the settings of the DPO stage of
  profiles/demo-dpo.yaml on demo:preference, then ORPO straight from the demo model (profiles/demo-orpo.yaml).
  For each, the greedy answers to the held-out questions (demo:preference-heldout): how many begin with the
  chosen style "Sure!", are exactly the chosen reply, state its fact, and are "Sure!" then the SFT model's own
  answer; for SFT and DPO the same on the questions DPO trained on. DPO's held-out reward margin at each
  evaluation.
- memory: peak RSS of the runner (LogEvent.memory.peak_rss_mb, the process's ru_maxrss; medians of alternating
  runs) for LoRA SFT on demo:alpaca and LoRA DPO on demo:preference from the demo model, with the same
  micro-batch and every sequence padded to the same max_length (DPO puts a chosen and a rejected sequence
  through per example, and scores both with the adapter disabled for its reference). DPO runs as a user gets
  it (preference.precompute_ref_log_probs auto; which way it resolved is read back from the run's
  trainer-args.json) and with the reference scored in every step (precompute_ref_log_probs false).
- reference scoring: the DPO stage of profiles/demo-dpo.yaml after the same SFT run, with the reference's
  log-probabilities precomputed (what precompute_ref_log_probs auto resolves to there: 2 epochs and 4 evaluations)
  and scored in the steps, alternating: whole command, train_runtime, the held-out margins (which must agree).
- speed: tuiwiz's DPO and a bare TRL DPOTrainer script with the same settings (the reference scored the way
  tuiwiz's auto resolves it for these runs), alternating, steps per second as the Trainer counts them
  (train_steps_per_second, which leaves out a precomputing pass: it runs before training, in both), medians
  and ranges, and each whole command's wall time.

    python bench/preference_bench.py [--repeats 3] [--json bench/results/preference.json]
    python bench/preference_bench.py --only scoring --json bench/results/preference.json   # rerun one section
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

PROFILE = ROOT / "profiles/demo-dpo.yaml"


def dpo_stage() -> dict:
    """The DPO stage of profiles/demo-dpo.yaml, with the sections its stages share: what the bench runs."""
    data = yaml.safe_load(PROFILE.read_text())
    stage = next(s for s in data["stages"] if s["task"] == "dpo")
    return {"method": data["method"], **{k: v for k, v in stage.items() if k != "name"}}


def dpo_settings(stage: dict) -> dict:
    """The settings the memory and speed runs (and the bare TRL script) share with the profile's stage."""
    training, preference = stage["training"], stage.get("preference", {})
    return {"beta": preference.get("beta", 0.1), "loss_type": preference.get("loss_type") or "sigmoid",
            "learning_rate": training["learning_rate"], "epochs": training["num_train_epochs"],
            "batch": training["per_device_train_batch_size"], "max_length": stage["data"]["max_length"],
            "r": stage["method"]["r"], "alpha": stage["method"]["lora_alpha"]}


DPO = dpo_settings(dpo_stage())

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
    bf16=False, max_length=s["max_length"], beta=s["beta"], loss_type=[s["loss_type"]], seed=42, data_seed=42,
    dataloader_num_workers=0, precompute_ref_log_probs=s["precompute_ref_log_probs"],
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
    resolved = json.loads((run / "trainer-args.json").read_text())
    figures = {"wall_s": round(wall, 2), **events(run)}
    if "precompute_ref_log_probs" in resolved:  # DPO: how the reference scored, as the run resolved it
        figures["precompute_ref_log_probs"] = resolved["precompute_ref_log_probs"]
    return run, figures


def events(run: Path) -> dict:
    found = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    logs = [e for e in found if e["type"] == "log"]
    end = [e for e in found if e["type"] == "run_end"][-1]
    return {"steps": end["step"], "steps_per_second": end["metrics"]["train_steps_per_second"],
            "peak_rss_mb": max(e["memory"]["peak_rss_mb"] for e in logs),
            "eval_margins": {e["step"]: round(e["eval_rewards/margins"], 4) for e in found
                             if e["type"] == "eval" and "eval_rewards/margins" in e}}


def greedy_answers(output: Path, prompts: list[str]) -> list[str]:
    """The greedy answers of an adapter (on its base) to ``prompts``."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoPeftModelForCausalLM.from_pretrained(output).eval()
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def scored(answers: list[str], pairs: list[dict], before: list[str] | None = None) -> dict:
    """How many answers begin with the style, are exactly the chosen reply, state its fact, and (given the
    answers ``before`` DPO) are the style followed by the words the model answered before: the style without
    losing a word."""
    figures = {"questions": len(pairs), "begin_with_style": sum(a.startswith(STYLE) for a in answers),
               "exactly_chosen": sum(a == p["chosen"] for a, p in zip(answers, pairs, strict=True)),
               # the right fact, with or without the style: what the model knows of these questions
               "right_fact": sum(a.removeprefix(STYLE).strip() == p["chosen"].removeprefix(STYLE).strip()
                                 for a, p in zip(answers, pairs, strict=True))}
    if before is not None:
        figures["style_then_own_answer"] = sum(a == f"{STYLE} {b}" for a, b in zip(answers, before, strict=True))
    return figures


def held_out(output: Path, before: list[str] | None = None) -> tuple[dict, list[str]]:
    """The greedy answers to the held-out questions, scored, with four samples; and the answers themselves."""
    from tuiwiz.demo.preference import records

    pairs = records("preference-heldout")
    answers = greedy_answers(output, [p["prompt"] for p in pairs])
    samples = [{"prompt": p["prompt"], "answer": a} for p, a in zip(pairs[:4], answers)]
    return {**scored(answers, pairs, before), "samples": samples}, answers


def trained_on(output: Path) -> dict:
    """The same counts on the questions DPO trained on, whose facts the SFT data also teaches."""
    from tuiwiz.demo.preference import records

    pairs = records("preference")
    return scored(greedy_answers(output, [p["prompt"] for p in pairs]), pairs)


def lora(r: int = DPO["r"], alpha: int = DPO["alpha"]) -> dict:
    return {"type": "lora", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0}


def sft_first(work: Path, env: dict) -> Path:
    """The quickstart's SFT run, which the DPO stage starts from."""
    quickstart = yaml.safe_load((ROOT / "profiles/quickstart.yaml").read_text())
    quickstart["training"]["save_steps"] = 10_000
    return run_profile(work, env, "sft", quickstart)[0]


def style(work: Path, env: dict) -> dict:
    sft_run = sft_first(work, env)
    stage = dpo_stage()
    dpo_run, dpo = run_profile(work, env, "dpo", {
        **stage, "model": {"name_or_path": "demo", "start_from": str(sft_run)},
        "training": {**stage["training"], "save_steps": 10_000}})
    orpo_profile = yaml.safe_load((ROOT / "profiles/demo-orpo.yaml").read_text())
    orpo_profile["training"]["save_steps"] = 10_000
    orpo_run, orpo = run_profile(work, env, "orpo", orpo_profile)
    after_sft, sft_answers = held_out(sft_run / "output")
    after_dpo, _ = held_out(dpo_run / "output", sft_answers)
    return {"dpo_settings": DPO, "after_sft": {**after_sft, "trained_questions": trained_on(sft_run / "output")},
            "after_dpo": {**after_dpo, "eval_margins": dpo["eval_margins"], "wall_s": dpo["wall_s"],
                          "trained_questions": trained_on(dpo_run / "output")},
            "orpo_alone": {**held_out(orpo_run / "output", sft_answers)[0], "eval_margins": orpo["eval_margins"],
                           "wall_s": orpo["wall_s"]}}


def scoring(work: Path, env: dict, repeats: int) -> dict:
    """The demo's DPO stage with the reference precomputed and scored in the steps, alternating."""
    sft_run, stage = sft_first(work, env), dpo_stage()
    runs: dict[str, list[dict]] = {"precomputed": [], "in_step": []}
    for i in range(repeats):
        for kind in (("precomputed", "in_step") if i % 2 == 0 else ("in_step", "precomputed")):
            run, figures = run_profile(work, env, f"scoring-{kind}-{i}", {
                **stage, "model": {"name_or_path": "demo", "start_from": str(sft_run)},
                "preference": {**stage.get("preference", {}), "precompute_ref_log_probs": kind == "precomputed"},
                "training": {**stage["training"], "save_steps": 10_000}})
            found = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
            metrics = [e for e in found if e["type"] == "run_end"][-1]["metrics"]
            runs[kind].append({"wall_s": figures["wall_s"], "train_runtime": metrics["train_runtime"],
                               "eval_margins": figures["eval_margins"]})
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    # the stage as shipped (auto), once, for the way it resolves
    _, auto = run_profile(work, env, "scoring-auto", {
        **stage, "model": {"name_or_path": "demo", "start_from": str(sft_run)},
        "training": {**stage["training"], "save_steps": 10_000}})
    medians = {kind: {key: statistics.median(r[key] for r in rows) for key in ("wall_s", "train_runtime")}
               for kind, rows in runs.items()}
    return {"repeats": repeats, "runs": runs, "median": medians,
            "auto_resolved_precompute": auto["precompute_ref_log_probs"],
            "margins_agree": all(r["eval_margins"] == runs["in_step"][0]["eval_margins"]
                                 for rows in runs.values() for r in rows),
            "wall_ratio": round(medians["precomputed"]["wall_s"] / medians["in_step"]["wall_s"], 3),
            "train_runtime_ratio": round(medians["precomputed"]["train_runtime"] / medians["in_step"]["train_runtime"],
                                         3)}


def memory(work: Path, env: dict, steps: int, repeats: int) -> dict:
    """Peak RSS of LoRA SFT and LoRA DPO at the same micro-batch and padded length, without and with gradient
    checkpointing (which keeps few activations: what is left to compare is then mostly the model and the libraries,
    so a reference copy of the model would show there). A process's peak varies by some tens of MiB from run to run
    (malloc): SFT and DPO alternate, ``repeats`` times each, and the medians are compared."""
    from tuiwiz.train.modeling import CPU_HEAD_TILE_TOKENS

    figures = {"steps": steps, "micro_batch": DPO["batch"], "padded_length": DPO["max_length"], "target": 1.15,
               "repeats": repeats, "head_tile_tokens": CPU_HEAD_TILE_TOKENS}
    for checkpointing in (False, True):
        common = {"method": lora(), "training": {
            "max_steps": steps, "per_device_train_batch_size": DPO["batch"], "pad_to_max_length": True,
            "gradient_checkpointing": checkpointing, "save_steps": 10_000, "logging_steps": 5}}
        suffix = "-checkpointing" if checkpointing else ""
        # without checkpointing, also SFT at twice the micro-batch: as many sequences a step as DPO's chosen and
        # rejected, so that what is left between the two is what DPO adds beyond its second sequence
        # DPO as a user gets it (precompute_ref_log_probs auto) and with the reference scored in every step
        kinds = ("sft", "dpo") if checkpointing else ("sft", "dpo", "dpo_in_step", "sft_twice")
        peaks: dict[str, list[float]] = {kind: [] for kind in kinds}
        precomputed = set()
        for i in range(repeats):
            for kind in (kinds if i % 2 == 0 else kinds[::-1]):
                task = "dpo" if kind.startswith("dpo") else "sft"
                data = "demo:alpaca" if task == "sft" else "demo:preference"
                batch = DPO["batch"] * (2 if kind == "sft_twice" else 1)
                extra = {"preference": {"precompute_ref_log_probs": False}} if kind == "dpo_in_step" else {}
                _, run = run_profile(work, env, f"mem-{kind}{suffix}-{i}", {
                    "task": task, "data": {"path": data, "max_length": DPO["max_length"]}, **common, **extra,
                    "training": {**common["training"], "per_device_train_batch_size": batch}})
                peaks[kind].append(run["peak_rss_mb"])
                if kind == "dpo":
                    precomputed.add(run["precompute_ref_log_probs"])
        sft, dpo = statistics.median(peaks["sft"]), statistics.median(peaks["dpo"])
        (auto,) = precomputed  # the same data and steps resolve the same way every time
        entry = {"sft_peak_rss_mb": sft, "dpo_peak_rss_mb": dpo, "dpo_over_sft": round(dpo / sft, 3),
                 "dpo_precomputed": auto, "sft_runs": peaks["sft"], "dpo_runs": peaks["dpo"]}
        if "dpo_in_step" in peaks:
            in_step = statistics.median(peaks["dpo_in_step"])
            entry.update(dpo_in_step_peak_rss_mb=in_step, dpo_in_step_over_sft=round(in_step / sft, 3),
                         dpo_in_step_runs=peaks["dpo_in_step"])
        if "sft_twice" in peaks:
            twice = statistics.median(peaks["sft_twice"])
            entry.update(sft_twice_micro_batch=batch, sft_twice_peak_rss_mb=twice,
                         dpo_over_sft_twice=round(dpo / twice, 3), sft_twice_runs=peaks["sft_twice"])
        figures["gradient_checkpointing" if checkpointing else "plain"] = entry
    return figures


def speed(work: Path, env: dict, repeats: int, steps: int) -> dict:
    from tuiwiz.demo.build import demo_model_dir, resolve_demo_uri

    profile = {"task": "dpo", "data": {"path": "demo:preference", "max_length": DPO["max_length"]}, "method": lora(),
               "preference": {"beta": DPO["beta"], "loss_type": DPO["loss_type"]},
               "training": {"max_steps": steps, "learning_rate": DPO["learning_rate"], "logging_steps": 5,
                            "per_device_train_batch_size": DPO["batch"], "save_steps": 10_000, "warmup_steps": 0}}
    precompute = expected_precompute(profile)
    settings = {**DPO, "steps": steps, "precompute_ref_log_probs": precompute}
    script = work / "bare_dpo.py"
    script.write_text(BARE)
    runs: dict[str, list[dict]] = {"tuiwiz": [], "bare_trl": []}
    for i in range(repeats):
        for name in (("tuiwiz", "bare_trl") if i % 2 == 0 else ("bare_trl", "tuiwiz")):
            if name == "tuiwiz":
                _, figures = run_profile(work, env, f"speed-{i}", profile)
                if figures["precompute_ref_log_probs"] != precompute:
                    raise SystemExit(f"tuiwiz resolved precompute_ref_log_probs {figures['precompute_ref_log_probs']}"
                                     f", the bare script was given {precompute}: not the same settings")
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
    walls = {name: statistics.median(r["wall_s"] for r in rows) for name, rows in runs.items()}
    return {"steps": steps, "repeats": repeats, "precompute_ref_log_probs": precompute, "runs": runs,
            "steps_per_second": summary, "tuiwiz_over_bare": ratio, "wall_s_median": walls}


def expected_precompute(profile: dict) -> bool:
    """What preference.precompute_ref_log_probs auto resolves to for ``profile`` on demo:preference, by the
    runner's own rule (the runs check that they resolved the same)."""
    from tuiwiz.demo.preference import records
    from tuiwiz.plan.reference_scoring import reference_scoring
    from tuiwiz.profile.schema import Profile
    from tuiwiz.train.arguments import total_steps

    resolved, rows = Profile.model_validate(profile), len(records("preference"))
    return reference_scoring(resolved, train_rows=rows, total_steps=total_steps(resolved, rows, 1)).precompute


def scoring_row(sc: dict) -> str:
    """The docs row of the reference scored before training against in the steps."""
    pre, step = sc["median"]["precomputed"], sc["median"]["in_step"]
    return (f"| the demo's DPO stage (2 epochs, 4 evaluations), reference precomputed vs scored in the steps "
            f"({sc['repeats']} alternating runs each; precompute_ref_log_probs auto resolves to "
            f"{'precomputed' if sc['auto_resolved_precompute'] else 'in the steps'}) | whole command "
            f"{pre['wall_s']:.1f} vs {step['wall_s']:.1f} s ({sc['wall_ratio']:.2f}x), training "
            f"{pre['train_runtime']:.1f} vs {step['train_runtime']:.1f} s ({sc['train_runtime_ratio']:.2f}x); "
            f"held-out margins {'identical' if sc['margins_agree'] else 'DIFFERENT'} |")


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    style, memory, speed = f["style"], f["memory"], f["speed"]
    sft, dpo, orpo = style["after_sft"], style["after_dpo"], style["orpo_alone"]
    trained = dpo["trained_questions"]
    margins = list(dpo["eval_margins"].values())
    rates = speed["steps_per_second"]
    return "\n".join([
        "| measured | figure |",
        "|---|---|",
        f"| held-out answers beginning \"Sure!\" (of {sft['questions']}) | {sft['begin_with_style']} after SFT, "
        f"{dpo['begin_with_style']} after DPO, {orpo['begin_with_style']} after ORPO alone |",
        f"| DPO's answers that are exactly the chosen reply | {dpo['exactly_chosen']} of {dpo['questions']} held out "
        f"(the SFT model's facts are right in {sft['right_fact']}); {trained['exactly_chosen']} of "
        f"{trained['questions']} trained on (right in {sft['trained_questions']['right_fact']}) |",
        f"| DPO's held-out answers that are \"Sure!\" then the SFT model's own answer | "
        f"{dpo['style_then_own_answer']} of {dpo['questions']} |",
        f"| DPO's held-out reward margin, by evaluation | {', '.join(f'{m:.3f}' for m in margins)} |",
        f"| peak RSS, DPO over the same SFT run (LoRA, micro-batch {memory['micro_batch']}, padded to "
        f"{memory['padded_length']}; medians of {memory['repeats']} alternating runs; DPO's loss head in "
        f"{memory['head_tile_tokens']}-position tiles; SFT's as training.loss_head auto settles it on the CPU) | "
        f"{memory['plain']['dpo_over_sft']:.2f}x "
        f"({memory['plain']['dpo_peak_rss_mb']:.0f} / {memory['plain']['sft_peak_rss_mb']:.0f} MiB"
        + (f", reference {'precomputed' if memory['plain']['dpo_precomputed'] else 'scored in the step'} as "
           f"precompute_ref_log_probs auto resolved it; scored in every step "
           f"{memory['plain']['dpo_in_step_over_sft']:.2f}x, {memory['plain']['dpo_in_step_peak_rss_mb']:.0f} MiB"
           if "dpo_in_step_peak_rss_mb" in memory["plain"] else "")
        + f"); with gradient checkpointing {memory['gradient_checkpointing']['dpo_over_sft']:.2f}x "
          f"(target {memory['target']}x)"
        + (f"; against SFT at micro-batch {memory['plain']['sft_twice_micro_batch']} (as many sequences a step as "
           f"DPO's chosen and rejected) {memory['plain']['dpo_over_sft_twice']:.2f}x "
           f"({memory['plain']['sft_twice_peak_rss_mb']:.0f} MiB)" if "sft_twice_peak_rss_mb" in memory["plain"]
           else "") + " |",
        *([scoring_row(f["scoring"])] if "scoring" in f else []),
        f"| DPO steps/s, tuiwiz vs a bare TRL script ({speed['repeats']} alternating runs of {speed['steps']} steps"
        + (f", both with precompute_ref_log_probs {str(speed['precompute_ref_log_probs']).lower()}"
           if "precompute_ref_log_probs" in speed else "") + ") "
        f"| {rates['tuiwiz']['median']:.2f} ({rates['tuiwiz']['range'][0]:.2f}-{rates['tuiwiz']['range'][1]:.2f}) vs "
        f"{rates['bare_trl']['median']:.2f} ({rates['bare_trl']['range'][0]:.2f}-{rates['bare_trl']['range'][1]:.2f})"
        f": {speed['tuiwiz_over_bare']:.2f}x |",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each, for memory and speed")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of the memory and speed runs")
    parser.add_argument("--json")
    parser.add_argument("--only", action="append", choices=("style", "scoring", "memory", "speed"),
                        help="run these sections and keep the others from the --json file (repeatable)")
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

    out = json.loads(Path(args.json).read_text()) if args.only and args.json and Path(args.json).exists() else {}
    out.update({"trl": trl.__version__, "cpu_count": os.cpu_count(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})
    sections = {"style": lambda: style(work, env), "scoring": lambda: scoring(work, env, args.repeats),
                "memory": lambda: memory(work, env, args.steps, args.repeats),
                "speed": lambda: speed(work, env, args.repeats, args.steps)}
    for name, measure in sections.items():
        if not args.only or name in args.only:
            out[name] = measure()
            print(name, json.dumps(out[name], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
