"""Chat engine overhead: time to first token and tokens/s, tuiwiz.post.chat.ChatEngine vs plain model.generate.

A random Llama (about 60M parameters, fp32) with a LoRA adapter, loaded once by the engine; the
baseline calls ``generate`` on that same model with the same prompt ids (the chat template applied
once, outside the timing). Both generate exactly N tokens greedily (min_new_tokens = max_new_tokens).
Time to first token is measured the same way on both sides: from the call to the first generated
token reaching a streamer (for the engine, also to the first text piece it yields). Runs alternate,
after a warm-up; medians are reported.

The engine generates in a worker thread. On a busy CPU, torch's OpenMP pool runs much slower from
the main thread than from a fresh thread (measured: 4x at a load average of 5 on 2 cores, equal with
OMP_NUM_THREADS=1), so the baseline runs both ways: ``plain_generate`` in the main thread and
``plain_generate_thread`` in a thread of its own; the overhead figures compare with the latter.
By default torch gets one thread (--threads), which keeps a shared machine's noise down.

    python bench/chat_speed.py [--tokens 128] [--repeats 5] [--json bench/results/chat-speed.json]
    python bench/chat_speed.py --from-json bench/results/chat-speed.json   # print the docs block
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "What sound does the cow make? Answer in one short sentence."}]
# the engine against plain generate: at least this fraction of its tokens/s, at most these ms added to the
# first token
TARGET_THROUGHPUT_RATIO, TARGET_ADDED_FIRST_TOKEN_MS = 0.95, 10


def build(folder: Path) -> tuple[Path, Path]:
    import peft
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuiwiz.demo.build import ensure_demo_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_demo_model())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = folder / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(base),
                                peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                init_lora_weights=False))
    adapter = folder / "adapter"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return base, adapter


class FirstToken:
    """A streamer that only notes when the first generated token arrives."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.first: float | None = None

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def docs_block(f: dict) -> str:
    """The block docs/benchmarks.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    m, machine, engine = f["model"], f["machine"], f["engine"]
    main, thread = f["plain_generate"], f["plain_generate_thread"]
    threads = machine["torch_threads"]
    lines = [
        f"A {m['parameters_m']:.0f}M-parameter Llama in {m['dtype'].removeprefix('torch.')} (adapter: {m['adapter']}); "
        f"{f['tokens']} new tokens greedily, {threads} torch thread{'s' if threads != 1 else ''} on "
        f"{machine['cpus']} CPUs (load average {machine['load_average_at_start']:.2f} at the start); medians of "
        f"{f['repeats']} alternating runs:",
        "",
        "| generating | tokens/s | first token, ms |",
        "|---|---|---|",
        f"| tuiwiz's chat engine (it generates in a worker thread) | {engine['tokens_per_second']:.1f} "
        f"| {engine['first_token_ms']:.1f} |",
        f"| `generate` in the main thread | {main['tokens_per_second']:.1f} | {main['first_token_ms']:.1f} |",
        f"| `generate` in a worker thread | {thread['tokens_per_second']:.1f} | {thread['first_token_ms']:.1f} |",
    ]
    against = {  # baseline: (throughput ratio, ms added to the first token)
        "`generate` in the main thread": (f["throughput_ratio_vs_main_thread"],
                                          engine["first_token_ms"] - main["first_token_ms"]),
        "`generate` in a worker thread": (f["throughput_ratio_vs_thread"], f["added_first_token_ms_vs_thread"]),
    }
    met = [name for name, (ratio, added) in against.items()
           if ratio >= TARGET_THROUGHPUT_RATIO and added <= TARGET_ADDED_FIRST_TOKEN_MS]
    verdict = "met against both" if len(met) == len(against) else \
        f"met against {met[0]} only" if met else "not met"
    lines += [
        "",
        "The engine against " + "; against ".join(
            f"{name}: {ratio:.3f} of the throughput, first token {added:+.1f} ms"
            for name, (ratio, added) in against.items()) + ". "
        f"Targets: at least {TARGET_THROUGHPUT_RATIO:g} of the throughput and at most "
        f"{TARGET_ADDED_FIRST_TOKEN_MS:g} ms added to the first token: {verdict}. "
        f"The engine's first text piece comes at {engine['first_text_piece_ms']:.0f} ms.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS for torch (default 1)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "chat-speed.json"))
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of a results file")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text())), end="")
        return 0
    os.environ["OMP_NUM_THREADS"] = args.threads  # before torch is imported
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="tuiwiz-chat-bench-") as tmp:
        os.environ.setdefault("TUIWIZ_CACHE_DIR", str(Path(tmp) / "cache"))
        import torch

        from tuiwiz.post.chat import ChatEngine, ChatSource

        base, adapter = build(Path(tmp))
        engine = ChatEngine(ChatSource(base, (("bench", adapter),), adapter, "sft", "bench")).load()
        model, n = engine.model, args.tokens
        inputs = engine.prompt_ids(PROMPT)
        fixed = {"max_new_tokens": n, "min_new_tokens": n}

        def plain() -> tuple[float, float]:
            streamer = FirstToken()
            started = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**inputs, do_sample=False, streamer=streamer,
                                     pad_token_id=engine.tokenizer.pad_token_id, **fixed)
            seconds = time.perf_counter() - started
            assert out.shape[1] - inputs["input_ids"].shape[1] == n
            return streamer.first - started, n / seconds

        def ours() -> tuple[float, float, float]:
            started = time.perf_counter()
            first_text = None
            for _ in engine.stream(PROMPT, temperature=0, min_new_tokens=n, max_new_tokens=n):
                first_text = first_text or time.perf_counter() - started
            stats = engine.last_stats
            assert stats.new_tokens == n, stats
            return stats.first_token_s, stats.tokens_per_second, first_text

        def plain_thread() -> tuple[float, float]:
            import threading

            box = []
            worker = threading.Thread(target=lambda: box.append(plain()))
            worker.start()
            worker.join()
            return box[0]

        plain(), plain_thread(), ours()  # warm-up
        runs = {"plain": [], "plain_thread": [], "engine": []}
        for _ in range(args.repeats):
            runs["plain"].append(plain())
            runs["plain_thread"].append(plain_thread())
            runs["engine"].append(ours())
        med = {name: [statistics.median(values) for values in zip(*rows)] for name, rows in runs.items()}
        best = {name: [min(v[0] for v in rows), max(v[1] for v in rows)] for name, rows in runs.items()}
        report = {
            "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "device": str(model.device),
                        "torch_threads": torch.get_num_threads(), "load_average_at_start": load},
            "model": {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                      "adapter": "LoRA r=16, all linear layers", "dtype": str(next(model.parameters()).dtype)},
            "tokens": n, "repeats": args.repeats,
            "plain_generate": {"first_token_ms": round(med["plain"][0] * 1000, 1),
                               "tokens_per_second": round(med["plain"][1], 1)},
            "plain_generate_thread": {"first_token_ms": round(med["plain_thread"][0] * 1000, 1),
                                      "tokens_per_second": round(med["plain_thread"][1], 1)},
            "engine": {"first_token_ms": round(med["engine"][0] * 1000, 1),
                       "first_text_piece_ms": round(med["engine"][2] * 1000, 1),
                       "tokens_per_second": round(med["engine"][1], 1)},
            "throughput_ratio_vs_thread": round(med["engine"][1] / med["plain_thread"][1], 3),
            "added_first_token_ms_vs_thread": round((med["engine"][0] - med["plain_thread"][0]) * 1000, 1),
            "throughput_ratio_vs_main_thread": round(med["engine"][1] / med["plain"][1], 3),
            "best_of_runs": {name: {"first_token_ms": round(v[0] * 1000, 1), "tokens_per_second": round(v[1], 1)}
                             for name, v in best.items()},
            "runs": {name: [[round(x, 4) for x in row] for row in rows] for name, rows in runs.items()},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
