"""Numbers as people read them: sizes, counts, durations, and text bars. The one place that formats
them, for every front end and every message. No Textual here."""

from __future__ import annotations

import math

MIB = 1024**2
GIB = 1024**3


def size(n: int | float | None) -> str:
    """Bytes as KiB/MiB/GiB/TiB with three significant digits."""
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.{0 if value >= 100 else 1}f} {unit}"
    return f"{n:.0f} B"


def mib(n_mib: int | float | None) -> str:
    return size(None if n_mib is None else n_mib * MIB)


def gib(n: int | float | None) -> str:
    """Bytes in GiB with one decimal, as memory budgets are compared: 8589934592 -> 8.0 GiB."""
    return "-" if n is None else f"{n / GIB:.1f} GiB"


def gb(n: int | float) -> str:
    """Bytes in decimal GB with one decimal, as disks are sold and ``df -H`` shows them."""
    return f"{n / 1e9:.1f} GB"


def count(n: int | float | None, digits: int | None = None) -> str:
    """1234567 -> 1.2M; with ``digits``, always that many decimals (1.23M for 2)."""
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            places = digits if digits is not None else 0 if abs(n) / scale >= 100 else 1
            return f"{n / scale:.{places}f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    """3725 -> 1h02m; 75 -> 1m15s; 9 -> 9s."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def bar(fraction: float, width: int) -> str:
    """A solid bar in eighths of a cell, ``width`` cells wide, padded with light shade."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    text = "█" * full + partial.strip()
    return text + "░" * (width - len(text))
