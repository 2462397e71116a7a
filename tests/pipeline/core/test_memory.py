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


_FRAGMENTED = """
import json, threading
from zhclip.pipeline.core.memory import release_free_memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))

keep = []
def work():  # ~320 MB of small blocks in a thread's own arena, a few left alive
    blocks = [bytearray(16_000) for _ in range(20_000)]
    keep.extend(blocks[::50])  # the survivors pin the arena, so glibc does not trim it itself
thread = threading.Thread(target=work)
thread.start(); thread.join()
before = rss()
released = release_free_memory()
print(json.dumps({"before": before, "after": rss(), "released": released}))
"""


def test_release_free_memory_hands_a_threads_freed_arena_back():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's; elsewhere release_free_memory does nothing")
    done = subprocess.run([sys.executable, "-c", _FRAGMENTED], capture_output=True, text=True,
                          check=True)
    got = json.loads(done.stdout)
    assert got["released"] and got["before"] - got["after"] > 200, got
