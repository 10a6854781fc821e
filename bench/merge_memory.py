"""Peak memory of tuiwiz's shard-by-shard merge against peft's merge_and_unload + save_pretrained.

Builds a random Llama (about 350M parameters, fp32, 8 safetensors shards) and a LoRA adapter with
random non-zero weights on every linear layer (no training needed), then merges it three ways, each
in a fresh subprocess:

- ``tuiwiz-merge``: tuiwiz's merge phase alone (read shard, apply deltas, write shard);
- ``tuiwiz``: ``tuiwiz.post.merge.merge_run``, the whole command: merge, then verification against peft;
- ``peft``: load base + adapter, ``merge_and_unload()``, ``save_pretrained`` in the same shard size.

Each child reports its peak resident set (VmHWM, file-backed pages included; not ru_maxrss, which
Linux carries over from the parent across fork and exec) and the peak of anonymous (private) memory,
sampled every 5 ms from /proc/self/status. The model is built in a subprocess too, so the parent
stays small. The merged tensors of tuiwiz and peft are compared tensor by tensor.

    python bench/merge_memory.py [--workdir DIR] [--json bench/results/merge-memory.json]
    python bench/merge_memory.py --from-json bench/results/merge-memory.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS, HIDDEN, INTERMEDIATE, VOCAB, SHARD = 24, 1024, 2816, 32000, "200MB"
RANK, ALPHA = 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_RATIO = 0.5  # the whole command's peak RSS, at most this fraction of peft's


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class AnonPeak:
    """Peak RssAnon of this process, sampled in a thread (Linux)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _status_kb("RssAnon") / 1024)
            time.sleep(0.005)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mb, 1)


