"""Measure training memory and compare it with tuiwiz.plan.memory's estimate.

Each point of a matrix (architecture x method x sequence length x micro-batch,
plus checkpointing, eager attention and the unfused loss) runs in a fresh
subprocess: a model with random weights is built from a real architecture's
config, wrapped as the runner wraps it (peft, bitsandbytes, trl's fused LM
head), and trained for two optimizer steps through transformers/peft directly.

CPU (default): configs shrunk to tiny sizes, fp32; the peak is the process's
resident-set high-water mark (VmHWM, reset after the model is loaded) minus its
RSS before the model existed. CUDA (--device cuda): real sizes in bf16, the peak
is torch.cuda.max_memory_reserved(); not run on the CPU-only development machine.

    python bench/calibrate.py                 # CPU matrix (~5 minutes), writes bench/results/calibration-cpu.json
    python bench/calibrate.py --fit           # also search the constants that fit best
    python bench/calibrate.py --device cuda   # on a GPU machine: bench/results/calibration-cuda.json
    python bench/calibrate.py --reestimate    # the recorded measurements against today's estimate

The CPU points run as the runner trains on the CPU: its fused head's tile (CPU_HEAD_TILE_TOKENS positions,
train/modeling.py's cap_head_tiles) and its fused LoRA layers (train/fused_lora.py); ``--tile N`` measures
another tile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "fixtures" / "configs"

# Real architectures shrunk for the CPU: shapes that keep every term measurable in RAM.
SHRINK = {
    "llama3-8b": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=32000, max_position_embeddings=4096),
    "qwen2.5-0.5b": dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=4, num_attention_heads=7,
                         num_key_value_heads=1, vocab_size=32000, max_position_embeddings=4096),
    "gemma2-2b": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=128, vocab_size=32000, max_position_embeddings=4096),
    "phi3-mini-4k": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
}
DROP = ("bos_token_id", "eos_token_id", "pad_token_id", "rope_scaling")


def cpu_matrix() -> list[dict]:
    points = []
    for method in ("full", "lora", "qlora"):
        for seq, mb in ((256, 1), (256, 4), (1024, 4)):
            points.append(dict(arch="llama3-8b", method=method, seq=seq, mb=mb))
    points += [
        dict(arch="llama3-8b", method="full", seq=1024, mb=4, gc=True),
        dict(arch="llama3-8b", method="lora", seq=1024, mb=2, gc=True),
        dict(arch="llama3-8b", method="lora", seq=512, mb=2, attn="eager"),
        dict(arch="llama3-8b", method="lora", seq=512, mb=4, fused=False),
        dict(arch="llama3-8b", method="full", seq=512, mb=2, fused=False),
        dict(arch="qwen2.5-0.5b", method="full", seq=512, mb=4),
        dict(arch="qwen2.5-0.5b", method="lora", seq=512, mb=4),
        # held out: not used by --fit, they check the fitted constants on other shapes
        dict(arch="gemma2-2b", method="full", seq=768, mb=2, attn="eager", held_out=True),  # no SDPA for Gemma 2
        dict(arch="phi3-mini-4k", method="lora", seq=512, mb=3, held_out=True),
        dict(arch="qwen2.5-0.5b", method="lora", seq=768, mb=4, gc=True, held_out=True),
    ]
    # as the runner trains on the CPU: its fused head's tile (train/modeling.py's cap_head_tiles) and its fused LoRA
    from tuiwiz.plan.fine_tune import CPU_HEAD_TILE_TOKENS

    runner = dict(tile=CPU_HEAD_TILE_TOKENS, fused_lora=True)
    return [dict(dict(gc=False, attn="sdpa", fused=True, device="cpu", steps=2), **runner, **p) for p in points]


def cuda_matrix() -> list[dict]:
    points = []
    for arch in ("qwen2.5-0.5b", "llama3.2-1b"):
        for method in ("full", "lora", "qlora"):
            for seq, mb in ((512, 1), (1024, 4), (2048, 2)):
                points.append(dict(arch=arch, method=method, seq=seq, mb=mb, gc=False))
            points.append(dict(arch=arch, method=method, seq=2048, mb=4, gc=True))
    return [dict(dict(attn="sdpa", fused=True, device="cuda", steps=3), **p) for p in points]


def point_config(point: dict) -> dict:
    config = json.loads((CONFIGS / f"{point['arch']}.json").read_text())
    if point["device"] == "cpu":
        config.update(SHRINK[point["arch"]])
        for key in DROP:  # token ids past the small vocabulary, rope scaling past the short context
            config[key] = None
    return config


def plan_for(point: dict):
    from tuiwiz.plan.memory import Plan

    cuda = point["device"] == "cuda"
    return Plan(
        method=point["method"], device=point["device"], precision="bf16" if cuda else "fp32",
        micro_batch=point["mb"], seq_len=point["seq"], gradient_checkpointing=point["gc"],
        attn_implementation=point["attn"], fused_loss=point["fused"], lora_r=16, lora_dropout=0.05,
        optimizer="adamw_torch",
    )


# ---------------------------------------------------------------- one point, in its own process


def _hwm_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def run_point(point: dict, checkpoint: str) -> dict:
    import peft
    import psutil
    import torch
    import transformers
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cuda = point["device"] == "cuda"
    device = "cuda" if cuda else "cpu"
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    if cuda:
        torch.zeros(1, device="cuda")  # the context exists before we measure

    method = point["method"]
    kwargs: dict = {"attn_implementation": point["attn"]}
    if method == "qlora":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
        if cuda:
            kwargs["device_map"] = {"": 0}
    # the runner's _load_dtype: fp32 for full fine-tuning (and everything on CPU), else the autocast dtype
    kwargs["dtype"] = torch.float32 if (method == "full" or not cuda) else torch.bfloat16
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
    if cuda and method != "qlora":
        model.to("cuda")
    if point["fused"]:
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        if point.get("tile"):  # positions a tile (TRL's module constant, read at each call): the runner's on CPU
            from trl.kernels import chunked_logprob

            chunked_logprob.TOKEN_CHUNK_SIZE = point["tile"]
    if method == "qlora" and point.get("upcast"):  # peft's fp32 upcast, as `method.upcast_non_quantized: true`
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=point["gc"])
    if method in ("lora", "qlora"):
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                             lora_dropout=0.05, target_modules="all-linear"))
        if point.get("fused_lora"):  # the runner's LoRA (train/fused_lora.py; QLoRA's 4-bit layers stay peft's)
            from tuiwiz.train.fused_lora import fuse

            fuse(model)
    if point["gc"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else model.get_base_model().config.vocab_size
    after_load = proc.memory_info().rss
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_reserved = torch.cuda.memory_reserved()
    hwm = _hwm_reset()
    timings = []
    for _ in range(point["steps"]):
        t0 = time.perf_counter()
        ids = torch.randint(0, vocab, (point["mb"], point["seq"]), device=device)
        mask = torch.ones_like(ids)
        mask[0, -max(1, point["seq"] // 8):] = 0  # padding, as in real batches: attention gets a mask
        labels = ids.masked_fill(mask == 0, -100)
        # like Trainer.compute_loss: only the loss outlives the forward (the logits are gone by backward)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            extra_kwargs = {"fused_lm_head": True} if point["fused"] else {}
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, **extra_kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
        timings.append(time.perf_counter() - t0)
    if cuda:
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_reserved()
        extra = {"max_allocated": torch.cuda.max_memory_allocated(), "reserved_before": start_reserved}
    else:
        peak = _status_kb("VmHWM") * 1024 if hwm else psutil.Process().memory_info().rss
        measured = peak - baseline
        extra = {"hwm_reset": hwm}
    return {"measured": measured, "baseline_rss": baseline, "after_load": after_load - baseline,
            "step_seconds": [round(t, 3) for t in timings], **extra}


# ---------------------------------------------------------------- driver


def build_checkpoints(points: list[dict], folder: Path) -> dict[str, str]:
    """One saved random model per architecture, so loading is what the runner does."""
    import torch
    import transformers

    paths = {}
    for arch in sorted({(p["arch"], p["device"]) for p in points}):
        name, device = arch
        config = transformers.AutoConfig.for_model(**point_config({"arch": name, "device": device}))
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        target = folder / f"{name}-{device}"
        model.save_pretrained(target)
        paths[f"{name}-{device}"] = str(target)
        del model
    return paths


def estimate_point(point: dict, constants=None) -> dict:
    from tuiwiz.plan.memory import estimate
    from tuiwiz.plan.modelinfo import model_from_config

    model = model_from_config(point_config(point), point["arch"])
    est = estimate(model, plan_for(point), constants=constants)
    b = est.per_device
    # the measurement starts after the process (CPU) or the CUDA context existed: leave that term out
    return {"estimate": b.total - b.context, "terms": b.terms()}


def summarize(results: list[dict]) -> dict:
    def stats(errors):
        return {
            "points": len(errors),
            "mean_abs_error": round(sum(abs(e) for e in errors) / len(errors), 4),
            "max_abs_error": round(max(abs(e) for e in errors), 4),
            "mean_error": round(sum(errors) / len(errors), 4),
            "underestimates": sum(1 for e in errors if e < 0),
        }

    summary = stats([r["error"] for r in results])
    held = [r["error"] for r in results if r["point"].get("held_out")]
    if held:
        summary["held_out"] = stats(held)
    return summary


def attach_estimates(results: list[dict], constants=None) -> list[dict]:
    out = []
    for r in results:
        est = estimate_point(r["point"], constants)
        out.append({**r, **est, "error": round((est["estimate"] - r["measured"]) / r["measured"], 4)})
    return out


def fit(results: list[dict]):
    """Grid-search the fitted constants: smallest worst-case error, underestimates penalised."""
    from tuiwiz.plan.memory import CONSTANTS

    fit_set = [r for r in results if not r["point"].get("held_out")]
    best = None
    for scale in [x / 100 for x in range(80, 161, 5)]:
        for copies in (4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0):
            for workspace in (0, 50, 100, 150, 200, 250):
                c = dataclasses.replace(CONSTANTS, activation_scale=scale, cpu_tile_copies=copies,
                                        cpu_workspace=workspace * 2**20, cpu_allocator_fraction=0.0)
                errs = [e["error"] for e in attach_estimates(fit_set, c)]
                score = max(max(-e * 2 for e in errs), max(errs))  # an underestimate costs twice as much
                if best is None or score < best[0]:
                    best = (score, c)
    return best[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--fit", action="store_true", help="search the constants that fit best and print them")
    parser.add_argument("--quick", action="store_true", help="only the first four points")
    parser.add_argument("--tile", type=int, help="the fused head's positions a tile (default: TRL's own)")
    parser.add_argument("--missing", action="store_true",
                        help="measure only the points that --out does not hold yet, keep the others")
    parser.add_argument("--reestimate", action="store_true",
                        help="keep the measurements in --out, recompute the estimates with the current constants")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.point:  # the child
        print(json.dumps(run_point(json.loads(args.point), args.checkpoint)))
        return 0

    points = cpu_matrix() if args.device == "cpu" else cuda_matrix()
    if args.quick:
        points = points[:4]
    if args.tile:
        points = [{**p, "tile": args.tile} for p in points]
    out = args.out or ROOT / "bench" / "results" / f"calibration-{args.device}.json"
    if args.reestimate:
        previous = json.loads(out.read_text())
        results = [{k: v for k, v in r.items() if k not in ("estimate", "terms", "error")}
                   for r in previous["results"]]
        return _report(args, out, results, previous["seconds"])
    order = list(points)
    results, spent = [], 0
    if args.missing and out.is_file():
        previous = json.loads(out.read_text())
        results = [{k: v for k, v in r.items() if k not in ("estimate", "terms", "error")}
                   for r in previous["results"] if r["point"] in points]
        spent = previous["seconds"]
        points = [p for p in points if p not in [r["point"] for r in results]]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = build_checkpoints(points, Path(tmp))
        for point in points:
            t0 = time.time()
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
            proc = subprocess.run(
                [sys.executable, __file__, "--point", json.dumps(point),
                 "--checkpoint", checkpoints[f"{point['arch']}-{point['device']}"]],
                capture_output=True, text=True, env=env, timeout=900,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"point failed: {point}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append({"point": point, **measured})
            print(f"{point}: {measured['measured'] / 2**20:.0f} MiB measured ({time.time() - t0:.0f} s)", flush=True)
    results.sort(key=lambda r: order.index(r["point"]))
    return _report(args, out, results, spent + round(time.time() - started))


def _report(args, out: Path, results: list[dict], seconds: int) -> int:
    results = attach_estimates(results)
    import importlib.metadata as md

    from tuiwiz.plan.memory import CONSTANTS

    report = {
        "device": args.device,
        "versions": {p: md.version(p) for p in ("torch", "transformers", "peft", "trl", "bitsandbytes")},
        "cpu_count": os.cpu_count(),
        "seconds": seconds,
        "constants": {k: v for k, v in dataclasses.asdict(CONSTANTS).items()},
        "summary": summarize(results),
        "baseline_rss_max": max(r["baseline_rss"] for r in results),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"]))
    for r in results:
        p = r["point"]
        print(f"{p['arch']:13} {p['method']:5} seq {p['seq']:5} mb {p['mb']} gc {p['gc']!s:5} {p['attn']:5} "
              f"fused {p['fused']!s:5}  measured {r['measured'] / 2**20:7.0f} MiB  "
              f"estimate {r['estimate'] / 2**20:7.0f} MiB  {r['error']:+.1%}")
    if args.fit:
        best = fit(results)
        print("best constants:", best)
        print("with them:", summarize(attach_estimates(results, best)))
    return 0


def docs_block(report: dict) -> str:
    """The table and summary docs/fit.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    lines = ["| architecture (shrunk) | method | seq | micro-batch | ckpt | attention | loss | measured MiB | "
             "estimate MiB | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        p = r["point"]
        arch = p["arch"] + (" (held out)" if p.get("held_out") else "")
        lines.append(f"| {arch} | {p['method']} | {p['seq']} | {p['mb']} | {'on' if p['gc'] else 'off'} | "
                     f"{p['attn']} | {'fused' if p['fused'] else 'full logits'} | {r['measured'] / 2**20:,.0f} | "
                     f"{r['estimate'] / 2**20:,.0f} | {r['error']:+.1%} |")
    s, held = report["summary"], report["summary"].get("held_out")
    under = [r["error"] for r in report["results"] if r["error"] < 0]
    lines += ["", f"All {s['points']} points: mean absolute error {s['mean_abs_error']:.1%}, worst "
              f"{s['max_abs_error']:.1%}, {s['underestimates']} underestimates"
              + (f" (worst {min(under):+.1%})" if under else "") + "."
              + (f" Held out: mean {held['mean_abs_error']:.1%}, worst {held['max_abs_error']:.1%}." if held else "")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
