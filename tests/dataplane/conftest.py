import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from dp import ROOT  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def binaries():
    """Build the release binaries once, unless NATT_BIN_DIR points at them."""
    if not os.environ.get("NATT_BIN_DIR"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "natt-dataplane", "-p", "natt-control"], cwd=ROOT,
                       check=True)
