"""One epoch of variable-length SFT, the ways a user could run it, alternately, on the same data: a bare TRL
script unpacked and with TRL's own packing; tuiwiz unpacked (the same settings as the bare script: parity),
packed (examples kept apart), grouped by length, and with what `tuiwiz recommend` chooses for this data.

The data: alpaca-style rows (an instruction and an output made of the demo's answers) whose lengths spread from
about 25 to 400 tokens, as instruction sets do; a held-out set of the same kind. Settings: the demo model
(4 layers, width 128), LoRA r8 on every linear layer, micro-batch 8, one epoch, fp32, data.max_length 512. The
recommended run takes `tuiwiz recommend --method lora --rank 8 --target-batch 8`'s profile for this data as
written, one epoch.

Each run is one whole command (`tuiwiz --profile`, or `python bare.py`), timed from start to exit; start-up is
the time from the command's start to the end of the first optimizer step; "after the model is saved" is the time
from the trained adapter being written to the command's exit; training tokens/s are the epoch's
own tokens (no padding: the same count for every run) over the Trainer's train_runtime; peak RSS is the
training process's. The load average and the CPU steal share during each run are recorded. Afterwards,
outside the timing, one evaluator scores every run's adapter the same way: the mean loss per completion token
over the held-out rows, one row at a time (no padding, no packing), so runs that batched differently are
compared on the same measure. The bare script's resolved TrainingArguments are diffed against tuiwiz's
(`trainer-args.json` in its run folder) for the unpacked pair, to show the two did the same work.

    python bench/sft_speed.py --json bench/results/sft-speed.json [--repeats 3] [--rows 1000]
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

MODES = ("bare_trl", "tuiwiz", "trl_packed", "tuiwiz_packed", "tuiwiz_grouped", "tuiwiz_recommended")
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


def cpu_times() -> tuple[float, float]:
    """(steal, total) jiffies of all CPUs so far (/proc/stat)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7] if len(fields) > 7 else 0.0, sum(fields[:8])


