"""Postprocessing chosen by cross-validation: a rule is kept only where it raises the mean Dice without lowering
the lesion-wise F1; ``medseg3d infer`` finds the chosen rules beside the checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg3d.bundle.postprocessing import find_postprocessing, score, select_rules
from medseg3d.core.errors import InputError

SHAPE = (40, 36, 24)
SPACING = (1.0, 1.0, 1.0)


def _tumour(truth: np.ndarray, centre: tuple[int, int, int], r: int) -> None:
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    d2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    truth[d2 <= r**2] = 2  # edema
    truth[d2 <= (r * 0.6) ** 2] = 3  # enhancing
    truth[d2 <= (r * 0.3) ** 2] = 1  # necrosis


def _cases(second_lesion: bool) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Predictions = truth plus specks of 2 voxels of edema far from the tumour; with ``second_lesion`` the truth
    and the prediction also hold a second, smaller real tumour."""
    cases = []
    for i in range(3):
        truth = np.zeros(SHAPE, np.uint8)
        _tumour(truth, (12, 12, 12), 7)
        if second_lesion:
            _tumour(truth, (30, 27, 12), 4)
        pred = truth.copy()
        pred[35 - i, 3, 3:5] = 2
        pred[3, 33, 20 - i : 22 - i] = 2
        cases.append((pred, truth, SPACING))
    return cases


def test_specks_are_removed_and_one_lesion_kept() -> None:
    record = select_rules(_cases(second_lesion=False), [1, 2, 3], regions=True)
    assert record["candidates"][0]["name"] == "keep_largest all" and record["candidates"][0]["accepted"]
    assert record["rules"]["all"]["keep_largest"] == 1
    assert record["chosen"]["mean_dice"] > record["none"]["mean_dice"]
    assert record["chosen"]["lesion_f1"] == pytest.approx(1.0)


def test_a_second_lesion_is_never_deleted() -> None:
    """keep_largest would delete the real second tumour (F1 drops): refused; removing specks is taken instead."""
    cases = _cases(second_lesion=True)
    record = select_rules(cases, [1, 2, 3], regions=True, default={"all": {"keep_largest": 1}})
    by_name = {c["name"]: c for c in record["candidates"]}
    assert not by_name["keep_largest all"]["accepted"]
    assert by_name["keep_largest all"]["lesion_f1"] < record["none"]["lesion_f1"]
    assert record["rules"] == {"all": {"min_size": 10}}
    assert "min_size 50 all" not in by_name  # the first size that helps is taken
    assert record["bundle_default"]["lesion_f1"] < record["chosen"]["lesion_f1"]
    kept = score(cases, record["rules"], regions=True)
    assert kept == record["chosen"]


def test_labels_mode_scores_each_label() -> None:
    truth = np.zeros(SHAPE, np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    pred = truth.copy()
    pred[30:32, 30:32, 20:22] = 1  # a false component
    record = select_rules([(pred, truth, SPACING)], [1], regions=False)
    assert record["none"]["lesion_f1"] == pytest.approx(2 / 3)
    assert record["rules"] == {"all": {"keep_largest": 1}} and record["chosen"]["lesion_f1"] == 1.0


def test_find_postprocessing_beside_the_checkpoints(tmp_path: Path) -> None:
    cv = tmp_path / "cv"
    best = cv / "fold_1" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"x")
    assert find_postprocessing(best) is None
    (cv / "postprocessing.json").write_text(json.dumps({"rules": {"all": {"min_size": 10}}}))
    assert find_postprocessing(cv) == (cv / "postprocessing.json", {"all": {"min_size": 10}})
    assert find_postprocessing([best])[1] == {"all": {"min_size": 10}}
    (cv / "postprocessing.json").write_text(json.dumps({"rules": {"all": {"keep": 1}}}))
    with pytest.raises(InputError, match="postprocessing.json"):
        find_postprocessing(cv)
