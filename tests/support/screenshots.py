"""Write an SVG of every screen, made from the real app, to screenshots/ (and print the list).

    python -m tests.support.screenshots [--out screenshots] [--size 100x30]   (from the repo root)

Each scene (tests/support/scenes.py) runs on a recorded machine with fixed run data
in a temporary folder; the demo model is built first if needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="screenshots")
    parser.add_argument("--size", default="100x30", help="terminal WIDTHxHEIGHT (default 100x30)")
    parser.add_argument("--only", nargs="*", help="scene names (default: all)")
    args = parser.parse_args(argv)
    width, height = (int(n) for n in args.size.lower().split("x"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        home_path = Path(home)
        os.environ.setdefault("TUIWIZ_CACHE_DIR", str(home_path / "cache"))
        os.environ["TUIWIZ_STATE_DIR"] = str(home_path / "state")
        from textual._doc import take_svg_screenshot

        from .scenes import SCENES, ensure_demo, scene_environment, stop_sleepers
        from .testing import settle

        ensure_demo()
        written = []
        for name, scene in SCENES.items():
            if args.only and name not in args.only:
                continue
            os.environ.update(scene_environment(scene.hardware, home_path))
            work = home_path / f"work-{name}"
            work.mkdir()
            os.chdir(work)
            os.environ["TUIWIZ_STATE_DIR"] = str(home_path / f"state-{name}")
            try:
                app, ready = scene.build(work)

                async def settled(pilot, ready=ready) -> None:
                    await ready(pilot)
                    await settle(pilot)

                svg = take_svg_screenshot(app=app, terminal_size=(width, height), run_before=settled,
                                          title=f"tuiwiz: {scene.about}")
            finally:
                stop_sleepers()
            target = out / f"{name}.svg"
            target.write_text(svg, encoding="utf-8")
            written.append((target, scene.about))
            print(f"{target.name:24s} {scene.about}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
