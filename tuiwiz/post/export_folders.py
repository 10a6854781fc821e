"""The model folders exports start from: the adapter's files, a full fine-tune's output as it is,
and the whole model's safetensors (a full output, an earlier verified merge, or a new merge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.merge import merge_run
from tuiwiz.run.outputs import TOKENIZER_FILES, Progress, RunOutput


def copy_full_output(source: RunOutput, dest: Path) -> None:
    skip = {"training_args.bin", "README.md"}
    shutil.copytree(source.path, dest, ignore=lambda folder, names: [n for n in names if n in skip])


def export_merged(source: RunOutput, staging: Path, progress: Progress | None) -> list[str]:
    if source.kind == "full":
        copy_full_output(source, staging)
        return [f"{source.method} trains every weight it changes in place: the output is copied as it is"]
    result = merge_run(source, staging, progress=progress)
    return [f"merge verified: logits within {result.max_diff:.2g} of base + adapter"] + \
        ([result.note] if result.note else [])


def export_adapter(source: RunOutput, staging: Path) -> None:
    if source.kind == "full":
        raise UserError(f"run {source.run.run_id} trained with {source.method}: there is no adapter, "
                        "only a whole model", hint="export --format merged copies it", kind="run")
    staging.mkdir()
    for path in source.path.iterdir():
        if path.name.startswith("adapter_") or path.name in TOKENIZER_FILES or path.name == "tuiwiz.json":
            shutil.copy2(path, staging / path.name)


def merged_folder(source: RunOutput, staging: Path, progress: Progress | None) -> tuple[Path, list[str]]:
    """A folder with the whole model's safetensors: the full output, an earlier verified merge, or a new one."""
    if source.kind == "full":
        return source.path, []
    earlier = source.run.path / "merged"
    try:
        meta = json.loads((earlier / "tuiwiz.json").read_text(encoding="utf-8"))
        if meta.get("merged_from") == str(source.path):
            return earlier, [f"used the verified merge in {earlier}"]
    except (OSError, ValueError):
        pass
    notes = export_merged(source, staging / ".merged", progress)
    return staging / ".merged", notes
