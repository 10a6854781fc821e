"""The GPU runbook (bench/gpu/, docs/gpu-runbook.md) is known to work before the day a GPU is lent: its dry run
walks the same code on the CPU, what it carries covers what it imports, and its time guards hold."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import time
import zipfile

import pytest

from bench.gpu import matrix, models, packages, report, runbook, throughput
from tuiwiz.plan.modelinfo import model_from_config

from .support import ROOT

GPU = ROOT / "bench" / "gpu"


def _imported(tree: ast.AST) -> set[str]:
    """Top-level names of every absolute import, the lazy ones inside functions too."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_import_of_the_runbook_and_the_runner_is_carried_on_the_image_or_left_out_with_a_reason():
    sources = {p: p.read_text() for p in GPU.glob("*.py")}
    sources.update({p: p.read_text() for p in (ROOT / "tuiwiz").rglob("*.py") if "ui" not in p.parts})
    trees = [ast.parse(text) for text in sources.values()] + [ast.parse(throughput.BARE), ast.parse(runbook.ENV_CODE)]
    known = (set(sys.stdlib_module_names) | {"tuiwiz", "bench"} | packages.carried_modules()
             | set(packages.IMAGE.values()) | set(packages.NOT_CARRIED))
    unknown = set().union(*map(_imported, trees)) - known
    assert not unknown, (f"{sorted(unknown)}: name each in bench/gpu/packages.py: WHEELS if the GPU image lacks it, "
                         "IMAGE if it has it, NOT_CARRIED with the reason the runbook does without it")
    image = {packages.canonical(d) for d in packages.IMAGE}
    assert not {packages.canonical(w.dist) for w in packages.WHEELS} & image, "carry only what the image lacks"
    assert {packages.canonical(w.dist) for w in packages.FALLBACKS} <= image, "a fallback stands in for the image's"
    assert not set(packages.NOT_CARRIED) & (packages.carried_modules() | set(packages.IMAGE.values()))


def test_prepare_and_run_read_the_one_list():
    prepare, run = (GPU / "prepare.sh").read_text(), (GPU / "run.sh").read_text()
    assert "bench.gpu.packages requirements" in prepare and "bench.gpu.packages fallbacks" in prepare
    assert "bench.gpu.packages check" in prepare and "bench.gpu.packages size" in prepare
    assert ".whl/*.whl" in run and "bench.gpu.packages fallbacks-needed" in run and "--target /tmp/site" in run
    lines = packages.requirement_lines() + packages.requirement_lines(fallbacks=True)
    names = [packages.canonical(line.split("==")[0]) for line in lines]
    assert all(line.count("==") == 1 for line in lines) and len(names) == len(set(names))
    assert "deepspeed" not in names, "DeepSpeed needs several GPUs and would crowd out the 64 MiB"


def _fake_wheel(folder, dist: str, version: str, requires=()):
    folder.mkdir(parents=True, exist_ok=True)
    name = dist.replace("-", "_")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        dist, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_check_names_a_missing_doubled_unlisted_or_unmet_wheel(tmp_path):
    for w in packages.WHEELS:
        _fake_wheel(tmp_path, w.dist, w.version, ["torch>=2.4", "numpy; extra == 'x'"])
    for w in packages.FALLBACKS:
        _fake_wheel(tmp_path / packages.FALLBACK_DIR, w.dist, w.version)
    assert packages.check(tmp_path) == []
    first = packages.WHEELS[0]
    _fake_wheel(tmp_path, first.dist, "0.0.1")
    _fake_wheel(tmp_path, "stray-package", "1.0", ["not-on-the-image>=1"])
    (tmp_path / f"{packages.WHEELS[1].dist.replace('-', '_')}-{packages.WHEELS[1].version}-py3-none-any.whl").unlink()
    problems = "\n".join(packages.check(tmp_path))
    assert f"{first.dist} ['0.0.1', '{first.version}']" in problems
    assert f"{packages.WHEELS[1].dist} missing" in problems
    assert "stray-package ['1.0'] is not in bench/gpu/packages.py" in problems
    assert "requires not-on-the-image: neither carried nor in IMAGE" in problems


