"""The GPU runbook's steps, each in its own process under its own time limit; a step that fails or runs out of
time is recorded in summary.json and the next one runs. bench/gpu/run.sh installs the wheels and calls this.

    python -m bench.gpu.runbook --out DIR [--dry-run] [--only matrix,chat] [--budget 440]

What lands in --out (at most 8 files, as the device tool brings back):
  summary.json     the machine, the versions, each step's status, time and output tail
  hw.json          `tuiwiz hw --save`: the NVML snapshot (a --gpu-snapshot for `tuiwiz estimate` elsewhere)
                   (the steps nvml_test and packing_test, pytest on CUDA, leave their outcome in summary.json)
  matrix.json      bench/gpu/matrix.py: measured peak memory against the estimate, point by point
  runner.json      bench/gpu/runner_check.py train: a QLoRA run through `tuiwiz --profile`, against its estimate
  chat.json        bench/gpu/runner_check.py chat: `tuiwiz chat` on that run
  throughput.json  bench/gpu/throughput.py: tuiwiz against bare TRL (and Liger on/off)
  log.txt          every step's whole output
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LOG_LIMIT = 12 * 2**20  # log.txt stays under the 16 MiB a returned file may have


@dataclass(frozen=True)
class Step:
    name: str
    timeout: float  # seconds, cut to what the budget has left
    output: str | None  # the file it writes in --out


STEPS = (
    Step("env", 60, None),
    Step("hw", 60, "hw.json"),
    Step("nvml_test", 90, None),
    Step("packing_test", 60, None),
    Step("matrix", 230, "matrix.json"),
    Step("runner", 120, "runner.json"),
    Step("chat", 60, "chat.json"),
    Step("throughput", 160, "throughput.json"),
)
AFTER_MATRIX = 190  # seconds the matrix leaves for the steps after it (runner, chat, throughput as measured)

ENV_CODE = r"""
import json, platform, sys
from bench.gpu import packages
out = {"python": sys.version.split()[0], "platform": platform.platform()}
names = sorted({w.dist for w in packages.WHEELS + packages.FALLBACKS} | set(packages.IMAGE) | {"tuiwiz"})
out["versions"] = {n: packages.installed_version(n) for n in names}
out["below_minimum"] = packages.below_minimum()
import torch
out["torch_cuda"] = torch.version.cuda
out["cuda_available"] = torch.cuda.is_available()
if out["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": p.name, "total_bytes": p.total_memory, "bf16": torch.cuda.is_bf16_supported(),
                  "capability": list(torch.cuda.get_device_capability(0)), "multiprocessors": p.multi_processor_count}
    free, total = torch.cuda.mem_get_info()
    out["gpu"]["used_after_context_bytes"] = total - free  # the CUDA context of one process, and nothing else
for mod in ("trl", "datasets", "bitsandbytes", "pydantic", "peft", "liger_kernel"):
    try:
        __import__(mod)
        out.setdefault("imports", {})[mod] = "ok"
    except Exception as exc:
        out.setdefault("imports", {})[mod] = f"{type(exc).__name__}: {exc}"[:300]
