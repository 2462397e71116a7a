"""peak_rss_mb measures the process itself, not the parent it was started from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from zhclip.pipeline.core.memory import peak_rss_mb

_CHILD = (
    "import json, resource; from zhclip.pipeline.core.memory import peak_rss_mb; "
    "print(json.dumps({'own': peak_rss_mb(), 'ru': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
)


def test_a_child_of_a_big_parent_reports_its_own_peak():
    ballast = bytearray(600 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page: resident, not just reserved
    assert peak_rss_mb() >= 600
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    del ballast
    child = json.loads(done.stdout)
    if child["ru"] < 600:
        pytest.skip("here a child's ru_maxrss does not start at its parent's peak; nothing to guard")
    assert child["own"] < 300, child  # a bare interpreter plus pyarrow-free imports
