"""Fault injection for the tests, from outside the package.

``inject(NAME=value, ...)`` is the environment a test gives `tuiwiz`: this folder on PYTHONPATH, so that
every Python process of the run (the CLI, the runner, accelerate's ranks) imports sitecustomize.py here,
which patches the faults named by the TUIWIZ_INJECT_* variables into the training code as it is imported.
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def inject(**faults: str) -> dict[str, str]:
    """The environment that turns ``faults`` (TUIWIZ_INJECT_* variables, see sitecustomize.py) on."""
    unknown = [name for name in faults if not name.startswith("TUIWIZ_INJECT_")]
    assert not unknown, unknown
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, **faults}
