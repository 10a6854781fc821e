"""Where the time goes before the first optimizer step: `tuiwiz --profile` against a bare TRL script.

1. Whole command to the first optimizer step, alternately: `tuiwiz --profile` (the quickstart, 1 step logged
   at step 1) and the bare TRL script of bench/vs_trl.py with a callback that prints the time of step 1.
   tuiwiz's phases come from its own event log's timestamps: the command's start, the runner's first event
   (`loading`), `run_start` (model, data and trainer ready), the first step's log.
2. A profile of the runner itself: the run folder is made as the CLI makes it, then `tuiwiz.train RUN_DIR` runs
   in the foreground under cProfile (written by an exit handler, since the runner ends with os._exit); the
   cumulative time of the calls that make up start-up (imports, model loading, tokenizer, dataset building,
   the Trainer's construction, the first step) is read from the profile. `python -X importtime` of the same
   command gives the heaviest imports.
3. The runner imports its recipe and training stack with Python's cyclic collector paused, then freezes what
   the import made, and lets transformers read its models folder once rather than twice (tuiwiz/train/imports.py
   `import_recipe`). Alternately, in fresh processes: that import as the runner does it, and the plain import
   (`recipe_for`: the collector on, the folder read twice); each process reports the import's seconds and the
   seconds its collector ran (a `gc.callbacks` timer).

    python bench/startup.py --json bench/results/startup.json [--repeats 3]
    python bench/startup.py --from-json bench/results/startup.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Functions whose cumulative time is a phase of start-up (the first one matching, by file and name).
PHASES = [
    ("model loading (from_pretrained)", r"modeling_utils\.py", r"^from_pretrained$"),
    ("tokenizer loading", r"tokenization_utils_base\.py", r"^from_pretrained$"),
    ("dataset reading and rendering (tuiwiz)", r"tuiwiz/train/examples\.py", r".*"),
    ("Trainer construction (TRL's dataset preparation included)", r"trl/trainer/sft_trainer\.py", r"^__init__$"),
    ("TRL's dataset preparation", r"trl/trainer/sft_trainer\.py", r"^_prepare_dataset$"),
    ("peft wrapping (get_peft_model)", r"peft/mapping_func\.py", r"^get_peft_model$"),
    ("training loop (Trainer.train)", r"transformers/trainer\.py", r"^train$"),
]

BARE_STEP = r'''
import json, sys, time
T0 = float(sys.argv[5])
from transformers import TrainerCallback
class FirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            print("FIRST_STEP", time.time() - T0, flush=True)
            control.should_training_stop = True
'''


def quickstart(work: Path, steps: int = 1) -> Path:
    data = yaml.safe_load((ROOT / "profiles/quickstart.yaml").read_text())
    data["output"] = {"runs_dir": str(work / "runs"), "report_to": []}
    data["training"].update(max_steps=steps, logging_steps=1, save_steps=10_000)
    path = work / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def time_tuiwiz(work: Path, env: dict, profile: Path) -> dict:
    before = set((work / "runs").iterdir()) if (work / "runs").exists() else set()
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env, cwd=work,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    run = next(p for p in (work / "runs").iterdir() if p not in before)
    events = _events(run)
    loading = next(e["time"] for e in events if e["type"] == "status" and e.get("status") == "loading")
    ready = next(e["time"] for e in events if e["type"] == "run_start")
    first = next(e["time"] for e in events if e["type"] == "log" and e.get("step") == 1)
    return {"to_first_step_s": first - start, "cli_to_runner_s": loading - start,
            "runner_setup_s": ready - loading, "first_step_s": first - ready}


def time_bare(work: Path, env: dict) -> dict:
    from bench.vs_trl import BARE
    from tuiwiz.demo.build import demo_model_dir, ensure_demo_dataset

    data = yaml.safe_load((ROOT / "profiles/quickstart.yaml").read_text())
    t, m = data["training"], data["method"]
    from tuiwiz.profile.schema import TrainingConfig

    resolved = TrainingConfig(**t)
    settings = {"epochs": t["num_train_epochs"], "lr": t["learning_rate"], "batch": t["per_device_train_batch_size"],
                "warmup": t["warmup_steps"], "max_length": data["data"]["max_length"], "r": m["r"],
                "alpha": m["lora_alpha"], "gradient_checkpointing": resolved.gradient_checkpointing,
                "optim": resolved.optim, "weight_decay": resolved.weight_decay, "max_grad_norm": resolved.max_grad_norm}
    script = work / "bare_first_step.py"
    body = BARE.replace("trainer = SFTTrainer(", "trainer = SFTTrainer(callbacks=[FirstStep()], ")
    script.write_text(BARE_STEP + body.replace("import json, sys, time\n", "", 1))
    start = time.time()
    result = subprocess.run([sys.executable, str(script), str(demo_model_dir()), str(ensure_demo_dataset("alpaca")),
                             str(work / "bare-out"), json.dumps(settings), repr(start)], env=env,
                            capture_output=True, text=True)
    found = re.search(r"FIRST_STEP ([\d.]+)", result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(result.stdout + result.stderr)
    return {"to_first_step_s": float(found.group(1))}


PROFILED_RUNNER = """
import atexit, cProfile, runpy, sys
out = sys.argv.pop(1)
profiler = cProfile.Profile()
atexit.register(lambda: (profiler.disable(), profiler.dump_stats(out)))
sys.argv[0] = "tuiwiz.train"
profiler.enable()
runpy.run_module("tuiwiz.train", run_name="__main__", alter_sys=True)
"""


def profile_runner(work: Path, env: dict, profile: Path) -> dict:
    """cProfile of the runner in the foreground: the phases' cumulative seconds, and the heaviest imports."""
    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.launch import RUNNER_ENV, create_run

    run = create_run(load_profile(profile))
    out = work / "runner.prof"
    began = time.perf_counter()
    # --watched: train in this process (as after a recovery's exec) rather than in a child of a watcher. The
    # runner ends with os._exit once its exit handlers ran (tuiwiz/process_exit.py), before `python -m cProfile`
    # would write its file: the profile is written by an exit handler instead.
    subprocess.run([sys.executable, "-c", PROFILED_RUNNER, str(out), str(run.path), "--watched"],
                   env={**env, **RUNNER_ENV}, cwd=run.path, capture_output=True, text=True, check=True)
    total = time.perf_counter() - began
    stats = pstats.Stats(str(out))
    phases: dict[str, float] = {}
    for name, file_re, func_re in PHASES:
        best = 0.0
        for (file, _, func), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
            if re.search(file_re, file) and re.search(func_re, func):
                best = max(best, cumulative)
        phases[name] = round(best, 2)
    imports = 0.0
    for (file, _, func), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if func == "<module>" and file.endswith("tuiwiz/train/__main__.py"):
            imports = cumulative
    # -X importtime: the heaviest top-level packages the runner imports (self + children, first level)
    # as the runner does: what the run does not use is left out first (tuiwiz/train/imports.py)
    code = ("from tuiwiz.profile.io import load_profile; from tuiwiz.train.imports import leave_out_unused; "
            f"leave_out_unused(load_profile({str(profile)!r}).profile); "
            "import tuiwiz.train.lifecycle; import tuiwiz.train.recipes.sft")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True)
    tops: dict[str, float] = {}  # each package's own import time (self, summed over its modules)
    for line in result.stderr.splitlines():
        parts = line.split("|")
        own = parts[0].rsplit(":", 1)[-1].strip() if len(parts) == 3 else ""
        if own.isdigit():
            package = parts[2].strip().split(".")[0]
            tops[package] = tops.get(package, 0) + int(own) / 1e6
    heaviest = dict(sorted(tops.items(), key=lambda kv: -kv[1])[:8])
    return {"runner_total_s": round(total, 2), "runner_module_s": round(imports, 2), "phases_s": phases,
            "imports_s": {k: round(v, 2) for k, v in heaviest.items()},
            "imports_total_s": round(sum(tops.values()), 2)}


