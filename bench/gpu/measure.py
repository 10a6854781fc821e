"""The calibration matrix's worker (bench/gpu/matrix.py starts it): for each point, builds the model, puts the
method on it as the runner does, trains a few optimizer steps and reports the peak memory.

    python -m bench.gpu.measure POINTS.json EVENTS.jsonl

It appends {"event": "start", "id"} before a point and {"event": "done", "id", "result"} after it, so the driver
can time each point and kill a slow one. After an out-of-memory error it exits (3): the driver starts a clean one.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
import traceback

OOM_EXIT = 3


def _emit(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _cleanup(torch, cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        # a fresh runner allocates its cuBLAS workspace in its first step: so does every point
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear:
            clear()
        torch.cuda.empty_cache()


def _hwm_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def load_dtype(torch, profile, cuda: bool):
    """The runner's rule (tuiwiz/train/modeling.py, _load_dtype): fp32 for whole-model methods and on the CPU."""
    from tuiwiz.methods import METHODS

    if profile.model.dtype != "auto":
        return getattr(torch, profile.model.dtype)
    if METHODS[profile.method.type].whole_model or not cuda:
        return torch.float32
    return torch.bfloat16


def build_model(point: dict, profile, cuda: bool):
    """A randomly initialised model of the point's shape on the device; under QLoRA loaded through
    from_pretrained's bitsandbytes path from an in-memory state dict, as the runner loads a checkpoint."""
    import torch
    import transformers

    from bench.gpu import models

    values = dict(models.config(point["arch"], point["tiny"]))
    values.pop("architectures", None)
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    device = "cuda" if cuda else "cpu"
    dtype = load_dtype(torch, profile, cuda)
    transformers.set_seed(profile.training.seed)
    if profile.method.type != "qlora":
        with torch.device(device):
            return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    m = profile.method
    compute = dtype if m.bnb_4bit_compute_dtype == "auto" else getattr(torch, m.bnb_4bit_compute_dtype)
    quantization = (transformers.BitsAndBytesConfig(load_in_8bit=True) if m.bits == 8 else
                    transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.bnb_4bit_quant_type,
                                                    bnb_4bit_use_double_quant=m.bnb_4bit_use_double_quant,
                                                    bnb_4bit_compute_dtype=compute))
    with torch.device(device):
        source = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = source.state_dict()
    model = type(source).from_pretrained(None, config=config, state_dict=state, quantization_config=quantization,
                                         dtype=dtype, device_map={"": 0} if cuda else None)
    del source, state
    return model


def _optimizer(torch, params, training):
    if training.optim not in ("adamw_torch", "adamw_torch_fused"):
        raise ValueError(f"the matrix trains with torch's AdamW; {training.optim} is not mirrored here")
    fused = True if training.optim == "adamw_torch_fused" else None  # Trainer: adamw_torch is torch's default
    lr = training.learning_rate or 1e-4  # "auto" is settled by the recommender; the value moves no memory
    return torch.optim.AdamW(params, lr=lr, weight_decay=training.weight_decay, fused=fused)


def run_point(point: dict) -> dict:
    import peft
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from bench.gpu.matrix import point_profile
    from tuiwiz.train.modeling import apply_method

    cuda = point["device"] == "cuda"
    device = "cuda" if cuda else "cpu"
    profile = point_profile(point)
    _cleanup(torch, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    model = build_model(point, profile, cuda)
    model = apply_method(model, profile, point["steps"], model_path="")
    # SFTTrainer: a fused, tiled LM head on the base model, added after peft wraps it
    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    if profile.training.gradient_checkpointing:  # the runner's training_arguments
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(torch, params, profile.training)
    vocab = base.config.vocab_size
    build_seconds = time.perf_counter() - t0
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        load_peak = torch.cuda.max_memory_reserved()
        after_build = torch.cuda.memory_reserved()
        torch.cuda.reset_peak_memory_stats()
    hwm = _hwm_reset()
    after_build_rss = _status_bytes("VmRSS") - baseline
    step_seconds = []
    tokens = 0
    for _ in range(point["steps"]):
        t = time.perf_counter()
        ids = torch.randint(0, vocab, (point["mb"], point["seq"]), device=device)
        mask = torch.ones_like(ids)
        mask[0, -max(1, point["seq"] // 8):] = 0  # padding, as in real batches: attention gets a mask
        labels = ids.masked_fill(mask == 0, -100)
        # SFTTrainer.compute_loss: the fused head's per-token log-probabilities, no cache, under autocast
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False, fused_lm_head=True)
            loss = (-out.log_probs).sum() / out.label_mask.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, profile.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del out, loss
        if cuda:
            torch.cuda.synchronize()
        step_seconds.append(round(time.perf_counter() - t, 4))
        tokens += int(mask.sum())
    if cuda:
        free, total = torch.cuda.mem_get_info()
        measured = {"peak": torch.cuda.max_memory_reserved(), "peak_kind": "torch.cuda.max_memory_reserved",
                    "max_allocated": torch.cuda.max_memory_allocated(), "after_build": after_build,
                    "load_peak": load_peak, "non_torch": (total - free) - torch.cuda.memory_reserved()}
    else:
        peak = _status_bytes("VmHWM") if hwm else _status_bytes("VmRSS")
        measured = {"peak": peak - baseline, "peak_kind": "VmHWM - RSS before the model" if hwm else
                    "RSS after the steps - RSS before the model (no high-water reset here)",
                    "after_build": after_build_rss}
    del model, base, optimizer, params
    _cleanup(torch, cuda)
    later = step_seconds[1:] or step_seconds  # the first step warms up kernels
    per_step = tokens / len(step_seconds)
    return {"status": "ok", "measured": measured, "build_seconds": round(build_seconds, 2),
            "step_seconds": step_seconds, "tokens_per_second": round(per_step / statistics.mean(later))}


def main(argv=None) -> int:
    points_file, events = (argv or sys.argv[1:])[:2]
    import peft  # noqa: F401  (every import before the freeze below)
    import torch
    import transformers  # noqa: F401
    import trl.trainer.utils  # noqa: F401

    import tuiwiz.train.modeling  # noqa: F401
    from bench.gpu import matrix  # noqa: F401

    cuda = torch.cuda.is_available()
    if cuda:
        torch.zeros(1, device="cuda")  # the context exists before any point is measured
    gc.collect()
    gc.freeze()  # the libraries' objects stay out of every later collection: each takes a second otherwise
    for point in json.loads(open(points_file).read()):
        _emit(events, {"event": "start", "id": point["id"]})
        t = time.perf_counter()
        try:
            result = run_point(point)
        except torch.OutOfMemoryError as exc:
            result = {"status": "oom", "reason": str(exc).splitlines()[0][:400],
                      "measured": {"peak": torch.cuda.max_memory_reserved() if cuda else None,
                                   "peak_kind": "torch.cuda.max_memory_reserved at the failure"}}
            result["seconds"] = round(time.perf_counter() - t, 1)
            _emit(events, {"event": "done", "id": point["id"], "result": result})
            return OOM_EXIT  # a clean process for the next point
        except Exception:
            result = {"status": "error", "reason": traceback.format_exc()[-1500:]}
        result["seconds"] = round(time.perf_counter() - t, 1)
        _emit(events, {"event": "done", "id": point["id"], "result": result})
        _cleanup(torch, cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
