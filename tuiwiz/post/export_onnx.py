"""ONNX export of a classification run: torch.onnx's exporter, then a check with onnxruntime against torch."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.export_folders import merged_folder
from tuiwiz.post.merge_verify import FP32_TOLERANCE, load_model
from tuiwiz.run.outputs import TOKENIZER_FILES, Progress, RunOutput

# Texts of different lengths, so the padded batch has real padding; the first two are the export's example.
ONNX_TEXTS = ("The match ended in a draw after extra time.", "Hi",
              "Heavy snow fell in the mountains overnight and the roads stayed closed until noon.", "Rain")
ONNX_ONE_FILE_BYTES = 1 << 30  # above this the weights go to model.onnx.data: protobuf stops at 2 GiB


def _write_onnx(model, example: dict, dest: Path) -> None:
    """torch.onnx's exporter (torch.export, then onnxscript) with dynamic batch and sequence axes."""
    import logging
    import warnings

    import torch

    class Logits(torch.nn.Module):  # named tensors in, the logits tensor out
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    size = sum(p.numel() * p.element_size() for p in model.parameters())
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about torchvision ops a text model never uses
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Logits(model).eval(), (), str(dest), kwargs=example, input_names=list(example),
                              output_names=["logits"], dynamo=True, verbose=False,
                              dynamic_shapes={name: {0: "batch", 1: "sequence"} for name in example},
                              external_data=size > ONNX_ONE_FILE_BYTES)
    except torch.onnx.OnnxExporterError as exc:
        raise UserError(f"torch.onnx could not export this model: {str(exc).strip().splitlines()[0]}",
                        hint="export --format merged and convert that folder with another ONNX tool",
                        kind="model") from None
    finally:
        quiet.setLevel(level)


def _onnx_logits(path: Path, batches: list[dict]) -> list:
    """The logits onnxruntime computes with the exported file, one array per batch of inputs."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(["logits"], {name: np.asarray(value, dtype=np.int64) for name, value in inputs.items()})[0]
            for inputs in batches]


def export_onnx(source: RunOutput, staging: Path, progress: Progress | None) -> list[str]:
    """model.onnx from the merged classifier, checked against torch with onnxruntime, and its tokenizer and config."""
    import importlib.util
    import inspect

    if not source.is_classifier:
        raise UserError("ONNX export is for classification runs", hint="language models export as gguf or merged",
                        kind="run")
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}, not installed here",
                        hint="pip install 'tuiwiz[onnx]'", kind="dependency")
    import torch
    from transformers import AutoTokenizer

    staging.mkdir()
    folder, notes = merged_folder(source, staging, progress)
    model = load_model(folder, source)
    if next(model.parameters()).dtype != torch.float32:
        notes.append(f"the {next(model.parameters()).dtype} weights were exported as float32")
        model = model.float()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # as the trainer does
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and \
            "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    def batch(texts) -> dict:
        encoded = tokenizer(list(texts), return_tensors="pt", padding=True)
        return {name: encoded[name] for name in names}

    batches = [batch(ONNX_TEXTS), batch(ONNX_TEXTS[:1])]
    with torch.inference_mode():
        expected = [model(**inputs).logits.float().numpy() for inputs in batches]
    if progress:
        progress("onnx", 0, 2)
    _write_onnx(model, batch(ONNX_TEXTS[:2]), staging / "model.onnx")
    model.config.save_pretrained(staging)  # id2label and label2id, as the graph's outputs are ordered
    del model
    if progress:
        progress("onnx", 1, 2)
    got = _onnx_logits(staging / "model.onnx", batches)
    gap = max(float(abs(ours - theirs).max()) for ours, theirs in zip(got, expected))
    if progress:
        progress("onnx", 2, 2)
    if not gap <= FP32_TOLERANCE:  # also catches NaN
        raise UserError(f"the ONNX model does not match the torch model: logits differ by up to {gap:.3g} "
                        f"(tolerance {FP32_TOLERANCE:.0e}); nothing was written",
                        hint="torch.onnx exported this architecture wrongly; export --format merged and convert "
                             "that folder with another ONNX tool", kind="verify")
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, staging / name)
    shutil.rmtree(staging / ".merged", ignore_errors=True)
    return notes + [f"checked with onnxruntime: logits within {gap:.2g} of the torch model on {len(ONNX_TEXTS)} "
                    f"padded texts and on one text; inputs {', '.join(names)}"]