GC_IMPORT = """
import gc, json, sys, time
from tuiwiz.profile.io import load_profile
from tuiwiz.train.imports import import_recipe, leave_out_unused
from tuiwiz.train.recipes import recipe_for
leave_out_unused(load_profile(sys.argv[1]).profile)
spent = [0.0, 0.0]
def timer(phase, info):
    if phase == "start":
        spent[1] = time.perf_counter()
    else:
        spent[0] += time.perf_counter() - spent[1]
gc.callbacks.append(timer)
began = time.perf_counter()
(import_recipe if sys.argv[2] == "paused" else recipe_for)("sft")
print(json.dumps({"import_s": time.perf_counter() - began, "collector_s": spent[0]}))
"""


def collector_ab(env: dict, profile: Path, repeats: int) -> dict:
    """The recipe's import as the runner does it and the plain import, alternately."""
    rows: dict[str, list[dict]] = {"paused": [], "on": []}
    for i in range(repeats):
        for name in (("paused", "on") if i % 2 == 0 else ("on", "paused")):
            result = subprocess.run([sys.executable, "-c", GC_IMPORT, str(profile), name], env=env,
                                    capture_output=True, text=True, check=True)
            rows[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    median = {name: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
              for name, runs in rows.items()}
    return {"runs": rows, "median": median,
            "range": {name: [round(f(r["import_s"] for r in runs), 2) for f in (min, max)]
                      for name, runs in rows.items()}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--from-json")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-startup-"))
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    os.environ.update(TUIWIZ_CACHE_DIR=env["TUIWIZ_CACHE_DIR"], TUIWIZ_STATE_DIR=env["TUIWIZ_STATE_DIR"])
    from tuiwiz.demo.build import ensure_demo_datasets, ensure_demo_model

    ensure_demo_model(), ensure_demo_datasets()  # built once, outside the timings
    profile = quickstart(work)
    time_tuiwiz(work, env, profile)  # warm the file cache for both
    rows: dict[str, list[dict]] = {"tuiwiz": [], "bare_trl": []}
    for i in range(args.repeats):
        for name in (("tuiwiz", "bare_trl") if i % 2 == 0 else ("bare_trl", "tuiwiz")):
            figures = time_tuiwiz(work, env, profile) if name == "tuiwiz" else time_bare(work, env)
            rows[name].append(figures)
            print(name, json.dumps(figures), flush=True)
    median = {name: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
              for name, runs in rows.items()}
    spread = {name: [round(f(r["to_first_step_s"] for r in runs), 2) for f in (min, max)]
              for name, runs in rows.items()}
    out = {"repeats": args.repeats, "cpu_count": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2),
           "runs": rows, "median": median, "range": spread,
           "ratio": round(median["tuiwiz"]["to_first_step_s"] / median["bare_trl"]["to_first_step_s"], 2),
           "runner_profile": profile_runner(work, env, profile),
           "collector": collector_ab(env, profile, args.repeats)}
    print(json.dumps({k: out[k] for k in ("median", "range", "ratio", "runner_profile", "collector")}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    t, b, p = f["median"]["tuiwiz"], f["median"]["bare_trl"], f["runner_profile"]
    lines = [
        "| to the first optimizer step (median of "
        f"{f['repeats']}, range) | seconds |", "|---|---|",
        f"| `tuiwiz --profile` (quickstart) | {t['to_first_step_s']:.1f} ({f['range']['tuiwiz'][0]:.1f} to "
        f"{f['range']['tuiwiz'][1]:.1f}) |",
        f"| bare TRL script, same settings | {b['to_first_step_s']:.1f} ({f['range']['bare_trl'][0]:.1f} to "
        f"{f['range']['bare_trl'][1]:.1f}) |",
        f"| ratio | {f['ratio']:.2f} |",
        "", "tuiwiz's share, from its event log: "
        f"command to the runner's first event {t['cli_to_runner_s']:.1f} s, runner set-up (imports, model, data, "
        f"Trainer) {t['runner_setup_s']:.1f} s, first step {t['first_step_s']:.1f} s.", "",
        "| in the runner (cProfile, cumulative) | seconds |", "|---|---|",
        f"| whole runner process | {p['runner_total_s']:.1f} |",
        f"| imports of the runner's modules (-X importtime, top level) | {p['imports_total_s']:.1f} |",
    ]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in p["phases_s"].items()]
    lines += ["", "Heaviest imports: " + ", ".join(f"{k} {v:.1f} s" for k, v in p["imports_s"].items()) + "."]
    if "collector" in f:
        c = f["collector"]
        paused, on = c["median"]["paused"], c["median"]["on"]
        lines += ["", f"| the runner's recipe import (median of {f['repeats']}, range) | seconds | of which "
                  "the cyclic collector ran |", "|---|---|---|",
                  "| as the runner does it: the collector paused, then the stack frozen; transformers' models "
                  f"folder read once | {paused['import_s']:.1f} "
                  f"({c['range']['paused'][0]:.1f} to {c['range']['paused'][1]:.1f}) | {paused['collector_s']:.2f} |",
                  f"| plain: the collector on, the folder read twice | {on['import_s']:.1f} "
                  f"({c['range']['on'][0]:.1f} to {c['range']['on'][1]:.1f}) "
                  f"| {on['collector_s']:.2f} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
