"""Where tuiwiz keeps its own files: the demo cache and the run registry.

``TUIWIZ_CACHE_DIR`` and ``TUIWIZ_STATE_DIR`` override the XDG defaults, which
is how tests keep each case apart.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def cache_dir() -> Path:
    """Rebuildable files (the demo model and datasets)."""
    override = os.environ.get("TUIWIZ_CACHE_DIR")
    return Path(override) if override else _xdg("XDG_CACHE_HOME", ".cache") / "tuiwiz"


def state_dir() -> Path:
    """Small files that must persist (the registry of runs)."""
    override = os.environ.get("TUIWIZ_STATE_DIR")
    return Path(override) if override else _xdg("XDG_STATE_HOME", ".local/state") / "tuiwiz"
