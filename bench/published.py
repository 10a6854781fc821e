"""tuiwiz's estimate against published GPU memory measurements (bench/published/points.json), point by point.

Each point's settings become a ``Plan`` and its model's config values a ``ModelInfo``; ``estimate`` is the function
``tuiwiz estimate`` calls. The measure decides what is compared: nvidia-smi's used memory holds the CUDA context (the
source's own measurement of it), torch's reserved memory leaves it out. Arithmetic only: no torch, no download.

    python bench/published.py                  # writes bench/results/published.json, prints the docs block
    python bench/published.py --from-json bench/results/published.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POINTS = ROOT / "bench" / "published" / "points.json"
RESULTS = ROOT / "bench" / "results" / "published.json"
MiB = 2**20


def load_points(path: Path = POINTS) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def estimate_point(point: dict, data: dict) -> dict:
    """The estimate of one published point, in MiB, as its measure counts (with or without the CUDA context)."""
    from tuiwiz.plan.memory import CONSTANTS, Plan, estimate
    from tuiwiz.plan.modelinfo import model_from_config

    model = model_from_config(data["models"][point["model"]]["config"], point["model"])
    settings = dict(point["plan"])
    if "lora_targets" in settings:
        settings["lora_targets"] = tuple(settings["lora_targets"])
    plan = Plan(device="cuda", **settings)
    source = data["sources"][point["source"]]
    constants = dataclasses.replace(CONSTANTS, cuda_context=int(source["cuda_context_mib"] * MiB))
    est = estimate(model, plan, constants=constants)
    total = est.total / MiB
    counted = total - est.per_device.overhead / MiB  # without the allocator slack, which is assumed
    return {"id": point["id"], "estimate_mib": round(total, 1), "measured_mib": point["measured_mib"],
            "ratio": round(total / point["measured_mib"], 4),
            "ratio_without_slack": round(counted / point["measured_mib"], 4),
            "measure": point["measure"], "gpu": point["gpu"],
            "terms_mib": {k: round(v / MiB, 1) for k, v in est.per_device.terms().items() if v},
            "parameters": est.total_parameters, "known_gap": point.get("known_gap")}


def run(data: dict) -> dict:
    results = [estimate_point(p, data) for p in data["points"]]
    within = sum(abs(r["ratio"] - 1) <= 0.10 for r in results)
    return {"points": results, "within_10_percent": within, "count": len(results)}


def docs_block(figures: dict) -> str:
    """The table docs/fit.md quotes (tests/test_readme_figures.py checks it is there, unchanged)."""
    lines = ["| point | GPU | measure | measured MiB | estimate MiB | estimate/measured | without allocator slack |",
             "|---|---|---|---|---|---|---|"]
    for r in figures["points"]:
        gap = " (known gap)" if r.get("known_gap") else ""
        lines.append(f"| {r['id']} | {r['gpu']} | {r['measure']} | {r['measured_mib']:,.0f} | {r['estimate_mib']:,.0f} "
                     f"| {r['ratio']:.2f}{gap} | {r['ratio_without_slack']:.2f} |")
    lines.append(f"\n{figures['within_10_percent']} of {figures['count']} points within 10%.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-json", metavar="FILE", help="print the docs block of recorded figures")
    args = parser.parse_args()
    if args.from_json:
        print(docs_block(json.loads(Path(args.from_json).read_text(encoding="utf-8"))), end="")
        return
    figures = run(load_points())
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(docs_block(figures), end="")


if __name__ == "__main__":
    main()
