"""One epoch of variable-length SFT: a bare TRL script against tuiwiz unpacked, packed (examples kept apart)
and grouped by length, alternately, on the same data and settings.

The data: alpaca-style rows (an instruction and an output made of the demo's answers) whose lengths spread from
about 25 to 400 tokens, as instruction sets do; a held-out set of the same kind. Settings: the demo model
(4 layers, width 128), LoRA r8 on every linear layer, micro-batch 8, one epoch, fp32, data.max_length 512.

Each run is one whole command (`tuiwiz --profile`, or `python bare.py`), timed from start to exit. Afterwards,
outside the timing, one evaluator scores every run's adapter the same way: the mean loss per completion token
over the held-out rows, one row at a time (no padding, no packing), so runs that batched differently are
compared on the same measure. The bare script's resolved TrainingArguments are diffed against tuiwiz's
(`trainer-args.json` in its run folder) for the unpacked pair, to show the two did the same work.

    python bench/sft_speed.py --json bench/results/sft-speed.json [--repeats 2] [--rows 1000]
    python bench/sft_speed.py --from-json bench/results/sft-speed.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.vs_trl import BARE  # noqa: E402  (the bare TRL script: the same for both benches)

MODES = ("bare_trl", "tuiwiz", "tuiwiz_packed", "tuiwiz_grouped")
SETTINGS = {"epochs": 1, "lr": 2e-3, "batch": 8, "max_length": 512, "r": 8, "alpha": 16, "warmup": 0.05}
# Differences between the two resolved argument sets that change no work: where files go, how progress is
# reported, and names. Anything else that differs is reported.
IGNORED_ARGS = {"output_dir", "logging_dir", "run_name", "report_to", "hub_token", "push_to_hub_token",
                "disable_tqdm", "logging_first_step", "logging_nan_inf_filter", "save_strategy", "save_steps",
                "save_total_limit", "logging_steps", "trackio_space_id", "project", "dataset_num_proc",
                "include_num_input_tokens_seen"}


def make_data(folder: Path, rows: int, held_out: int, seed: int = 0) -> tuple[Path, Path, list[int]]:
    """Rows whose outputs join the demo's answers until a drawn token length (log-uniform, 25 to 400)."""
    from transformers import AutoTokenizer

    from tuiwiz.demo.build import demo_model_dir, ensure_demo_dataset

    demo = [json.loads(line) for line in ensure_demo_dataset("alpaca").read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    rng = random.Random(seed)

    def row() -> dict:
        first = rng.choice(demo)
        target = round(25 * (400 / 25) ** rng.random())
        parts, length = [first["output"]], 0
        while True:
            length = len(tokenizer.apply_chat_template(
                [{"role": "user", "content": first["instruction"]},
                 {"role": "assistant", "content": " ".join(parts)}], tokenize=True, return_dict=False))
            if length >= target:
                break
            parts.append(rng.choice(demo)["output"])
        return {"instruction": first["instruction"], "output": " ".join(parts), "tokens": length}

    made = [row() for _ in range(rows + held_out)]
    train, test = folder / "train.jsonl", folder / "held-out.jsonl"
    for path, part in ((train, made[:rows]), (test, made[rows:])):
        path.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "output")}) + "\n" for r in part))
    return train, test, [r["tokens"] for r in made[:rows]]


