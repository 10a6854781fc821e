"""Every scene of the app has its screenshot in screenshots/, and the README shows every one."""

from __future__ import annotations

import re

from .support import ROOT


def test_every_scene_has_a_screenshot_shown_in_the_readme():
    from .support.scenes import SCENES

    names = set(SCENES)
    files = {p.stem for p in (ROOT / "screenshots").glob("*.svg")}
    shown = set(re.findall(r"\(screenshots/([\w-]+)\.svg\)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert names == files, "run python -m tests.support.screenshots"
    assert shown == files
