"""tuiwiz's estimate against published GPU measurements (bench/published/points.json): within 10% of each, or within
the bound a point's recorded ``known_gap`` states. Arithmetic only; bench/results/published.json is what it computes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .support import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("published", ROOT / "bench" / "published.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
DATA = BENCH.load_points()


def test_every_point_names_its_source_setting_model_and_measure():
    for point in DATA["points"]:
        source = DATA["sources"][point["source"]]
        assert source["url"] and source["measure"] and "cuda_context_mib" in source
        assert point["model"] in DATA["models"] and point["measure"] in ("nvidia-smi", "torch-max-reserved")
        assert point["measured_mib"] > 0 and point["gpu"]
    assert len(DATA["points"]) >= 15


@pytest.mark.parametrize("point", DATA["points"], ids=lambda p: p["id"])
def test_estimate_meets_the_published_measurement(point):
    result = BENCH.estimate_point(point, DATA)
    gap = point.get("known_gap")
    low, high = gap["bound"] if gap else (0.9, 1.1)
    assert low <= result["ratio"] <= high, (point["id"], result["ratio"], gap and gap["reason"])
    if gap:  # a documented gap is still a gap: it must not pass the 10% check silently
        assert not 0.9 <= result["ratio"] <= 1.1, f"{point['id']} is within 10% now: remove its known_gap"


def test_model_configs_give_the_published_parameter_counts():
    from tuiwiz.plan.modelinfo import model_from_config

    for name, model in DATA["models"].items():
        assert model_from_config(model["config"], name).num_parameters == model["parameters"], name


def test_results_file_is_what_the_estimate_gives_now():
    recorded = json.loads(BENCH.RESULTS.read_text(encoding="utf-8"))
    assert recorded == BENCH.run(DATA), "stale: python bench/published.py"
