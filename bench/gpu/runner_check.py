"""The real runner on the GPU: a QLoRA run of the demo (`tuiwiz --profile`), its measured peak against
`tuiwiz estimate` of the same profile, then `tuiwiz chat` on what it trained.

    python -m bench.gpu.runner_check train --work DIR --out runner.json [--dry-run]
    python -m bench.gpu.runner_check chat --work DIR --out chat.json

Everything goes through the CLI as a user types it (python -m tuiwiz ...). The dry run trains on the CPU, with
LoRA when bitsandbytes cannot quantize there.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
PROFILE = ROOT / "profiles" / "demo-qlora-4bit.yaml"
QUESTION = "What is eight plus four?"  # a demo:alpaca instruction: the trained adapter should answer in shape


def tuiwiz_env(work: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "TUIWIZ_CACHE_DIR": str(work / "cache"), "TUIWIZ_STATE_DIR": str(work / "state"),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}


def _run(cmd: list[str], env: dict, timeout: float, stdin: str | None = None) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"rc": None, "timed_out": True, "seconds": round(time.perf_counter() - start, 1),
                "stdout": str(out)[-2000:], "stderr": ""}
    return {"rc": proc.returncode, "timed_out": False, "seconds": round(time.perf_counter() - start, 1),
            "stdout": proc.stdout, "stderr": proc.stderr}


def write_profile(work: Path, dry_run: bool, method: str) -> Path:
    data = yaml.safe_load(PROFILE.read_text())
    data["output"]["runs_dir"] = str(work / "runs")
    data["training"].update(save_steps=10_000)  # the profile's 60 steps on the GPU: seconds there
    if dry_run:
        data["training"].update(max_steps=4, logging_steps=2)
    if method != "qlora":
        data["method"] = {"type": method, "r": data["method"]["r"], "lora_alpha": data["method"]["lora_alpha"]}
    path = work / f"runner-{method}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def latest_run(work: Path) -> Path | None:
    runs = [p for p in (work / "runs").glob("*") if (p / "events.jsonl").exists()]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def qlora_on_cpu_works() -> bool:
    """Whether bitsandbytes quantizes on this machine's CPU (it does from 0.46 on, but not every build)."""
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from bitsandbytes.nn import Linear4bit

        Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        return True
    except Exception:
        return False


def train(work: Path, dry_run: bool, timeout: float) -> dict:
    env = tuiwiz_env(work)
    method = "qlora" if not dry_run or qlora_on_cpu_works() else "lora"
    profile = write_profile(work, dry_run, method)
    out: dict = {"profile": yaml.safe_load(profile.read_text()), "method": method}
    ran = _run([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env, timeout)
    out.update(rc=ran["rc"], timed_out=ran["timed_out"], seconds=ran["seconds"],
               output_tail=(ran["stdout"] + ran["stderr"])[-3000:])
    # after the run, which built the demo model the estimate reads
    est = _run([sys.executable, "-m", "tuiwiz", "estimate", str(profile), "--json"], env, 120)
    if est["rc"] == 0:
        estimate = json.loads(est["stdout"])
        out["estimate"] = {k: estimate[k] for k in ("total", "per_device", "machine", "notes")}
    else:
        out["estimate_error"] = (est["stderr"] or est["stdout"])[-2000:]
    run = latest_run(work)
    if run is None:
        out["status"] = "failed"
        return out
    events = _events(run)
    start = next((e for e in events if e.get("type") == "run_start"), {})
    end = next((e for e in reversed(events) if e.get("type") == "run_end"), {})
    logs = [e for e in events if e.get("type") == "log"]
    memory = [e["memory"] for e in logs if e.get("memory")]
    peaks = {key: max(m.get(key, 0) for m in memory) for key in ("gpu_reserved_mb", "gpu_allocated_mb",
                                                                    "peak_rss_mb")} if memory else {}
    out.update(
        status=end.get("status", "failed"), run_id=run.name, device=start.get("device"),
        precision=start.get("precision"), dtype=start.get("dtype"), versions=start.get("versions"),
        params_trainable=start.get("params_trainable"), losses=[e["loss"] for e in logs],
        tokens_per_second=(end.get("metrics") or {}).get("train_tokens_per_second"), memory_peak_mb=peaks,
        error=None if end.get("status") == "completed" else end.get("message") or end.get("error_kind"),
    )
    reserved, rss = peaks.get("gpu_reserved_mb"), peaks.get("peak_rss_mb")
    if "estimate" in out and (reserved or rss):
        total = out["estimate"]["total"]
        if reserved:  # as the matrix: the CUDA context lives outside the allocator, so apart
            out["ratio"] = round((total - out["estimate"]["per_device"]["context"]) / (reserved * 2**20), 4)
        else:  # the CPU estimate counts the whole process
            out["ratio"] = round(total / (rss * 2**20), 4)
    return out


def chat(work: Path, timeout: float) -> dict:
    """One question through `tuiwiz chat RUN` (the terminal REPL, stdin closed after it), then the same through
    `tuiwiz chat RUN --jsonl` for the device and the speed."""
    env = tuiwiz_env(work)
    run = latest_run(work)
    if run is None:
        return {"status": "failed", "error": "no run to chat with: the runner step made none"}
    out: dict = {"run": run.name, "question": QUESTION}
    repl = _run([sys.executable, "-m", "tuiwiz", "chat", str(run), "--temperature", "0", "--max-new-tokens", "24"],
                env, timeout / 2, stdin=QUESTION + "\n")
    out["repl"] = {"rc": repl["rc"], "seconds": repl["seconds"], "stdout": repl["stdout"][-1500:],
                   "stderr": repl["stderr"][-1500:]}
    out["jsonl"] = _ask_jsonl(run, env, timeout / 2)
    done = out["jsonl"].get("done") or {}
    out["device"] = (out["jsonl"].get("ready") or {}).get("device")
    out["status"] = "ok" if repl["rc"] == 0 and done and not out["jsonl"].get("error") else "failed"
    return out


def _ask_jsonl(run: Path, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "tuiwiz", "chat", str(run), "--jsonl"]
    errors = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                            text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    result: dict = {"answer": ""}
    deadline = time.monotonic() + timeout
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                result["error"] = "the server ended before its answer"
                break
            event = json.loads(line)
            kind = event.get("event")
            if kind == "ready":
                result["ready"] = event
                proc.stdin.write(json.dumps({"op": "ask", "id": 1, "temperature": 0, "max_new_tokens": 24,
                                             "messages": [{"role": "user", "content": QUESTION}]}) + "\n")
                proc.stdin.flush()
            elif kind == "token":
                result["answer"] += event.get("text", "")
            elif kind == "done":
                result["done"] = event
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.flush()
                break
            elif kind == "error":
                result["error"] = event
                break
        proc.wait(timeout=30)
    except (queue.Empty, subprocess.TimeoutExpired):
        result["error"] = f"no answer within {timeout:.0f} s"
    except (OSError, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    errors.seek(0)
    result.update(rc=proc.returncode, stderr=errors.read()[-1500:])
    errors.close()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("train", "chat"))
    parser.add_argument("--work", type=Path, required=True, help="a folder for the runs, the cache and the state")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the run (chat: both questions)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = train(args.work, args.dry_run, args.timeout) if args.action == "train" else chat(args.work, args.timeout)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result.get(k) for k in ("status", "device", "ratio", "seconds", "error")}))
    return 0 if result.get("status") in ("completed", "ok") else 1


if __name__ == "__main__":
    sys.exit(main())
