"""Shared fixtures: tiny, non-cubic synthetic data and the location of the real sample scans."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
# Non-cubic, odd depth: swapped axes fail loudly and padding is exercised (31 -> 32).
TINY_SHAPE = (48, 40, 31)


@pytest.fixture
def real_data() -> Path:
    """``../shared/data/real``; the test is skipped where it is absent (a user's fresh clone)."""
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real is absent")
    return REAL_DATA