def held_out_loss(adapter: Path, held_out: Path) -> float:
    """Mean loss per completion token over the held-out rows, one row at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuiwiz.demo.build import demo_model_dir

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype="float32"),
                                      str(adapter)).eval()
    total = count = 0.0
    for line in held_out.read_text().splitlines():
        r = json.loads(line)
        user = [{"role": "user", "content": r["instruction"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True, return_dict=False)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": r["output"]}],
                                             tokenize=True, return_dict=False)[:SETTINGS["max_length"]]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, :len(prompt)] = -100
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        target = labels[0, 1:]
        losses = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        total += float(losses)
        count += int((target != -100).sum())
    return total / count


def tuiwiz_profile(work: Path, train: Path, mode: str) -> Path:
    data = {
        "version": 1, "task": "sft", "model": {"name_or_path": "demo"},
        "data": {"path": str(train), "max_length": SETTINGS["max_length"], "packing": mode == "tuiwiz_packed",
                 "group_by_length": mode == "tuiwiz_grouped"},
        "method": {"type": "lora", "r": SETTINGS["r"], "lora_alpha": SETTINGS["alpha"], "lora_dropout": 0.0},
        "training": {"num_train_epochs": SETTINGS["epochs"], "learning_rate": SETTINGS["lr"],
                     "per_device_train_batch_size": SETTINGS["batch"], "lr_scheduler_type": "cosine",
                     "warmup_steps": SETTINGS["warmup"], "logging_steps": 5, "save_steps": 100_000},
        "output": {"runs_dir": str(work / "runs"), "report_to": []},
    }
    path = work / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_tuiwiz(work: Path, env: dict, train: Path, mode: str) -> tuple[dict, Path, dict]:
    profile = tuiwiz_profile(work, train, mode)
    before = set((work / "runs").iterdir()) if (work / "runs").exists() else set()
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env, cwd=work,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    run = next(p for p in (work / "runs").iterdir() if p not in before and p.is_dir())
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    end = next(e for e in events if e["type"] == "run_end")
    start_event = next(e for e in events if e["type"] == "run_start")
    m = end["metrics"]
    return ({"wall_s": wall, "train_runtime": m["train_runtime"], "tokens_per_second": m["train_tokens_per_second"],
             "train_loss": m["train_loss"], "steps": end["step"], "rows": start_event["train_examples"]},
            run / "output", json.loads((run / "trainer-args.json").read_text()))


def run_bare(work: Path, env: dict, train: Path, n: int) -> tuple[dict, Path, dict]:
    from tuiwiz.demo.build import demo_model_dir
    from tuiwiz.profile.schema import TrainingConfig

    resolved = TrainingConfig()  # the defaults the profile leaves to tuiwiz, stated to the bare script
    settings = {**SETTINGS, "gradient_checkpointing": resolved.gradient_checkpointing, "optim": resolved.optim,
                "weight_decay": resolved.weight_decay, "max_grad_norm": resolved.max_grad_norm}
    script = work / "bare.py"
    script.write_text(BARE)
    out = work / f"bare-{n}"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), str(demo_model_dir()), str(train), str(out),
                             json.dumps(settings)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["rows"] = sum(1 for _ in train.open())
    return {"wall_s": wall, **figures}, out, json.loads(Path(str(out) + ".args.json").read_text())


def args_diff(bare: dict, ours: dict) -> dict:
    """Resolved arguments that differ (besides where files go and how progress is shown): name -> [bare, ours]."""
    keys = (set(bare) | set(ours)) - IGNORED_ARGS
    return {k: [bare.get(k), ours.get(k)] for k in sorted(keys) if bare.get(k) != ours.get(k)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--json")
    parser.add_argument("--from-json")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-sft-speed-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1"}
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])
    from tuiwiz.demo.build import ensure_demo_datasets, ensure_demo_model

    ensure_demo_model(), ensure_demo_datasets()  # built once, outside the timings
    train, test, lengths = make_data(work, args.rows, args.held_out)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    diff = None
    for i in range(args.repeats):
        order = MODES if i % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            if mode == "bare_trl":
                figures, adapter, resolved = run_bare(work, env, train, i)
            else:
                figures, adapter, resolved = run_tuiwiz(work, env, train, mode)
            figures["held_out_loss"] = held_out_loss(adapter, test)
            runs[mode].append(figures)
            if mode in ("bare_trl", "tuiwiz"):
                runs[mode][-1]["_args"] = resolved
            print(mode, json.dumps({k: v for k, v in figures.items() if k != "_args"}), flush=True)
        if diff is None:
            diff = args_diff(runs["bare_trl"][-1]["_args"], runs["tuiwiz"][-1]["_args"])
    for mode_runs in runs.values():
        for r in mode_runs:
            r.pop("_args", None)
    keys = ("wall_s", "train_runtime", "tokens_per_second", "held_out_loss")
    median = {m: {k: statistics.median(r[k] for r in rs) for k in keys} | {"steps": rs[0]["steps"],
                                                                           "rows": rs[0]["rows"]}
              for m, rs in runs.items()}
    ranges = {m: {k: [min(r[k] for r in rs), max(r[k] for r in rs)] for k in keys} for m, rs in runs.items()}
    bare = median["bare_trl"]
    ratios = {m: {"wall": median[m]["wall_s"] / bare["wall_s"],
                  "train_runtime": median[m]["train_runtime"] / bare["train_runtime"]} for m in MODES[1:]}
    out = {"settings": SETTINGS, "rows": args.rows, "held_out": args.held_out,
           "token_lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                             "padding_share_if_shuffled": padding_share(lengths, SETTINGS["batch"])},
           "repeats": args.repeats, "cpu_count": os.cpu_count(), "load_before": os.getloadavg()[0],
           "runs": runs, "median": median, "range": ranges, "ratio_to_bare": ratios, "args_diff": diff}
    print(json.dumps({"median": median, "ratio_to_bare": ratios, "args_diff": diff}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def padding_share(lengths: list[int], batch: int, seed: int = 42) -> float:
    """The share of a shuffled epoch's padded tokens that are padding (batches padded to their longest)."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    padded = sum(max(order[i:i + batch]) * len(order[i:i + batch]) for i in range(0, len(order), batch))
    return 1 - sum(order) / padded


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    med, rng, ratio = f["median"], f["range"], f["ratio_to_bare"]
    names = {"bare_trl": "bare TRL script, shuffled", "tuiwiz": "tuiwiz, shuffled",
             "tuiwiz_packed": "tuiwiz, `data.packing: true`", "tuiwiz_grouped": "tuiwiz, `data.group_by_length: true`"}
    lines = ["| run | whole command (median, range) | training time | optimizer steps | held-out loss "
             "(median, range) | whole command / bare TRL |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        m, r = med[mode], rng[mode]
        share = "1" if mode == "bare_trl" else f"{ratio[mode]['wall']:.2f}"
        lines.append(f"| {names[mode]} | {m['wall_s']:.0f} s ({r['wall_s'][0]:.0f} to {r['wall_s'][1]:.0f}) | "
                     f"{m['train_runtime']:.0f} s | {m['steps']} | {m['held_out_loss']:.3f} "
                     f"({r['held_out_loss'][0]:.3f} to {r['held_out_loss'][1]:.3f}) | {share} |")
    t = f["token_lengths"]
    diff = ", ".join(f"`{k}` {v[0]!r} vs {v[1]!r}" for k, v in f["args_diff"].items()) or "none"
    lines += ["", f"{f['rows']} training rows of {t['min']} to {t['max']} tokens (median {t['median']:.0f}); "
              f"shuffled batches of {f['settings']['batch']} are {t['padding_share_if_shuffled']:.0%} padding. "
              f"{f['repeats']} rounds, alternating, on {f['cpu_count']} CPUs. Resolved Trainer arguments that "
              f"differ between the bare script and tuiwiz shuffled (besides output paths, logging, saving and "
              f"progress reporting): {diff}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
