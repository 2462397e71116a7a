"""Shared pytest fixtures.

Tests that read ../shared/fixtures skip with a reason when that folder is
absent (a clone used outside this workspace); nothing else depends on it.
"""

from __future__ import annotations

import os
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
