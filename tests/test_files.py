"""staged_folder: a folder is built aside and replaces the old one whole, or not at all."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tuiwiz.files import staged_folder


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_success_replaces_the_old_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staged_folder(final) as staging:
        assert staging.is_dir() and staging.parent == tmp_path and staging.name.startswith(".out.")
        assert not any(staging.iterdir())
        (staging / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # untouched while the new one is built
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path, "out") == []


def test_a_missing_parent_is_made_and_create_false_leaves_the_staging_path_free(tmp_path):
    final = tmp_path / "a" / "b" / "out"
    with staged_folder(final, create=False) as staging:
        assert not staging.exists() and staging.parent.is_dir()
        staging.mkdir()
        (staging / "x").write_text("x")
    assert (final / "x").read_text() == "x"


def test_a_stale_staging_folder_of_this_pid_is_cleared(tmp_path):
    final = tmp_path / "out"
    with staged_folder(final) as staging:
        pass
    staging.mkdir()
    (staging / "stale").write_text("from a killed process")
    with staged_folder(final) as again:
        assert again == staging and not any(again.iterdir())
    assert not staging.exists()


class Interrupted(BaseException):
    """Stands for SIGTERM turned into an exception: not an Exception."""


@pytest.mark.parametrize("error", [ValueError("bug"), KeyboardInterrupt(), Interrupted()])
def test_an_exception_leaves_the_old_folder_and_no_staging(tmp_path, error):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(type(error)):
        with staged_folder(final) as staging:
            (staging / "half.txt").write_text("half")
            raise error
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path, "out") == []


def test_a_signal_handler_that_raises_cleans_up(tmp_path):
    final = tmp_path / "out"

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(SystemExit):
            with staged_folder(final) as staging:
                (staging / "half.txt").write_text("half")
                signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not final.exists()
    assert _leftovers(tmp_path, "out") == []
