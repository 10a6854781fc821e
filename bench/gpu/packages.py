"""What the GPU runbook carries to the GPU machine as wheels, and what it relies on the machine's image for.

The one list both sides read: bench/gpu/prepare.sh downloads WHEELS (and FALLBACKS) here, bench/gpu/run.sh installs
them there, and tests/test_gpu_runbook.py checks that every package the runbook and the runner import is carried,
on the image, or left out on purpose (NOT_CARRIED) with the reason. Standard library only: prepare.sh runs it
before anything is installed.

    python -m bench.gpu.packages requirements      # NAME==VERSION lines for pip download
    python -m bench.gpu.packages check .whl        # one wheel of each, every requirement met
    python -m bench.gpu.packages size .whl         # what travels: the working tree + the wheels, against 64 MiB
    python -m bench.gpu.packages fallbacks-needed .whl   # there: the fallback wheels this interpreter needs
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TRAVEL_LIMIT = 64 * 2**20  # the working tree and carried paths, per call
FALLBACK_DIR = "fallback"  # .whl/fallback/: installed there only when the image's version is too old


@dataclass(frozen=True)
class Wheel:
    dist: str  # the distribution's name as pip knows it
    version: str
    module: str  # the top-level module it provides
    why: str


# Versions are the ones this repository's tests run with (pyproject.toml's ranges); each is a pure-Python or
# cp312 manylinux x86_64 wheel.
WHEELS = (
    Wheel("bitsandbytes", "0.50.2", "bitsandbytes", "QLoRA (4-bit NF4) in the matrix and the runner; ~43 MB, "
          "its CUDA 13 library matches the image's torch"),
    Wheel("trl", "1.16.0", "trl", "the runner's SFTTrainer and the bare TRL baseline"),
    Wheel("datasets", "5.2.0", "datasets", "what trl and the runner hand examples to"),
    Wheel("dill", "0.4.1", "dill", "datasets' requirement (<0.4.2)"),
    Wheel("multiprocess", "0.70.19", "multiprocess", "datasets' requirement"),
    Wheel("pydantic", "2.14.4", "pydantic", "tuiwiz's profile schema and events"),
    Wheel("pydantic-core", "2.50.5", "pydantic_core", "pydantic's compiled core (pinned by pydantic)"),
    Wheel("annotated-types", "0.8.0", "annotated_types", "pydantic's requirement"),
    Wheel("typing-inspection", "0.4.5", "typing_inspection", "pydantic's requirement"),
    Wheel("typing-extensions", "4.16.0", "typing_extensions", "pydantic needs >=4.16; the image's version is unknown"),
    Wheel("liger-kernel", "0.8.5", "liger_kernel", "the throughput step's Liger on/off (Triton kernels, GPU only)"),
)

# Installed there only if the image's copy is missing or older than tuiwiz's minimum (pyproject.toml): a second
# copy of a package the image holds would replace the one its transformers was tested with.
FALLBACKS = (
    Wheel("peft", "0.21.2", "peft", "tuiwiz needs peft>=0.17; the image's version was not recorded"),
)
MINIMUM = {"peft": "0.17", "transformers": "5.0", "accelerate": "1.5", "torch": "2.4"}

# On the GPU machine's image ('cuda'; its package list as read on 2026-11-17), by distribution name: the part of
# it that tuiwiz and the runbook use. Some versions seen there: torch 2.11.0 (CUDA 13.0), transformers 5.17.0,
# accelerate 1.15.0, huggingface_hub 1.33.0, tokenizers 0.23.2, safetensors 0.8.0, numpy 2.5.2, triton 3.6.0.
IMAGE = {
    "torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
    "tokenizers": "tokenizers", "safetensors": "safetensors", "huggingface-hub": "huggingface_hub",
    "numpy": "numpy", "pyarrow": "pyarrow", "pandas": "pandas", "psutil": "psutil", "nvidia-ml-py": "pynvml",
    "pyyaml": "yaml", "rich": "rich", "jinja2": "jinja2", "sentencepiece": "sentencepiece",
    "tensorboard": "tensorboard", "triton": "triton", "packaging": "packaging", "filelock": "filelock",
    "fsspec": "fsspec", "xxhash": "xxhash", "requests": "requests", "tqdm": "tqdm", "httpx": "httpx",
    "regex": "regex", "pytest": "pytest", "pytest-timeout": "pytest_timeout", "hf-xet": "hf_xet",
    "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "markupsafe": "markupsafe",
}

# Imported somewhere by tuiwiz but on no path the runbook takes: left behind, within the 64 MiB.
NOT_CARRIED = {
    "deepspeed": "ZeRO needs several GPUs; the machine has one (and the wheel builds ops at install)",
    "textual": "the Textual UI: the runbook is headless", "textual_plotext": "the Textual UI",
    "questionary": "the --plain prompts: the runbook is headless", "gguf": "GGUF export is not exercised",
    "rouge_score": "seq2seq's evaluation is not exercised", "wandb": "tracking is not exercised",
}


def requirement_lines(fallbacks: bool = False) -> list[str]:
    return [f"{w.dist}=={w.version}" for w in (FALLBACKS if fallbacks else WHEELS)]


def carried_modules() -> set[str]:
    return {w.module for w in WHEELS + FALLBACKS}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_dist(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def _requires(path: Path) -> list[str]:
    """The wheel's unconditional Requires-Dist names."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace")
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            names.append(canonical(re.split(r"[ ;<>=!~(\[]", line.split(":", 1)[1].strip())[0]))
    return names


