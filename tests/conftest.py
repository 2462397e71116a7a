"""Shared pytest fixtures.

Tests that read ../shared/fixtures skip with a reason when that folder is
absent (a clone used outside this workspace); nothing else depends on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"../shared/fixtures not present at {SHARED_FIXTURES} (outside the zhclip workspace)")
    return SHARED_FIXTURES


def sigkill_when(argv: list[str], ready: Callable[[], bool], timeout: float,
                 env: dict[str, str] | None = None, what: str = "the command") -> None:
    """Start ``argv`` in its own session and SIGKILL its whole process group once ``ready()``.

    It must still be running then (a run that finished first proves nothing about resuming);
    the group kill takes worker children down too, as a killed machine would.
    """
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"{what} finished before it could be killed"
            assert time.monotonic() < deadline, f"{what} never got half-way"
            time.sleep(0.02)
        assert proc.poll() is None, f"{what} finished before it could be killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture
def kill_when_ready() -> Callable[..., None]:
    """:func:`sigkill_when`, for kill -9 + resume tests."""
    return sigkill_when
