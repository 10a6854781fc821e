"""A model whose weights stay on disk: a skeleton on the meta device whose blocks read their
weights from the safetensors files just before they run and drop them after.

Verifying a merge runs the base model (with and without the adapter) and the merged model on a few
prompts. Loaded whole, even memory-mapped, each model passes through the process's resident memory;
streamed, the peak is one block (a decoder layer, the embedding, the head) plus the adapter.
accelerate's disk offload does the same for a bare model, but peft re-dispatches an offloaded model
when it wraps it and fails on the meta tensors, so the blocks are fed here, after peft has wrapped.
Each read opens its file and closes it, so no mapping of a whole shard stays in the process.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuiwiz.errors import UserError


def _weight_files(folder: Path) -> dict[str, Path]:
    """checkpoint key -> the safetensors file that holds it."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name.startswith("adapter_model"):
            continue
        with safe_open(path, framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), path))
    if not files:
        raise UserError(f"{folder} has no safetensors weights to verify with", file=folder, kind="model")
    return files


def _checkpoint_key(name: str, files: dict[str, Path], prefix: str) -> str | None:
    """The checkpoint's name for a parameter: the same, or without the model's prefix (a bare encoder
    saved without the ``bert.`` that its classification model puts before it)."""
    if name in files:
        return name
    if prefix and name.startswith(prefix + ".") and name.removeprefix(prefix + ".") in files:
        return name.removeprefix(prefix + ".")
    return None


class StreamedModel:
    """``build()`` makes the model; under ``init_empty_weights`` it is a skeleton.
    ``wrap`` (optional) wraps it (peft)."""

    def __init__(self, folder: Path, build, *, wrap=None) -> None:
        import torch
        from accelerate import init_empty_weights

        self.folder = Path(folder)
        self.files = _weight_files(self.folder)
        with init_empty_weights():  # parameters on meta; buffers (rotary frequencies) real
            skeleton = build()
        # Made on meta, tied weights (T5's shared embedding and head) come out as separate parameters; the
        # checkpoint holds only the first of them.
        skeleton.tie_weights()
        prefix = getattr(skeleton, "base_model_prefix", "")
        self._keys: dict[int, str] = {}  # id(parameter) -> checkpoint key; tied weights share one
        missing = []
        for name, param in skeleton.named_parameters(remove_duplicate=False):
            key = _checkpoint_key(name, self.files, prefix)
            if key is not None:
                self._keys.setdefault(id(param), key)
        for name, param in skeleton.named_parameters():
            if id(param) not in self._keys:
                missing.append(name)
        # parameters the checkpoint lacks (a new classification head) are initialised as
        # from_pretrained would, once: they are small
        torch.manual_seed(0)
        for name in missing:
            module = skeleton.get_submodule(name.rpartition(".")[0])
            module.to_empty(device="cpu", recurse=False)
            skeleton._init_weights(module)
        self.model = (_wrapped(skeleton, wrap) if wrap else skeleton).eval()
        self._hook_blocks(set(getattr(skeleton, "_no_split_modules", None) or ()))

    def _hook_blocks(self, block_classes: set[str]) -> None:
        import torch

        def on_disk(module, recurse: bool) -> list[tuple]:
            return [(owner, name, self._keys[id(param)]) for owner in (module.modules() if recurse else (module,))
                    for name, param in owner._parameters.items()
                    if param is not None and param.is_meta and id(param) in self._keys]

        def hook(module, recurse: bool) -> None:
            targets = on_disk(module, recurse)
            if not targets:
                return
            saved: list[tuple] = []

            def load(_module, _args):
                by_file: dict[Path, list[tuple]] = {}
                for owner, name, key in targets:
                    by_file.setdefault(self.files[key], []).append((owner, name, key))
                from safetensors import safe_open

                for path, entries in by_file.items():
                    with safe_open(path, framework="pt") as handle:
                        for owner, name, key in entries:
                            meta = owner._parameters[name]
                            saved.append((owner, name, meta))
                            tensor = handle.get_tensor(key).to(meta.dtype)  # as from_pretrained casts
                            owner._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)

            def drop(_module, _args, _output):
                while saved:
                    owner, name, meta = saved.pop()
                    owner._parameters[name] = meta  # the meta parameter back: ties stay tied
                release_freed_memory()

            module.register_forward_pre_hook(load)
            module.register_forward_hook(drop)

        def walk(module) -> None:
            if type(module).__name__ in block_classes:
                hook(module, recurse=True)
                return
            if not any(type(sub).__name__ in block_classes for sub in module.modules()):
                hook(module, recurse=True)  # a leaf or a small module (a head, a LoRA-wrapped layer)
                return
            hook(module, recurse=False)
            for child in module.children():
                walk(child)

        walk(self.model)
        left = [name for name, param in self.model.named_parameters() if param.is_meta and id(param) not in self._keys]
        if left:
            raise UserError(f"cannot verify with {self.folder}: weights {left[:3]} are neither in its files "
                            f"nor in the adapter", kind="verify")

    @property
    def config(self):
        return self.model.config

    def __call__(self, **inputs):
        return self.model(**inputs)


def _wrapped(skeleton, wrap):
    """``wrap(skeleton)`` while each weight on disk is a zero of its shape that takes no memory (a view
    with stride 0): peft places the adapter it loads on the device of the weight it adapts, so on a
    meta weight it would drop the adapter's values. The meta weights go back afterwards."""
    import torch

    stand_ins = []
    for owner in skeleton.modules():
        for name, param in owner._parameters.items():
            if param is not None and param.is_meta:
                stand_ins.append((owner, name, param))
                zero = torch.zeros((), dtype=param.dtype).expand(param.shape)
                owner._parameters[name] = torch.nn.Parameter(zero, requires_grad=False)
    try:
        return wrap(skeleton)
    finally:
        for owner, name, param in stand_ins:
            owner._parameters[name] = param


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim). Weights under glibc's mmap
    threshold (32 MiB once it has grown) come from the heap, and what they leave free stays in the
    process's resident memory until trimmed; elsewhere this does nothing."""
    import ctypes
    import ctypes.util

    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # glibc's malloc_trim once looked up; False where there is none