print("ENV " + json.dumps(out))
"""


def commands(args, work: Path) -> dict[str, list[str]]:
    py, out = sys.executable, args.out
    dry = ["--dry-run"] if args.dry_run else []
    return {
        "env": [py, "-c", ENV_CODE],
        "hw": [py, "-m", "tuiwiz", "hw", "--save", str(out / "hw.json")],
        "nvml_test": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                      "tests/test_hardware.py", "-k", "nvml_path_on_a_gpu_machine"],
        # packed examples apart on CUDA: sdpa, eager, and flash attention where the image has flash-attn
        "packing_test": [py, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:randomly",
                         "tests/test_packing.py", "-k", "stay_apart_on_a_gpu"],
        "matrix": [py, "-m", "bench.gpu.matrix", "--out", str(out / "matrix.json"), "--log", str(out / "log.txt"),
                   *dry],
        "runner": [py, "-m", "bench.gpu.runner_check", "train", "--work", str(work / "runner"),
                   "--out", str(out / "runner.json"), *dry],
        "chat": [py, "-m", "bench.gpu.runner_check", "chat", "--work", str(work / "runner"),
                 "--out", str(out / "chat.json"), "--timeout", "50"],
        "throughput": [py, "-m", "bench.gpu.throughput", "--work", str(work / "throughput"),
                       "--out", str(out / "throughput.json"), "--timeout", "50", *dry],
    }


def run_step(step: Step, cmd: list[str], timeout: float, env: dict, log, out: Path) -> tuple[dict, str]:
    """Run one step in its own process group; kill the group at the limit. Returns its record and output."""
    log.write(f"\n===== {step.name}: {' '.join(cmd[:6])} ... (limit {timeout:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as capture:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=capture, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            timed_out = True
        capture.seek(0)
        text = capture.read()
    room = LOG_LIMIT - os.path.getsize(log.name)
    log.write(text if len(text) <= room else text[-room:] if room > 0 else "")
    log.flush()
    record = {"name": step.name, "rc": rc, "seconds": round(time.monotonic() - start, 1),
              "timeout": round(timeout), "status": "timeout" if timed_out else "ok" if rc == 0 else "failed",
              "tail": text[-1500:]}
    if step.output:
        record["file"] = step.output if (out / step.output).exists() else None
    return record, text


def pytest_outcome(text: str) -> dict:
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}
    skipped = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", text)
    return {"counts": counts, "skip_reasons": skipped}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny shapes, here")
    parser.add_argument("--only", help="comma list of steps: " + ", ".join(s.name for s in STEPS))
    parser.add_argument("--budget", type=float, default=440.0, help="seconds for all the steps (default 440)")
    parser.add_argument("--install-rc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--install-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="tuiwiz-gpu-runbook-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {s.strip() for s in args.only.split(",")} if args.only else {s.name for s in STEPS}
    unknown = wanted - {s.name for s in STEPS}
    if unknown:
        parser.error(f"unknown step {', '.join(sorted(unknown))}: the steps are " + ", ".join(s.name for s in STEPS))
    deadline = time.monotonic() + args.budget
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    summary: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "budget_s": args.budget, "install": {"rc": args.install_rc, "seconds": args.install_seconds},
                     "steps": []}
    work = Path(tempfile.mkdtemp(prefix="tuiwiz-gpu-work-"))
    cmds = commands(args, work)
    with open(args.out / "log.txt", "a") as log:
        for step in STEPS:
            if step.name not in wanted:
                continue
            left = deadline - time.monotonic()
            if left < 10:
                summary["steps"].append({"name": step.name, "status": "not_run", "reason": "the budget ran out"})
                continue
            cmd = list(cmds[step.name])
            timeout = min(step.timeout, left)
            if step.name == "matrix":
                later = AFTER_MATRIX if wanted & {"runner", "chat", "throughput"} else 0
                budget = max(60.0, min(step.timeout - 20, left - later))
                cmd += ["--budget", str(round(budget))]
                timeout = min(timeout, budget + 20)
            print(f"[{time.strftime('%H:%M:%S')}] {step.name} (up to {timeout:.0f} s)", flush=True)
            record, text = run_step(step, cmd, timeout, env, log, args.out)
            if step.name == "env":
                found = re.search(r"^ENV (.*)$", text, re.M)
                summary["env"] = json.loads(found.group(1)) if found else None
            if step.name in ("nvml_test", "packing_test"):
                record.update(pytest_outcome(text))
                if record["status"] == "ok" and record["counts"].get("skipped") and not record["counts"].get("passed"):
                    record["status"] = "skipped"
            summary["steps"].append(record)
            print(f"    {record['status']} in {record['seconds']} s", flush=True)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # runs, models, caches: what matters is in --out
    summary["seconds"] = round(args.budget - (deadline - time.monotonic()), 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({s["name"]: s["status"] for s in summary["steps"]}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