def build(workdir: Path) -> Path:
    """The base model, an adapter and a completed-run folder around it; reused when present."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuiwiz.demo.build import ensure_demo_model

    base, run = workdir / "base", workdir / "run"
    if not (base / "model.safetensors.index.json").exists():
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                             num_hidden_layers=LAYERS, num_attention_heads=16, num_key_value_heads=8,
                             tie_word_embeddings=False)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(base, max_shard_size=SHARD)
    if not (run / "state.json").exists():
        output = run / "output"
        output.mkdir(parents=True, exist_ok=True)
        AutoTokenizer.from_pretrained(ensure_demo_model()).save_pretrained(output)  # ids < 1009 < VOCAB
        q, kv = HIDDEN, HIDDEN // 2
        shapes = {"q_proj": (q, HIDDEN), "k_proj": (kv, HIDDEN), "v_proj": (kv, HIDDEN), "o_proj": (HIDDEN, q),
                  "gate_proj": (INTERMEDIATE, HIDDEN), "up_proj": (INTERMEDIATE, HIDDEN),
                  "down_proj": (HIDDEN, INTERMEDIATE)}
        generator = torch.Generator().manual_seed(1)
        tensors = {}
        for layer in range(LAYERS):
            for name, (out_f, in_f) in shapes.items():
                part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                key = f"base_model.model.model.layers.{layer}.{part}.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, in_f, generator=generator) / in_f ** 0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, RANK, generator=generator) * 0.01
        save_file(tensors, output / "adapter_model.safetensors", metadata={"format": "pt"})
        adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
                          "target_modules": list(TARGETS), "base_model_name_or_path": str(base),
                          "lora_dropout": 0.0, "fan_in_fan_out": False, "bias": "none", "use_rslora": False,
                          "use_dora": False, "inference_mode": True}
        (output / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        meta = {"base_model": str(base), "model": "random-llama", "method": "lora", "task": "sft", "labels": None}
        (output / "tuiwiz.json").write_text(json.dumps(meta))
        (run / "state.json").write_text(json.dumps({"run_id": "run", "status": "completed"}))
    return run


def child(mode: str, run: Path, out: Path) -> dict:
    anon = AnonPeak()
    started = time.perf_counter()
    result: dict = {}
    if mode == "tuiwiz-merge":
        from tuiwiz.post.merge_plan import plan_merge
        from tuiwiz.post.merge_shards import merge_shards, write_index

        plan = plan_merge(str(run))
        out.mkdir(parents=True)
        write_index(out, merge_shards(plan, out, None), len(plan.shards))
    elif mode == "tuiwiz":
        from tuiwiz.post.merge import merge_run

        merged = merge_run(str(run), out)
        result = {"max_diff": merged.max_diff, "changed_diff": merged.changed_diff,
                  "merge_phase_sampled_peak_rss_mb": merged.peak_rss_mb,
                  "verify_phase_sampled_peak_rss_mb": merged.verify_peak_rss_mb,
                  "merge_seconds": merged.seconds, "verify_seconds": merged.verify_seconds}
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        meta = json.loads((run / "output" / "tuiwiz.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(meta["base_model"], dtype=torch.float32)
        model = PeftModel.from_pretrained(model, run / "output").merge_and_unload()
        model.save_pretrained(out, max_shard_size=SHARD)
    result.update(mode=mode, seconds=round(time.perf_counter() - started, 1), peak_anon_mb=anon.stop(),
                  peak_rss_mb=round(_status_kb("VmHWM") / 1024, 1))
    return result


def compare(first: Path, second: Path) -> float:
    """Largest absolute difference over every tensor of two merged folders (shard layouts may differ)."""
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}

    a, b = index(first), index(second)
    assert set(a) == set(b), set(a) ^ set(b)
    worst = 0.0
    for key in sorted(a):
        with safe_open(a[key], "pt") as fa, safe_open(b[key], "pt") as fb:
            worst = max(worst, float((fa.get_tensor(key) - fb.get_tensor(key)).abs().max()))
    return worst


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    m, runs = f["model"], f["runs"]
    whole, alone, peft = runs["tuiwiz"], runs["tuiwiz-merge"], runs["peft"]
    lines = [
        f"A {m['parameters_m']:.0f}M-parameter random Llama in {m['dtype']}, {m['shards']} shards "
        f"({m['total_mb']:,.0f} MiB), {m['adapter']}; {f['machine']['cpus']} CPUs.",
        "",
        "| merging | peak RSS, MiB | peak private (anonymous) memory, MiB | seconds |",
        "|---|---|---|---|",
    ]
    for label, r in (("`tuiwiz merge`, the merge itself", alone),
                     ("peft `merge_and_unload` + `save_pretrained`", peft),
                     ("`tuiwiz merge`, the whole command: merge, then its verification", whole)):
        lines.append(f"| {label} | {r['peak_rss_mb']:,.0f} | {r['peak_anon_mb']:,.0f} | {r['seconds']:.1f} |")
    ratio = f["ratio_peak_rss_with_verification_vs_peft"]
    verdict = "met" if ratio <= TARGET_RATIO else "not met"

    def same(diff: float) -> str:
        return "identical to peft's" if diff == 0 else f"within {diff:.2g} of peft's"

    whole_diff, alone_diff = f["max_abs_diff_tuiwiz_vs_peft"], f["max_abs_diff_merge_phase_vs_peft"]
    tensors = f"The merged tensors are {same(whole_diff)}, from the whole command and from the merge alone." \
        if whole_diff == alone_diff else \
        f"The whole command's merged tensors are {same(whole_diff)}, the merge alone's {same(alone_diff)}."

    lines += [
        "",
        f"The whole command peaks at {ratio:.2f} of peft's resident memory and "
        f"{f['ratio_peak_anon_with_verification_vs_peft']:.2f} of its private memory (target: at most "
        f"{TARGET_RATIO:g} of the resident: {verdict}); the merge alone at "
        f"{f['ratio_peak_rss_merge_phase_vs_peft']:.2f} and {f['ratio_peak_anon_merge_phase_vs_peft']:.2f}. "
        f"{tensors} The merged model's logits are within "
        f"{whole['max_diff']:.2g} of base + adapter's, and differ from the bare base's by up to "
        f"{whole['changed_diff']:.2f} (the adapter's effect). Within the whole command the merge phase peaked at "
        f"{whole['merge_phase_sampled_peak_rss_mb']:,.0f} MiB in {whole['merge_seconds']:.1f} s, the verification "
        f"at {whole['verify_phase_sampled_peak_rss_mb']:,.0f} MiB in {whole['verify_seconds']:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", help="keeps the built model between runs (default: a temp folder)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "merge-memory.json"))
    parser.add_argument("--child", nargs=3, metavar=("MODE", "RUN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--build", metavar="WORKDIR", help=argparse.SUPPRESS)
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    if args.build:
        print(build(Path(args.build)))
        return 0
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return 0
    with tempfile.TemporaryDirectory(prefix="tuiwiz-merge-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        env = {**os.environ, "TUIWIZ_CACHE_DIR": str(workdir / "cache"), "HF_HUB_OFFLINE": "1"}
        os.environ.update(env)
        built = subprocess.run([sys.executable, __file__, "--build", str(workdir)], env=env, capture_output=True,
                               text=True, check=True)
        run = Path(built.stdout.strip().splitlines()[-1])
        base = Path(json.loads((run / "output" / "tuiwiz.json").read_text())["base_model"])
        shards = sorted(base.glob("*.safetensors"))
        results = {}
        for mode in ("tuiwiz-merge", "tuiwiz", "peft"):
            out = workdir / f"out-{mode}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            done = subprocess.run([sys.executable, __file__, "--child", mode, str(run), str(out)], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(results[mode]), file=sys.stderr)
        diff_peft = compare(workdir / "out-tuiwiz", workdir / "out-peft")
        diff_phase = compare(workdir / "out-tuiwiz-merge", workdir / "out-peft")
        report = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.machine(),
                        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
            "model": {"parameters_m": round(sum(s.stat().st_size for s in shards) / 4 / 1e6, 1), "dtype": "float32",
                      "shards": len(shards),
                      "largest_shard_mb": round(max(s.stat().st_size for s in shards) / 2**20, 1),
                      "total_mb": round(sum(s.stat().st_size for s in shards) / 2**20, 1),
                      "adapter": f"LoRA r={RANK} on {', '.join(TARGETS)}"},
            "runs": results,
            "max_abs_diff_tuiwiz_vs_peft": diff_peft,
            "max_abs_diff_merge_phase_vs_peft": diff_phase,
            "ratio_peak_rss_merge_phase_vs_peft": round(results["tuiwiz-merge"]["peak_rss_mb"]
                                                        / results["peft"]["peak_rss_mb"], 3),
            "ratio_peak_rss_with_verification_vs_peft": round(results["tuiwiz"]["peak_rss_mb"]
                                                              / results["peft"]["peak_rss_mb"], 3),
            "ratio_peak_anon_merge_phase_vs_peft": round(results["tuiwiz-merge"]["peak_anon_mb"]
                                                         / results["peft"]["peak_anon_mb"], 3),
            "ratio_peak_anon_with_verification_vs_peft": round(results["tuiwiz"]["peak_anon_mb"]
                                                               / results["peft"]["peak_anon_mb"], 3),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
