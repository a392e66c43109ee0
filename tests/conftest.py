"""Shared fixtures: tiny, non-cubic synthetic data and the location of the real sample scans."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
# Non-cubic, odd depth: swapped axes fail loudly and padding is exercised (31 -> 32).
TINY_SHAPE = (48, 40, 31)


def _same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same training, bit for bit: ``metrics.csv`` (but the seconds), and in
    ``last.pt`` and ``best.pt`` the trainer state, weights, optimizer state and lr schedule."""
    import csv

    import torch

    from medseg3d.core.checkpoint_format import load_checkpoint

    def metrics(run_dir: Path) -> list[dict[str, str]]:
        with open(run_dir / "metrics.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    assert metrics(a) == metrics(b)
    for name in ("last.pt", "best.pt"):
        first, second = (load_checkpoint(run / "checkpoints" / name) for run in (a, b))
        assert first["trainer"] == second["trainer"]
        for key, tensor in first["network"].items():
            assert torch.equal(tensor, second["network"][key]), f"{name}: {key} differs"
        states = zip(first["optimizer"]["state"].values(), second["optimizer"]["state"].values(), strict=True)
        for x, y in states:  # momentum buffers (SGD) or moments (AdamW)
            assert x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
        assert first["lr_scheduler"] == second["lr_scheduler"]


@pytest.fixture
def assert_same_run():
    """``assert_same_run(run_a, run_b)``: the two runs trained the same, bit for bit (resume tests)."""
    return _same_run


@pytest.fixture
def real_data() -> Path:
    """``../shared/data/real``; the test is skipped where it is absent (a user's fresh clone)."""
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real is absent")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared dataset of 4 synthetic BraTS 2021 cases of 48x40x32 in 2 folds (shared by the session)."""
    from medseg3d.preparation.brats import PrepOptions, prep_brats
    from medseg3d.data.synth_brats import write_brats_tree

    root = tmp_path_factory.mktemp("tiny_brats")
    write_brats_tree(root / "raw", cases=4, edition="2021", shape=(48, 40, 32), seed=0)
    prep_brats(root / "raw", root / "prepared", PrepOptions(folds=2))
    return root / "prepared"
