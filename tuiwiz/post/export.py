"""Export a finished run: merged safetensors, the adapter, GGUF, an Ollama Modelfile, ONNX, or the Hub.

Every export is written into a staging folder renamed into place when complete, and
carries a model card (README.md). This module checks the request and runs one format:
the folders exports start from are in export_folders.py, GGUF in export_gguf.py, the
Modelfile in export_ollama.py, ONNX in export_onnx.py, the Hub push in hub.py.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import staged_folder
from tuiwiz.post.export_folders import export_adapter, export_merged, merged_folder
from tuiwiz.post.export_gguf import GGUF_QUANTS, write_gguf
from tuiwiz.post.export_ollama import modelfile_text, ollama_template, sampling_defaults
from tuiwiz.post.export_onnx import export_onnx
from tuiwiz.post.hub import push_to_hub
from tuiwiz.post.modelcard import write_model_card
from tuiwiz.run.outputs import Progress, RunOutput, run_output
from tuiwiz.run.rundir import RunDir
from tuiwiz.tasks import TASKS

FORMATS = ("merged", "adapter", "gguf", "ollama", "onnx", "hub")


@dataclass(frozen=True)
class ExportResult:
    format: str
    location: str  # the folder written, or the Hub URL
    files: tuple[Path, ...]
    notes: tuple[str, ...]
    seconds: float


def _default_out(source: RunOutput, fmt: str, quant: str) -> Path:
    suffix = f"-{quant}" if fmt in ("gguf", "ollama") else ""
    return source.run.path / f"export-{fmt}{suffix}"


def export_run(ref: str | RunDir | RunOutput, format: str, out: str | Path | None = None, *, quant: str = "f16",
               repo: str | None = None, private: bool = False, token: str | None = None, overwrite: bool = False,
               progress: Progress | None = None) -> ExportResult:
    """Export a completed run in ``format`` (one of FORMATS) into ``out`` (default RUN/export-FORMAT)."""
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}'", hint="formats: " + ", ".join(FORMATS), field="--format",
                        kind="input")
    if format in ("gguf", "ollama") and quant not in GGUF_QUANTS:
        raise UserError(f"unknown GGUF type '{quant}'", hint="types: " + ", ".join(GGUF_QUANTS), field="--quant",
                        kind="input")
    source = ref if isinstance(ref, RunOutput) else run_output(ref)
    started = time.perf_counter()
    if format == "hub":
        location, files, notes = push_to_hub(source, repo, private=private, token=token)
        return ExportResult("hub", location, files, notes, round(time.perf_counter() - started, 3))
    task = TASKS.get(source.task)
    if format in ("gguf", "ollama", "onnx") and task is not None and task.model == "seq2seq":
        made_for = "classifiers" if format == "onnx" else "decoder-only language models, as llama.cpp runs them"
        raise UserError(f"run {source.run.run_id} trained an encoder-decoder (task {task.name}); {format} export "
                        f"is for {made_for}", hint="export --format merged (a transformers folder) or adapter, or "
                        "push it with --format hub", kind="run")
    if format in ("gguf", "ollama", "merged") and source.kind == "prompt":
        raise UserError(f"run {source.run.run_id} trained {source.method}: virtual tokens cannot become weights, "
                        f"so there is no {format} model", hint="export --format adapter keeps them", kind="run")
    out = Path(out).expanduser().resolve() if out else _default_out(source, format, quant)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists", hint="pass another --out, or --overwrite", file=out, kind="output")
    notes: list[str] = []
    with staged_folder(out, create=False) as staging:  # each format makes the folder its own way
        if format == "merged":
            notes += export_merged(source, staging, progress)
        elif format == "adapter":
            export_adapter(source, staging)
        elif format == "onnx":
            notes += export_onnx(source, staging, progress)
        else:
            staging.mkdir()
            notes += _export_gguf(source, staging, quant, progress, ollama=format == "ollama")
        if not (staging / "README.md").exists():
            write_model_card(source, staging, artifact=format)
    files = tuple(sorted(p for p in out.rglob("*") if p.is_file()))
    return ExportResult(format, str(out), files, tuple(notes), round(time.perf_counter() - started, 3))


def _export_gguf(source: RunOutput, staging: Path, quant: str, progress: Progress | None, *,
                 ollama: bool) -> list[str]:
    if source.is_classifier:
        raise UserError("GGUF holds language models; this run trained a classifier",
                        hint="export --format merged or onnx", kind="run")
    folder, notes = merged_folder(source, staging, progress)
    name = f"{source.run.run_id}-{quant}.gguf"
    write_gguf(folder, staging / name, quant, name=source.run.run_id, progress=progress)
    if ollama:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        context = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
        text, more = modelfile_text(name, ollama_template(tokenizer), tokenizer.eos_token, context=context,
                                    **sampling_defaults(folder))
        (staging / "Modelfile").write_text(text, encoding="utf-8")
        notes += more + [f"in the export folder: ollama create {source.run.run_id} -f Modelfile"]
    shutil.rmtree(staging / ".merged", ignore_errors=True)
    return notes