def check(folder: Path) -> list[str]:
    """Problems with the downloaded wheels: a missing or doubled one, a requirement met by neither side."""
    problems = []
    for group, sub in ((WHEELS, folder), (FALLBACKS, folder / FALLBACK_DIR)):
        found: dict[str, list[str]] = {}
        for path in sorted(sub.glob("*.whl")):
            name, version = _wheel_dist(path)
            found.setdefault(name, []).append(version)
        for wheel in group:
            versions = found.pop(canonical(wheel.dist), [])
            if versions != [wheel.version]:
                problems.append(f"{sub.name}/: {wheel.dist} {versions or 'missing'}, wanted {wheel.version}")
        for name, versions in found.items():
            problems.append(f"{sub.name}/: {name} {versions} is not in bench/gpu/packages.py (two versions of "
                            "one package stop the install there)")
    met = {canonical(w.dist) for w in WHEELS + FALLBACKS} | {canonical(d) for d in IMAGE}
    for path in sorted(folder.glob("*.whl")) + sorted((folder / FALLBACK_DIR).glob("*.whl")):
        for need in _requires(path):
            if need not in met:
                problems.append(f"{path.name} requires {need}: neither carried nor in IMAGE")
    return problems


def travelling_files(root: Path = ROOT) -> list[Path]:
    """What a device call sends: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return [root / name for name in dict.fromkeys(out.decode().split("\0")) if name]


def sizes(folder: Path, root: Path = ROOT) -> dict[str, int]:
    tree = sum(p.stat().st_size for p in travelling_files(root) if p.is_file() and not p.is_symlink())
    wheels = sum(p.stat().st_size for p in folder.rglob("*.whl"))
    return {"tree": tree, "wheels": wheels, "total": tree + wheels, "limit": TRAVEL_LIMIT}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def installed_version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def below_minimum() -> dict[str, str | None]:
    """The packages whose installed version is missing or older than tuiwiz's minimum: name -> version."""
    out = {}
    for dist, minimum in MINIMUM.items():
        version = installed_version(dist)
        if version is None or _version_tuple(version) < _version_tuple(minimum):
            out[dist] = version
    return out


def fallbacks_needed(folder: Path) -> list[Path]:
    lacking = below_minimum()
    return [path for w in FALLBACKS if w.dist in lacking
            for path in sorted((folder / FALLBACK_DIR).glob(f"{w.dist.replace('-', '_')}-*.whl"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("requirements", "fallbacks", "check", "size", "fallbacks-needed"))
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / ".whl")
    args = parser.parse_args(argv)
    if args.action in ("requirements", "fallbacks"):
        print("\n".join(requirement_lines(args.action == "fallbacks")))
        return 0
    if args.action == "fallbacks-needed":
        for path in fallbacks_needed(args.folder):  # nothing at all when none is needed: run.sh reads lines
            print(path)
        return 0
    if args.action == "check":
        problems = check(args.folder)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 1 if problems else 0
    s = sizes(args.folder)
    mib = {k: v / 2**20 for k, v in s.items()}
    print(f"travels: {mib['total']:.1f} MiB = working tree {mib['tree']:.1f} MiB + wheels {mib['wheels']:.1f} MiB "
          f"(limit {mib['limit']:.0f} MiB, {mib['limit'] - mib['total']:.1f} MiB to spare)")
    if s["total"] > s["limit"]:
        print("error: over the 64 MiB a device call may send: carry fewer wheels (bench/gpu/packages.py) or "
              "make the working tree smaller (untracked files travel too)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
