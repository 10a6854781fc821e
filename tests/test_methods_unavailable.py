"""The methods tuiwiz says it cannot offer, checked against the package index: the statement must stay true.

When a release of the package accepts the transformers tuiwiz runs on, this test fails, and the method can
then be added (and the row removed from tuiwiz/methods.py UNAVAILABLE)."""

import re
import subprocess
import sys
import zipfile

import pytest
from packaging.specifiers import SpecifierSet

from tuiwiz.methods import UNAVAILABLE

pytestmark = pytest.mark.slow


def _pip(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("missing", UNAVAILABLE, ids=lambda m: m.package)
def test_the_newest_release_still_refuses_our_transformers(missing, tmp_path):
    import transformers

    listing = _pip("index", "versions", missing.package)
    found = re.search(rf"^{re.escape(missing.package)} \(([^)]+)\)", listing.stdout, re.MULTILINE)
    if listing.returncode != 0 or not found:
        pytest.skip(f"the package index cannot be reached from here: {listing.stderr.strip()[-200:]}")
    newest = found.group(1)
    download = _pip("download", f"{missing.package}=={newest}", "--no-deps", "-d", str(tmp_path), "-q")
    assert download.returncode == 0, download.stderr
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    needs = re.search(r"^Requires-Dist: transformers\s*\(?([^;\n)]*)", metadata, re.MULTILINE)
    assert needs, f"{missing.package} {newest} no longer requires transformers: the method may be offered now"
    spec = needs.group(1).strip()
    assert not SpecifierSet(spec).contains(transformers.__version__), (
        f"{missing.package} {newest} accepts transformers {transformers.__version__} ({spec}): offer the method")
    assert missing.requirement == f"{missing.package} {newest} requires transformers {spec}", (
        "the statement names another release: update tuiwiz/methods.py UNAVAILABLE")
