"""Two memory paths of the runner on a wide-vocabulary model, measured on the CPU: QLoRA with and without peft's
fp32 upcast of the unquantized weights, and SFT's loss through TRL's fused LM head against the model's whole logits.

Each point runs in a fresh process: the SFT recipe's own setup (tuiwiz.train.recipes.sft.set_up: the profile's
model, method and TRL's SFTTrainer, as the runner builds them) on the demo model's shape widened to Llama 3's
128,256-token vocabulary (random weights, the demo tokenizer), then the process's resident-set high-water mark
(VmHWM) is reset and the steps run. Reported: that training peak above the RSS before the model was loaded, the
whole process's peak (loading included), every logged loss, and the estimate of the same settings (its CPU form,
less the process's own RSS, which the first figure leaves out too).

- qlora: 4-bit NF4 base loaded from bf16 weights (``model.dtype: bfloat16``), LoRA r16 on every linear layer,
  ``method.upcast_non_quantized`` true (peft's prepare_model_for_kbit_training: embeddings, norms and head in
  fp32) and false (they stay bf16; the runner's default).
- loss: LoRA in fp32, the runner's SFT trainer scoring through TRL's fused, tiled LM head (``training.loss_head:
  fused``) against the runner's cross-entropy over the model's whole logits (``whole``: train/whole_logits.py).

Points alternate (upcast, no upcast, ...; fused, whole, ...) ``--repeats`` times; the figures are medians. This
machine is shared (2 cores): timings are inflated, and only ratios from one run count.

    python bench/memory_paths.py --json bench/results/memory-paths.json
    python bench/memory_paths.py --from-json bench/results/memory-paths.json   # print the docs block
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 128_256  # Llama 3's
# per pair: QLoRA's weights show at any length; the logits' share grows with the tokens of a step
SETTINGS = {"qlora": dict(max_length=128, batch=4, steps=20, lr=2e-3),
            "loss": dict(max_length=256, batch=8, steps=8, lr=2e-3)}
MiB = 2**20


def build_model(folder: Path) -> Path:
    """The demo model's shape and tokenizer with Llama 3's vocabulary, random bf16 weights."""
    import shutil

    import torch
    import transformers

    from tuiwiz.demo.build import demo_model_dir

    demo = demo_model_dir()
    config = transformers.AutoConfig.from_pretrained(demo)
    config.vocab_size = VOCAB
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    target = folder / "wide-vocab"
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (demo / name).exists():
            shutil.copy(demo / name, target / name)
    return target


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def profile_for(point: dict, model: str) -> dict:
    settings = SETTINGS[point["pair"]]
    method: dict = {"type": point["method"], "r": 16, "lora_alpha": 32}
    if point["method"] == "qlora":
        method["upcast_non_quantized"] = point["upcast"]
    return {
        "task": "sft",
        "model": {"name_or_path": model, **({"dtype": "bfloat16"} if point["method"] == "qlora" else {})},
        "data": {"path": "demo:alpaca", "max_length": settings["max_length"]},
        "method": method,
        "training": {"max_steps": int(os.environ.get("MEMORY_PATHS_STEPS", settings["steps"])),
                     "per_device_train_batch_size": settings["batch"],
                     "learning_rate": settings["lr"], "logging_steps": 1, "save_steps": 10_000,
                     "pad_to_max_length": True, "loss_head": point["loss"]},
        "output": {"report_to": []},
    }


def child(point: dict, model: str, folder: str) -> dict:
    """One point, in this (fresh) process."""
    import transformers

    from tuiwiz.profile.schema import Profile
    from tuiwiz.run.rundir import RunDir
    from tuiwiz.train.recipes.sft import set_up

    before = _status_kb("VmRSS") * 1024
    profile = Profile.model_validate(profile_for(point, model))
    run = RunDir(Path(folder) / "run")
    run.path.mkdir(parents=True)
    losses: list[float] = []

    class Losses(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(round(float(logs["loss"]), 4))

    trainer = set_up(profile, run, [Losses()]).trainer
    lm_head = trainer.model.get_output_embeddings()
    loaded = _status_kb("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    return {"train_peak_mb": round((_status_kb("VmHWM") * 1024 - before) / MiB, 1),
            "after_load_mb": round((loaded - before) / MiB, 1),
            "process_peak_mb": round(_status_kb("VmHWM") / 1024, 1), "losses": losses,
            "lm_head_dtype": str(lm_head.weight.dtype).removeprefix("torch."), "train_s": round(seconds, 1)}


def model_config() -> dict:
    from tuiwiz.demo.build import demo_model_dir

    return {**json.loads((demo_model_dir() / "config.json").read_text()), "vocab_size": VOCAB}


def estimate_point(point: dict) -> float:
    """The estimate of the point's settings on the CPU, MiB, less the process's own RSS (cpu_runtime)."""
    from dataclasses import replace

    from tuiwiz.plan.memory import Plan, estimate
    from tuiwiz.plan.modelinfo import model_from_config
    from tuiwiz.profile.schema import Profile

    profile = Profile.model_validate(profile_for(point, "demo"))
    info = model_from_config(model_config(), "wide-vocab")
    plan = replace(Plan.from_profile(profile, info, device="cpu"), fused_loss=point["loss"] == "fused")
    b = estimate(info, plan).per_device
    return round((b.total - b.context) / MiB, 1)


def run_point(point: dict, model: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="tuiwiz-memory-paths-") as folder:
        result = subprocess.run([sys.executable, __file__, "--child", json.dumps(point), str(model), folder],
                                env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{point} failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


POINTS = {
    "qlora": ({"pair": "qlora", "method": "qlora", "upcast": True, "loss": "fused"},
              {"pair": "qlora", "method": "qlora", "upcast": False, "loss": "fused"}),
    "loss": ({"pair": "loss", "method": "lora", "loss": "fused"}, {"pair": "loss", "method": "lora", "loss": "whole"}),
}


def name(point: dict) -> str:
    if point["method"] == "qlora":
        return "qlora-upcast" if point["upcast"] else "qlora-16bit"
    return f"lora-{point['loss']}"


def summarize(runs: dict[str, list[dict]], estimates: dict[str, float]) -> dict:
    out = {}
    for key, rows in runs.items():
        out[key] = {
            "train_peak_mb": statistics.median(r["train_peak_mb"] for r in rows),
            "train_peak_range_mb": [min(r["train_peak_mb"] for r in rows), max(r["train_peak_mb"] for r in rows)],
            "after_load_mb": statistics.median(r["after_load_mb"] for r in rows),
            "process_peak_mb": statistics.median(r["process_peak_mb"] for r in rows),
            "estimate_mb": estimates[key],
            "first_loss": rows[0]["losses"][0], "last_loss": statistics.median(r["losses"][-1] for r in rows),
            "losses": rows[0]["losses"], "lm_head_dtype": rows[0]["lm_head_dtype"],
            "train_s": statistics.median(r["train_s"] for r in rows),
        }
    return out


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    rows = [
        ("QLoRA, unquantized weights upcast to fp32 (`upcast_non_quantized: true`)", "qlora-upcast"),
        ("QLoRA, unquantized weights kept bf16 (the default)", "qlora-16bit"),
        ("LoRA fp32, the model's whole logits (`training.loss_head: whole`)", "lora-whole"),
        ("LoRA fp32, TRL's fused LM head (`training.loss_head: fused`)", "lora-fused"),
    ]
    lines = [
        f"A {f['params_m']:.0f}M-parameter Llama (the demo's blocks, {f['vocab']:,}-token vocabulary), demo:alpaca "
        f"on the CPU; medians of {f['repeats']} alternating runs.",
        "",
        "| path | tokens a step | training peak MiB (range) | estimate MiB | loss, first → last (steps) |",
        "|---|---|---|---|---|",
    ]
    for label, key in rows:
        r, s = f["points"][key], f["settings"]["qlora" if key.startswith("qlora") else "loss"]
        lo, hi = r["train_peak_range_mb"]
        lines.append(f"| {label} | {s['batch']} × {s['max_length']} | {r['train_peak_mb']:,.0f} ({lo:,.0f}–{hi:,.0f}) "
                     f"| {r['estimate_mb']:,.0f} | {r['first_loss']:.2f} → {r['last_loss']:.2f} ({len(r['losses'])}) |")
    p = {key: r["train_peak_mb"] for key, r in f["points"].items()}
    lines += [
        "",
        f"Without the upcast QLoRA's training peak is {p['qlora-16bit'] / p['qlora-upcast']:.2f}× the upcast one's; "
        f"the fused head's is {p['lora-fused'] / p['lora-whole']:.2f}× the whole logits'.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=sorted(POINTS), help="measure one pair only")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    parser.add_argument("--reestimate", metavar="FILE", help="recompute a results file's estimates (today's code)")
    args = parser.parse_args()
    if args.reestimate:
        figures = json.loads(Path(args.reestimate).read_text())
        for pair in POINTS.values():
            for point in pair:
                if name(point) in figures["points"]:
                    figures["points"][name(point)]["estimate_mb"] = estimate_point(point)
        Path(args.reestimate).write_text(json.dumps(figures, indent=1) + "\n")
        args.from_json = args.reestimate
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-memory-paths-"))
    # malloc returns freed blocks above 64 KiB to the system, so the resident set follows the tensors alive
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MALLOC_MMAP_THRESHOLD_": "65536",
           "TUIWIZ_STATE_DIR": str(work / "state"), "TRANSFORMERS_VERBOSITY": "error"}
    model = build_model(work)
    pairs = [POINTS[args.only]] if args.only else list(POINTS.values())
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for pair in pairs:
            for point in pair:
                result = run_point(point, model, env)
                runs.setdefault(name(point), []).append(result)
                print(name(point), result["train_peak_mb"], result["losses"][0], result["losses"][-1], flush=True)
    estimates = {name(p): estimate_point(p) for pair in pairs for p in pair}
    import torch
    import transformers
    import trl

    from tuiwiz.plan.modelinfo import model_from_config

    figures = {
        "vocab": VOCAB, "params_m": model_from_config(model_config()).num_parameters / 1e6, "settings": SETTINGS,
        "repeats": args.repeats, "points": summarize(runs, estimates), "runs": runs,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "load_average": os.getloadavg(),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if len(figures["points"]) == 4:
        print(docs_block(figures), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
