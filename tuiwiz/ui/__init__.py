"""The wizard: a Textual app, or the same steps as plain prompts (``--plain``).

Nothing heavy is imported here: the app module loads when the wizard starts,
each screen when it is first shown, and the training stack never.
"""

from __future__ import annotations


def run_wizard(plain: bool = False) -> int:
    """Run the wizard in this terminal; returns the process exit code."""
    if plain:
        from tuiwiz.ui.plain import run_plain

        return run_plain()
    from tuiwiz.ui.app import TuiwizApp

    app = TuiwizApp()
    try:
        code = app.run()
    finally:
        app.stop_probes()  # however the app ended
    for line in app.farewell():
        print(line)
    return code if isinstance(code, int) else 0
