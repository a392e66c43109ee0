"""Reading a prepared dataset's ``dataset.json`` into the training and validation lists of one fold."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from medseg3d.core.errors import InputError


def read_dataset_json(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``dataset_dir/dataset.json`` and check the keys training relies on.

    Raises:
        InputError: the file is missing, not JSON, or lacks ``training`` entries with image, label and fold.
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise InputError(path, "not found; expected the dataset.json that prep_brats writes (see docs/data.md)")
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise InputError(path, "expected a JSON object with a 'training' list (docs/data.md)")
    for number, entry in enumerate(content["training"]):
        missing = [key for key in ("image", "label", "fold") if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise InputError(path, f"training entry {number} lacks {', '.join(missing)}")
    if not content["training"]:
        raise InputError(path, "holds no training case")
    return content


def fold_datalists(dataset_dir: str | os.PathLike, fold: int) -> tuple[list[dict], list[dict]]:
    """The (training, validation) entries for ``fold``: that fold validates, every other fold trains.

    Each entry holds ``image`` and ``label`` (absolute paths, via ``monai.data.load_decathlon_datalist``),
    ``case_id`` and ``fold``. An ``image`` may be a file or a DICOM series folder; a ``label`` is a file.

    Raises:
        InputError: a bad ``dataset.json`` (see ``read_dataset_json``), a fold that no case has, an image
            or label it names that does not exist, or a label that is a folder.
    """
    content = read_dataset_json(dataset_dir)
    path = Path(dataset_dir) / "dataset.json"
    folds = sorted({int(entry["fold"]) for entry in content["training"]})
    if fold not in folds:
        raise InputError(path, f"no case is in fold {fold}; folds present: {folds}")
    entries = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training")
    for entry in entries:
        for key in ("image", "label"):
            listed = Path(entry[key])
            # An image may also be a DICOM series folder (medseg3d datalist lists those); a label is one file.
            if listed.is_file() or (key == "image" and listed.is_dir()):
                continue
            case = entry.get("case_id", "?")
            if listed.is_dir():
                raise InputError(listed, f"listed as label of {case} in {path} but a folder; expected a label file")
            raise InputError(listed, f"listed as {key} of {case} in {path} but missing")
    # Only what the data loader needs: None (a missing grade) or nested lists do not collate into batches.
    entries = [{key: e[key] for key in ("image", "label", "case_id", "fold") if key in e} for e in entries]
    train = [e for e in entries if int(e["fold"]) != fold]
    val = [e for e in entries if int(e["fold"]) == fold]
    if not train:
        raise InputError(path, f"fold {fold} holds every case; nothing is left to train on (use more folds)")
    return train, val
