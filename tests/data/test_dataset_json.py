"""Fold datalists from a prepared dataset, and the errors for missing or malformed dataset.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg3d.core.errors import InputError
from medseg3d.data.dataset_json import fold_datalists


@pytest.fixture
def prepared(tiny_prepared: Path) -> Path:
    return tiny_prepared


@pytest.mark.parametrize("fold", [0, 1])
def test_each_fold_validates_once(prepared: Path, fold: int) -> None:
    train, val = fold_datalists(prepared, fold)
    assert len(train) == 2 and len(val) == 2
    assert all(e["fold"] == fold for e in val) and all(e["fold"] != fold for e in train)
    assert all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in train + val)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(None, "not found; expected the dataset.json", id="missing"),
        pytest.param("{not json", "is not valid JSON", id="not-json"),
        pytest.param('{"test": []}', "with a 'training' list", id="no-training"),
        pytest.param('{"training": []}', "holds no training case", id="empty"),
        pytest.param('{"training": [{"image": "a.nii.gz", "fold": 0}]}', "entry 0 lacks label", id="no-label"),
    ],
)
def test_bad_dataset_json(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        fold_datalists(tmp_path, 0)
    assert "dataset.json" in str(info.value)


def test_unknown_fold_and_missing_file(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no case is in fold 7; folds present: \[0, 1\]"):
        fold_datalists(prepared, 7)
    content = json.loads((prepared / "dataset.json").read_text())
    content["training"][0]["image"] = "imagesTr/gone.nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).symlink_to(prepared / sub)
    with pytest.raises(InputError, match="gone.nii.gz: listed as image"):
        fold_datalists(tmp_path, 0)