def test_the_peft_fallback_is_installed_only_where_the_image_has_none_or_an_older_one(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / packages.FALLBACK_DIR, "peft", "0.21.2")
    for peft, needed in (("0.10.0", [wheel]), ("0.17.0", []), ("0.21.2+local", []), (None, [wheel])):
        monkeypatch.setattr(packages, "installed_version", lambda dist, v=peft: v if dist == "peft" else "99.0")
        assert packages.fallbacks_needed(tmp_path) == needed, peft


def test_the_shapes_written_out_are_the_real_models():
    # the parameter counts of the published checkpoints (their safetensors headers)
    published = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-3b": 3_085_938_688,
                 "llama3-8b": 8_030_261_248}
    for arch, count in published.items():
        assert model_from_config(models.config(arch), arch).num_parameters == count, arch
        tiny = models.config(arch, tiny=True)
        assert tiny["model_type"] == models.CONFIGS[arch]["model_type"]
        assert tiny["tie_word_embeddings"] == models.CONFIGS[arch]["tie_word_embeddings"]
    for arch in ("qwen2.5-0.5b", "llama3-8b"):  # the same values as the fixtures the estimate's tests read
        fixture = json.loads((ROOT / "tests" / "fixtures" / "configs" / f"{arch}.json").read_text())
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "tie_word_embeddings", "rope_theta"):
            assert models.CONFIGS[arch][key] == fixture[key], (arch, key)


def test_an_80_gb_card_runs_every_point_but_the_8b_full_fine_tune_and_the_points_span_the_axes():
    points = matrix.matrix_points(dry_run=False)
    too_big = [p["id"] for p in points if matrix.estimate_point(p)["total"] > matrix.SKIP_FACTOR * 80 * 2**30]
    assert too_big == ["llama3-8b/full/512/b1/gc1"]
    assert len({p["id"] for p in points}) == len(points)
    for axis, values in (("arch", set(models.CONFIGS)), ("method", {"full", "lora", "qlora"}), ("seq", {512, 2048}),
                         ("mb", {1, 4}), ("gc", {True, False})):
        assert {p[axis] for p in points} == values, axis


def test_the_report_shows_each_measured_point_and_says_why_the_others_were_not():
    rows = [matrix.compare({"id": "a/lora/512/b1/gc0", "arch": "a", "method": "lora", "seq": 512, "mb": 1, "gc": False,
                            "steps": 3}, {"comparable": 11 * 2**30, "total": 11.5 * 2**30},
                           {"status": "ok", "measured": {"peak": 10 * 2**30, "max_allocated": 9 * 2**30}}),
            matrix.compare({"id": "b/full/512/b1/gc1", "arch": "b", "method": "full", "seq": 512, "mb": 1, "gc": True,
                            "steps": 3}, {"comparable": 170 * 2**30, "total": 171 * 2**30},
                           {"status": "skipped", "reason": "estimated 171.0 GiB, over the card"})]
    block = report.docs_block({"device": "cuda", "card_bytes": 80 * 2**30, "versions": {"torch": "2.11.0"},
                               "summary": matrix.summarize(rows), "points": rows})
    assert "| a | lora | 512 × 1 | off | 11.00 GiB | 10.00 GiB | 9.00 GiB | 1.10 |" in block
    assert "1 of 2 points measured: median estimate/measured 1.10" in block and "within 10%: 1" in block
    assert "Not measured: b/full/512/b1/gc1 (skipped: estimated 171.0 GiB, over the card)." in block


