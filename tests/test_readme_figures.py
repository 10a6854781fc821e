"""Figures quoted in the README come from the results file the benchmark wrote, never retyped."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .support import ROOT


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_quotes_the_demo_learning_results():
    bench = _bench("demo_learning")
    figures = json.loads((ROOT / "bench" / "results" / "demo-learning.json").read_text(encoding="utf-8"))
    for page in ("README.md", "docs/benchmarks.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert bench.readme_block(figures) in text, \
            f"{page}'s demo block is stale: python bench/demo_learning.py --from-json bench/results/demo-learning.json"
    for key in ("exact_count", "held_out_loss", "token_accuracy"):  # what the block says it measured
        assert key in figures["before"] and key in figures["after"]


@pytest.mark.parametrize("name, results", [("preference_bench", "preference.json"), ("demo_grpo", "demo-grpo.json"),
                                           ("demo_tasks", "demo-tasks.json"), ("grpo_vs_trl", "grpo-vs-trl.json")])
def test_the_benchmarks_page_quotes_each_task_bench(name, results):
    figures = json.loads((ROOT / "bench" / "results" / results).read_text(encoding="utf-8"))
    block = _bench(name).docs_block(figures)
    assert block in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"), \
        f"docs/benchmarks.md's {name} block is stale: rewrite it from bench/results/{results}"


def test_the_fit_page_quotes_the_published_points():
    figures = json.loads((ROOT / "bench" / "results" / "published.json").read_text(encoding="utf-8"))
    assert _bench("published").docs_block(figures) in (ROOT / "docs" / "fit.md").read_text(encoding="utf-8"), \
        "docs/fit.md's published-points block is stale: python bench/published.py"


def test_the_fit_page_quotes_the_cpu_calibration_and_the_benchmarks_page_its_summary():
    report = json.loads((ROOT / "bench" / "results" / "calibration-cpu.json").read_text(encoding="utf-8"))
    block = _bench("calibrate").docs_block(report)
    assert block in (ROOT / "docs" / "fit.md").read_text(encoding="utf-8"), \
        "docs/fit.md's calibration table is stale: python bench/calibrate.py --reestimate, then quote docs_block"
    summary = block.strip().splitlines()[-1]
    assert summary in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name, results", [("sft_speed", "sft-speed.json"), ("startup", "startup.json"),
                                           ("loss_head", "loss-head.json"), ("lora_speed", "lora-speed.json"),
                                           ("memory_paths", "memory-paths.json"),
                                           ("lora_dropout", "lora-dropout.json"),
                                           ("distributed", "distributed.json"),
                                           ("merge_memory", "merge-memory.json"),
                                           ("chat_speed", "chat-speed.json"), ("event_log", "event-log.json"),
                                           ("ui_startup", "ui-startup.json"), ("ui_events", "ui-events.json")])
def test_the_benchmarks_page_quotes_the_speed_benches(name, results):
    figures = json.loads((ROOT / "bench" / "results" / results).read_text(encoding="utf-8"))
    assert _bench(name).docs_block(figures) in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"), \
        f"docs/benchmarks.md's {name} block is stale: python bench/{name}.py --from-json bench/results/{results}"
