"""The GPU runbook's results, for the repository: the matrix as the markdown block docs/fit.md quotes, and the
files brought back from the GPU machine copied into bench/results/gpu/.

    python -m bench.gpu.report table bench/results/gpu/matrix.json    # the block for docs/fit.md
    python -m bench.gpu.report collect DIR                            # DIR: where the device tool put $OUT's files

docs_block() is what a test compares docs/fit.md with (tests/test_readme_figures.py's pattern), so the page
quotes the results file and never retypes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = ROOT / "bench" / "results" / "gpu"
KEPT = ("summary.json", "hw.json", "matrix.json", "runner.json", "chat.json", "throughput.json")  # not log.txt


def _size(n: float | None) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def docs_block(matrix: dict) -> str:
    """Estimate against measured peak, one row a measured point, and the points not measured with why."""
    where = "CPU (dry run: tiny shapes, RSS high-water mark)" if matrix["device"] == "cpu" else \
        f"GPU ({_size(matrix.get('card_bytes'))}): torch.cuda.max_memory_reserved()"
    versions = ", ".join(f"{k} {v}" for k, v in matrix.get("versions", {}).items() if v)
    apart = "its Python/torch process term, measured from before the model" if matrix["device"] == "cpu" else \
        "its CUDA-context term, which lives outside PyTorch's allocator"
    lines = [f"Measured on {where}; {versions}. The estimate leaves out {apart}.", "",
             "| model | method | tokens × batch | checkpointing | estimate | measured | allocated "
             "| estimate / measured |",
             "|---|---|---|---|---|---|---|---|"]
    skipped = []
    for row in matrix["points"]:
        p = row["point"]
        if "ratio" not in row:
            skipped.append(f"{row['id']} ({row['status']}{': ' + row['reason'][:120] if row.get('reason') else ''})")
            continue
        m = row["measured"]
        lines.append(f"| {p['arch']} | {p['method']} | {p['seq']} × {p['mb']} | {'on' if p['gc'] else 'off'} | "
                     f"{_size(row['estimate']['comparable'])} | {_size(m['peak'])} | {_size(m.get('max_allocated'))} "
                     f"| {row['ratio']:.2f} |")
    s = matrix["summary"]
    if s.get("measured"):
        lines += ["", f"{s['measured']} of {s['points']} points measured: median estimate/measured "
                      f"{s['median_ratio']:.2f} (from {s['min_ratio']:.2f} to {s['max_ratio']:.2f}); within 10%: "
                      f"{s['within_10pct']}, within 25%: {s['within_25pct']}; under-estimates: {s['underestimates']}."]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def collect(folder: Path, target: Path = RESULTS) -> list[Path]:
    """Copy the runbook's JSON files (not its log) from ``folder`` into bench/results/gpu/."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in KEPT:
        if (folder / name).is_file():
            json.loads((folder / name).read_text())  # a truncated file fails here, not in a later test
            shutil.copyfile(folder / name, target / name)
            copied.append(target / name)
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("table", "collect"))
    parser.add_argument("path", type=Path, help="table: a matrix.json; collect: the folder the files came back to")
    args = parser.parse_args(argv)
    if args.action == "table":
        print(docs_block(json.loads(args.path.read_text())), end="")
        return 0
    copied = collect(args.path)
    if not copied:
        print(f"error: no runbook JSON in {args.path}", file=sys.stderr)
        return 1
    for path in copied:
        print(f"copied {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
