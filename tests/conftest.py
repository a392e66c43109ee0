"""Shared fixtures: tiny, non-cubic synthetic data and the location of the real sample scans."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
# Non-cubic, odd depth: swapped axes fail loudly and padding is exercised (31 -> 32).
TINY_SHAPE = (48, 40, 31)


def _same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same training, bit for bit: ``metrics.csv`` (but the columns read off the
    clock), and in ``last.pt`` and ``best.pt`` the trainer state, weights, optimizer state and lr schedule."""
    import csv

    import torch

    from medseg3d.core.checkpoint_format import load_checkpoint
    from medseg3d.training.handlers.metrics_csv import TIME_COLUMNS

    def metrics(run_dir: Path) -> list[dict[str, str]]:
        with open(run_dir / "metrics.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]

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
    from medseg3d.data.synth_brats import write_brats_tree
    from medseg3d.preparation.brats import PrepOptions, prep_brats

    root = tmp_path_factory.mktemp("tiny_brats")
    write_brats_tree(root / "raw", cases=4, edition="2021", shape=(48, 40, 32), seed=0)
    prep_brats(root / "raw", root / "prepared", PrepOptions(folds=2))
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_graded(tmp_path_factory) -> Path:
    """A prepared dataset of 4 synthetic BraTS 2020 cases of 48x40x32 with their grades (3 HGG, 1 LGG, from
    name_mapping.csv) in 2 grade-stratified folds: the multitask network's tiny data."""
    from medseg3d.data.synth_brats import write_brats_tree
    from medseg3d.preparation.brats import PrepOptions, prep_brats

    root = tmp_path_factory.mktemp("tiny_graded")
    write_brats_tree(root / "raw", cases=4, edition="2020", shape=(48, 40, 32), seed=0)
    prep_brats(root / "raw", root / "prepared", PrepOptions(folds=2))
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_ct_dataset(tmp_path_factory) -> Path:
    """A ``medseg3d datalist`` dataset of 4 synthetic CT phantoms of 64x56x40 (NIfTI) with aorta labels, 2 folds."""
    from medseg3d.data.pairs import build_datalist
    from medseg3d.data.synth_ct import write_ct_cases

    root = tmp_path_factory.mktemp("tiny_ct") / "data"
    write_ct_cases(root, cases=4, shape=(64, 56, 40), seed=1)
    build_datalist(root, folds=2, label_names=["aorta"])
    return root


# Each bundle on its tiny data: the dataset fixture, and a 3-level network of 4-8-16 channels on 32-voxel patches;
# "<bundle>+grade": that bundle as the multitask network classifying the grade.
NETWORK = {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]}
TINY_BUNDLES = {
    "brats_mri_resunet_3d": ("tiny_prepared", {"roi_size": [32, 32, 32], **NETWORK}),
    "brats_mri_slicestack_2p5d": ("tiny_prepared", {"roi_size": [32, 32], "num_samples": 2, **NETWORK}),
    "ct_aorta_resunet_3d": ("tiny_ct_dataset", {"roi_size": [32, 32, 32], **NETWORK}),
    "brats_mri_resunet_3d+grade": ("tiny_graded", {"roi_size": [32, 32, 32], "classify": "grade", **NETWORK}),
    "brats_mri_slicestack_2p5d+grade": (
        "tiny_graded",
        {"roi_size": [32, 32], "num_samples": 2, "classify": "grade", **NETWORK},
    ),
}


@pytest.fixture(scope="session")
def tiny_bundle(request):
    """``tiny_bundle(name)`` -> (bundle folder, its tiny dataset, overrides for a tiny network and patch), for the
    tests that run over every bundle; the dataset is made on first use."""

    def get(name: str) -> tuple[Path, Path, dict]:
        fixture, overrides = TINY_BUNDLES[name]
        return REPO / "bundles" / name.split("+")[0], request.getfixturevalue(fixture), dict(overrides)

    return get
