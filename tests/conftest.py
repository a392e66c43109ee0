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


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared dataset of 4 synthetic BraTS 2021 cases of 48x40x32 in 2 folds (shared by the session)."""
    from data_prep.prep_brats import PrepOptions, prep_brats
    from medseg3d.data.synth_brats import write_brats_tree

    root = tmp_path_factory.mktemp("tiny_brats")
    write_brats_tree(root / "raw", cases=4, edition="2021", shape=(48, 40, 32), seed=0)
    prep_brats(root / "raw", root / "prepared", PrepOptions(folds=2))
    return root / "prepared"