def timed(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run one whole command; (its result, {start, wall_s, load, steal_share})."""
    load = os.getloadavg()[0]
    steal0, total0 = cpu_times()
    start = time.time()
    began = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - began
    steal1, total1 = cpu_times()
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    return result, {"start": start, "wall_s": wall, "load": load,
                    "steal_share": (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0}


def recommended_profile(work: Path, env: dict, train: Path) -> Path:
    """`tuiwiz recommend`'s profile for this data (LoRA r8, batch 8 as the others), one epoch, written as is."""
    path = work / "recommended.yaml"
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "recommend", "--model", "demo", "--data", str(train),
                             "--method", "lora", "--rank", str(SETTINGS["r"]), "--target-batch",
                             str(SETTINGS["batch"]), "--write", str(path)], env=env, cwd=work,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    data = yaml.safe_load(path.read_text())
    data["training"].update(num_train_epochs=SETTINGS["epochs"], save_steps=100_000)
    data["output"] = {"runs_dir": str(work / "runs"), "report_to": []}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_tuiwiz(work: Path, env: dict, profile: Path) -> tuple[dict, Path, dict]:
    before = set((work / "runs").iterdir()) if (work / "runs").exists() else set()
    _, t = timed([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env, work)
    run = next(p for p in (work / "runs").iterdir() if p not in before and p.is_dir())
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    end = next(e for e in events if e["type"] == "run_end")
    start_event = next(e for e in events if e["type"] == "run_start")
    logs = [e for e in events if e["type"] == "log"]
    first = next(e["time"] for e in logs if e.get("step") == 1)
    m = end["metrics"]
    # run_end is written once the adapter is saved: what follows is the runner's exit and the CLI's last lines
    after = t["start"] + t["wall_s"] - end["time"]
    return ({"wall_s": t["wall_s"], "to_first_step_s": first - t["start"], "after_saved_s": after,
             "train_runtime": m["train_runtime"],
             "train_loss": m["train_loss"], "steps": end["step"], "rows": start_event["train_examples"],
             "peak_rss_mb": max((e.get("memory") or {}).get("peak_rss_mb", 0) for e in logs),
             "load": t["load"], "steal_share": t["steal_share"]},
            run / "output", json.loads((run / "trainer-args.json").read_text()))


def run_bare(work: Path, env: dict, train: Path, n: int, packing: bool = False) -> tuple[dict, Path, dict]:
    from tuiwiz.demo.build import demo_model_dir
    from tuiwiz.profile.schema import TrainingConfig

    resolved = TrainingConfig()  # the defaults the profile leaves to tuiwiz, stated to the bare script
    settings = {**SETTINGS, "gradient_checkpointing": resolved.gradient_checkpointing, "optim": resolved.optim,
                "weight_decay": resolved.weight_decay, "max_grad_norm": resolved.max_grad_norm, "packing": packing}
    script = work / "bare.py"
    script.write_text(BARE)
    out = work / f"bare-{'packed-' if packing else ''}{n}"
    result, t = timed([sys.executable, str(script), str(demo_model_dir()), str(train), str(out),
                       json.dumps(settings)], env)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return ({"wall_s": t["wall_s"], "to_first_step_s": figures.pop("first_step_at") - t["start"],
             "after_saved_s": t["start"] + t["wall_s"] - figures.pop("saved_at"),
             "train_runtime": figures["train_runtime"], "train_loss": figures["train_loss"],
             "steps": figures["steps"], "rows": sum(1 for _ in train.open()), "peak_rss_mb": figures["peak_rss_mb"],
             "load": t["load"], "steal_share": t["steal_share"]},
            out, json.loads(Path(str(out) + ".args.json").read_text()))


def args_diff(bare: dict, ours: dict) -> dict:
    """Resolved arguments that differ (besides where files go and how progress is shown): name -> [bare, ours]."""
    keys = (set(bare) | set(ours)) - IGNORED_ARGS
    return {k: [bare.get(k), ours.get(k)] for k in sorted(keys) if bare.get(k) != ours.get(k)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--modes", default=",".join(MODES), help="comma list (a subset, to try one out)")
    parser.add_argument("--json")
    parser.add_argument("--from-json")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    modes = tuple(m for m in MODES if m in args.modes.split(","))
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-sft-speed-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1"}
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"])
    from tuiwiz.demo.build import ensure_demo_datasets, ensure_demo_model

    ensure_demo_model(), ensure_demo_datasets()  # built once, outside the timings
    train, test, lengths = make_data(work, args.rows, args.held_out)
    real_tokens = sum(min(n, SETTINGS["max_length"]) for n in lengths)
    recommended = recommended_profile(work, env, train)
    chosen = yaml.safe_load(recommended.read_text())
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    diff = None
    for i in range(args.repeats):
        order = modes if i % 2 == 0 else tuple(reversed(modes))
        for mode in order:
            if mode in ("bare_trl", "trl_packed"):
                figures, adapter, resolved = run_bare(work, env, train, i, packing=mode == "trl_packed")
            else:
                profile = recommended if mode == "tuiwiz_recommended" else tuiwiz_profile(work, train, mode)
                figures, adapter, resolved = run_tuiwiz(work, env, profile)
            figures["tokens_per_second"] = real_tokens / figures["train_runtime"]
            figures["held_out_loss"] = held_out_loss(adapter, test)
            runs[mode].append(figures)
            if mode in ("bare_trl", "tuiwiz"):
                runs[mode][-1]["_args"] = resolved
            print(mode, json.dumps({k: v for k, v in figures.items() if k != "_args"}), flush=True)
        if diff is None and {"bare_trl", "tuiwiz"} <= set(modes):
            diff = args_diff(runs["bare_trl"][-1]["_args"], runs["tuiwiz"][-1]["_args"])
    for mode_runs in runs.values():
        for r in mode_runs:
            r.pop("_args", None)
    keys = ("wall_s", "to_first_step_s", "after_saved_s", "train_runtime", "tokens_per_second", "peak_rss_mb",
            "train_loss", "held_out_loss")
    median = {m: {k: statistics.median(r[k] for r in rs) for k in keys} | {"steps": rs[0]["steps"],
                                                                           "rows": rs[0]["rows"]}
              for m, rs in runs.items()}
    ranges = {m: {k: [min(r[k] for r in rs), max(r[k] for r in rs)] for k in keys} for m, rs in runs.items()}
    bare = median.get("bare_trl")
    ratios = {m: {"wall": median[m]["wall_s"] / bare["wall_s"],
                  "train_runtime": median[m]["train_runtime"] / bare["train_runtime"],
                  "to_first_step": median[m]["to_first_step_s"] / bare["to_first_step_s"]}
              for m in modes if m != "bare_trl"} if bare else {}
    every = [r for rs in runs.values() for r in rs]
    out = {"settings": SETTINGS, "rows": args.rows, "held_out": args.held_out, "real_tokens": real_tokens,
           "token_lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                             "padding_share_if_shuffled": padding_share(lengths, SETTINGS["batch"])},
           "recommended": {"data": chosen["data"], "training": chosen["training"], "method": chosen["method"]},
           "repeats": args.repeats, "cpu_count": os.cpu_count(),
           "load": [min(r["load"] for r in every), max(r["load"] for r in every)],
           "steal_share": [min(r["steal_share"] for r in every), max(r["steal_share"] for r in every)],
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


NAMES = {"bare_trl": "bare TRL script, shuffled", "tuiwiz": "tuiwiz, shuffled (same settings)",
         "trl_packed": "bare TRL script, `packing=True` (TRL's bfd)", "tuiwiz_packed": "tuiwiz, `data.packing: true`",
         "tuiwiz_grouped": "tuiwiz, `data.group_by_length: true`",
         "tuiwiz_recommended": "tuiwiz, what `tuiwiz recommend` chose"}


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    med, rng, ratio = f["median"], f["range"], f["ratio_to_bare"]
    lines = ["| run | whole command, s (range) | to first step, s | training, s | after the model is saved, s "
             "| training tokens/s | peak RSS, MiB | steps | train loss | held-out loss (range) "
             "| whole command / bare TRL | training / bare TRL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in (m for m in MODES if m in med):
        m, r = med[mode], rng[mode]
        share = "1" if mode == "bare_trl" else f"{ratio[mode]['wall']:.2f}"
        train_share = "1" if mode == "bare_trl" else f"{ratio[mode]['train_runtime']:.2f}"
        lines.append(f"| {NAMES[mode]} | {m['wall_s']:.1f} ({r['wall_s'][0]:.1f} to {r['wall_s'][1]:.1f}) | "
                     f"{m['to_first_step_s']:.1f} | {m['train_runtime']:.1f} | {m['after_saved_s']:.1f} | "
                     f"{m['tokens_per_second']:,.0f} | "
                     f"{m['peak_rss_mb']:.0f} | {m['steps']} | {m['train_loss']:.3f} | {m['held_out_loss']:.3f} "
                     f"({r['held_out_loss'][0]:.3f} to {r['held_out_loss'][1]:.3f}) | {share} | {train_share} |")
    t, rec = f["token_lengths"], f["recommended"]
    rt = rec["training"]
    diff = ", ".join(f"`{k}` {v[0]!r} vs {v[1]!r}" for k, v in (f["args_diff"] or {}).items()) or "none"
    packed = "packing" if rec["data"].get("packing") else ("grouping by length" if rec["data"].get("group_by_length")
                                                             else "neither packing nor grouping")
    lines += ["", f"{f['rows']} training rows of {t['min']} to {t['max']} tokens (median {t['median']:.0f}); "
              f"shuffled batches of {f['settings']['batch']} are {t['padding_share_if_shuffled']:.0%} padding. "
              f"Medians of {f['repeats']} rounds, alternating, on {f['cpu_count']} CPUs; load average "
              f"{f['load'][0]:.1f} to {f['load'][1]:.1f}, CPU steal {f['steal_share'][0]:.0%} to "
              f"{f['steal_share'][1]:.0%} of the time. `tuiwiz recommend` chose {packed}, micro-batch "
              f"{rt['per_device_train_batch_size']} x {rt.get('gradient_accumulation_steps', 1)} accumulated, "
              f"learning rate {rt['learning_rate']:g}, max length {rec['data']['max_length']}. "
              f"Resolved Trainer arguments that differ between the bare script and tuiwiz shuffled (besides output "
              f"paths, logging, saving and progress reporting): {diff}."]
    if "tuiwiz_recommended" in f["runs"] and "bare_trl" in f["runs"]:
        slowest = max(r["wall_s"] for r in f["runs"]["tuiwiz_recommended"])
        fastest = min(r["wall_s"] for r in f["runs"]["bare_trl"])
        lines[-1] += (f" What `tuiwiz recommend` chose, its slowest command over the bare script's fastest: "
                      f"{slowest / fastest:.3f}x.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
