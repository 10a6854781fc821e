"""What the tests share and holds no tests: fixed run data, recorded sessions, the app's scenes, helpers.

Fixtures are in tests/conftest.py; plain functions and classes are here, imported by the test modules
(a test module never imports another).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
PROFILES = ROOT / "profiles"
