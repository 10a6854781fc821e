"""transformers' scan of its ``models`` folder, made once per installation rather than twice per process.

transformers (5.x) learns what each model module exports by reading every file of its ``models`` folder
(``create_import_structure_from_path``: some 2,000 files), and a process that imports a model class does it twice:
once from transformers' ``__init__`` and again from ``transformers.models``' own, under another cache key (the
``__init__.py`` file's path rather than the folder's): a part of every runner's start that gives the same result
each time.

``remember_scans`` hooks the import of ``transformers.utils.import_utils`` (before transformers' ``__init__`` uses
it) and wraps that function: a folder is scanned once per process whatever path names it, and its result is kept
in tuiwiz's cache, keyed by Python's and transformers' versions, the folder, and the names and modification times
of its entries (a model added, removed or reinstalled changes them). A result that cannot be read or written is
scanned as transformers does. The result is plain data (dicts, sets, frozensets of strings), stored with
``marshal``, which builds data and runs nothing. bench/startup.py measures the time this saves;
tests/test_train_imports.py that the structure is the one a fresh scan gives.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path

MODULE = "transformers.utils.import_utils"


def remember_scans(folder: Path) -> bool:
    """Wrap transformers' folder scan as above, keeping results in ``folder``. Call before transformers is
    imported; when it already is, the scan is wrapped in place (once per process, nothing kept). False when
    transformers has no such function (another version's layout): nothing is changed then."""
    module = sys.modules.get(MODULE)
    if module is not None:
        return _wrap(module, None)
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook(folder))
    return True


class _Hook:
    """A meta path finder for transformers.utils.import_utils alone: the usual spec, whose loader wraps the
    scan once the module has run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module
        folder = self.folder

        def exec_module(module):
            run(module)
            _wrap(module, folder)

        spec.loader.exec_module = exec_module
        return spec


def _wrap(module, folder: Path | None) -> bool:
    scanned = getattr(module, "create_import_structure_from_path", None)
    if scanned is None:
        return False
    if getattr(scanned, "tuiwiz", False):  # wrapped already
        return True
    made: dict[str, object] = {}
    inside = [0]  # the scan reads each model's subfolder through this same name: those are part of the outer one

    def by_folder(module_path):
        where = os.path.dirname(module_path) if os.path.isfile(module_path) else os.fspath(module_path)
        if inside[0]:
            return scanned(Path(where))
        if where not in made:
            inside[0] += 1
            try:
                made[where] = _stored(where, scanned, folder)
            finally:
                inside[0] -= 1
        return made[where]

    by_folder.__wrapped__ = scanned  # type: ignore[attr-defined]
    by_folder.tuiwiz = True  # type: ignore[attr-defined]
    module.create_import_structure_from_path = by_folder
    return True


def scan_key(where: str) -> str:
    """What a kept scan of folder ``where`` is valid for."""
    transformers = sys.modules.get("transformers")
    parts = [sys.version, str(getattr(transformers, "__version__", "")), os.path.realpath(where),
             str(os.stat(where).st_mtime_ns)]
    with os.scandir(where) as entries:
        parts += sorted(f"{e.name}:{e.stat(follow_symlinks=False).st_mtime_ns}" for e in entries)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _stored(where: str, scanned, folder: Path | None):
    if folder is None:
        return scanned(Path(where))
    try:
        kept = folder / f"{scan_key(where)}.marshal"
    except OSError:
        return scanned(Path(where))
    try:
        return marshal.loads(kept.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        pass  # not kept yet, or unreadable: scan as transformers does
    result = scanned(Path(where))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.{os.getpid()}.tmp")
        partial.write_bytes(marshal.dumps(result))
        os.replace(partial, kept)
    except (OSError, ValueError):
        pass  # a read-only cache, or data marshal cannot write: this process keeps its own result
    return result