def test_collect_copies_the_json_and_leaves_the_log(tmp_path):
    back = tmp_path / "back"
    back.mkdir()
    (back / "matrix.json").write_text('{"points": []}')
    (back / "log.txt").write_text("a long log")
    copied = report.collect(back, tmp_path / "results")
    assert [p.name for p in copied] == ["matrix.json"] and not (tmp_path / "results" / "log.txt").exists()


_FAKE_WORKER = """
import json, sys, time
points, events = sys.argv[1], sys.argv[2]
for p in json.load(open(points)):
    open(events, "a").write(json.dumps({"event": "start", "id": p["id"]}) + "\\n")
    if p["id"] == "slow":
        time.sleep(60)
    if p["id"] == "crash":
        sys.exit(5)
    open(events, "a").write(json.dumps({"event": "done", "id": p["id"], "result": {"status": "ok"}}) + "\\n")
"""


@pytest.mark.slow
def test_the_time_guard_kills_a_slow_point_and_a_fresh_worker_takes_the_rest(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_FAKE_WORKER)
    start = time.monotonic()
    results = matrix.run_points([{"id": i} for i in ("a", "slow", "b", "crash", "c")], [sys.executable, str(script)],
                                point_timeout=1.0, deadline=start + 60, work=tmp_path)
    assert time.monotonic() - start < 30
    assert results["slow"]["status"] == "timeout" and "past the 1 s" in results["slow"]["reason"]
    assert results["crash"]["status"] == "error" and "exit 5" in results["crash"]["reason"]
    assert [results[i]["status"] for i in ("a", "b", "c")] == ["ok"] * 3
    (tmp_path / "again").mkdir()
    over = matrix.run_points([{"id": "slow"}, {"id": "d"}], [sys.executable, str(script)], point_timeout=30,
                             deadline=time.monotonic() + 1.5, work=tmp_path / "again")
    assert over["slow"]["status"] == "timeout" and "budget" in over["slow"]["reason"]
    assert over["d"]["status"] == "not_run"


@pytest.mark.slow
def test_the_matrix_dry_run_measures_each_point_and_compares_it_with_the_estimate(tmp_path):
    out = tmp_path / "matrix.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "bench.gpu.matrix", "--dry-run", "--only", "qwen2.5-0.5b/", "--out",
                    str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    expected = [p["id"] for p in matrix.matrix_points(dry_run=True) if p["arch"] == "qwen2.5-0.5b"]
    assert [r["id"] for r in data["points"]] == expected and len(expected) == 7
    assert {r["point"]["method"] for r in data["points"]} == {"full", "lora", "qlora"}
    for row in data["points"]:
        assert row["status"] == "ok", row
        assert row["measured"]["peak"] > 0 and row["estimate"]["comparable"] > 0
        assert math.isfinite(row["ratio"]) and 0.01 < row["ratio"] < 100, row
        assert len(row["step_seconds"]) == matrix.STEPS["cpu"]
    assert data["summary"]["measured"] == 7 and data["device"] == "cpu" and data["dry_run"]
    block = report.docs_block(data)
    assert block.count("| qwen2.5-0.5b |") == 7 and "7 of 7 points measured" in block


@pytest.mark.slow
def test_the_runbook_records_each_step_in_its_summary(tmp_path):
    subprocess.run([sys.executable, "-m", "bench.gpu.runbook", "--dry-run", "--only", "hw", "--out", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["name"], s["status"], s["file"]) for s in summary["steps"]] == [("hw", "ok", "hw.json")]
    assert json.loads((tmp_path / "hw.json").read_text())["source"] in ("cpu", "nvml")
    with open(tmp_path / "log.txt", "a") as log:
        record, _ = runbook.run_step(runbook.Step("sleeper", 1, None), [sys.executable, "-c", "import time; "
                                     "print('started', flush=True); time.sleep(60)"], 1.0, dict(os.environ), log,
                                     tmp_path)
    assert record["status"] == "timeout" and record["seconds"] < 10 and "started" in record["tail"]
