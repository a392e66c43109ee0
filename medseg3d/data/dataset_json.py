"""The one owner of ``dataset.json``: its schema, the writer, the validated reader and the split of one fold.

``prep_brats`` (``medseg3d.preparation.brats``) and ``medseg3d datalist`` (``medseg3d.data.pairs``) write the file
through :func:`write_dataset_json`; training reads it through :func:`fold_datalists` (the bundles' ``train.yaml``)
and :func:`read_dataset_json` (cross-validation). ``docs/data.md`` ("dataset.json") is the on-disk contract.

Schema (version ``SCHEMA_VERSION``; a file without ``schema_version`` is version 1 and reads the same way):

- top level: ``schema_version``, ``training`` (a non-empty list of cases), optional ``test``; every other key
  (``name``, ``labels``, ``folds``, ``seed``, the BraTS preparation's records...) is metadata, kept as written.
- a training case: ``case_id``, ``image``, ``label`` (paths relative to the dataset folder), ``fold``; optional
  ``grade`` and ``tumour_type`` (a string or null); any other key is an extra column, kept on read and handed to
  the data loader when the bundle lists it in ``keys`` of :func:`fold_datalists`. ``image`` is one file (a
  multi-channel NIfTI file, or a DICOM series folder), or a list of one file per channel in channel order (an
  nnU-Net dataset listed by ``medseg3d datalist``), which MONAI's ``LoadImaged`` stacks into the channels.
- a test case: ``case_id`` and ``image``, the same optional keys.

Folds are assigned by :func:`medseg3d.data.folds.assign_folds` (:func:`assign_entry_folds` applies it to cases).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg3d.core.constants import CLASS_KEY, CLASS_NAMES
from medseg3d.core.errors import InputError
from medseg3d.core.io import nifti_stem, write_json
from medseg3d.data.folds import assign_folds

DATASET_JSON = "dataset.json"
SCHEMA_KEY = "schema_version"
# 1: what prep_brats and medseg3d datalist wrote before the field existed (case_id optional); 2: schema_version,
# case_id required and unique, optional tumour_type, and (added later) an image may be a list of channel files: a
# version-2 reader without lists refuses such a file, naming the entry, rather than misreading it (docs/data.md).
SCHEMA_VERSION = 2
TRAINING_FIELDS = ("case_id", "image", "label", "fold")
TEST_FIELDS = ("case_id", "image")
TEXT_FIELDS = ("grade", "tumour_type")  # optional per case: a string, or null when unknown
# What reaches the data loader by default: None (an unknown grade) and nested values (``pad``) do not collate.
KEPT_FIELDS = ("image", "label", "case_id", "fold")
_SCALARS = (str, int, float, bool)


def dataset_json_path(dataset_dir: str | os.PathLike) -> Path:
    """``dataset_dir/dataset.json``."""
    return Path(dataset_dir) / DATASET_JSON


def relative_path(path: str | os.PathLike, dataset_dir: str | os.PathLike) -> str:
    """``path`` relative to the dataset folder, with ``/`` separators (how ``dataset.json`` lists files).

    A path outside the folder keeps its ``..`` steps, so the two can move together.

    >>> relative_path("/data/ct/imagesTr/a.nii.gz", "/data/ct"), relative_path("/data/raw/a_ct.nrrd", "/data/lists")
    ('imagesTr/a.nii.gz', '../raw/a_ct.nrrd')
    """
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(dataset_dir))).as_posix()


def assign_entry_folds(
    entries: Sequence[Mapping[str, Any]], folds: int, seed: int = 0, stratify_by: str | None = "grade"
) -> list[dict[str, Any]]:
    """Copies of ``entries`` with ``fold`` set, balanced within each value of ``stratify_by`` (absent: one group).

    Args:
        entries: cases, each with a unique ``case_id``.
        folds: number of folds (>= 1).
        seed: seed of the shuffle.
        stratify_by: the per-case field whose values are balanced across folds (HGG/LGG ``grade``), or None.

    >>> cases = [{"case_id": c, "grade": g} for c, g in [("a", "HGG"), ("b", "HGG"), ("c", "LGG"), ("d", "LGG")]]
    >>> [(e["case_id"], e["grade"], e["fold"]) for e in assign_entry_folds(cases, folds=2)]
    [('a', 'HGG', 0), ('b', 'HGG', 1), ('c', 'LGG', 0), ('d', 'LGG', 1)]
    """
    groups = {e["case_id"]: e.get(stratify_by) for e in entries} if stratify_by else None
    split = assign_folds([e["case_id"] for e in entries], folds, seed, groups)
    return [{**e, "fold": split[e["case_id"]]} for e in entries]


def written_by(dataset_dir: str | os.PathLike) -> str | None:
    """The ``generator`` of the ``dataset.json`` in ``dataset_dir``; None when there is none or it is unreadable."""
    try:
        content = json.loads(dataset_json_path(dataset_dir).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    generator = content.get("generator") if isinstance(content, dict) else None
    return generator if isinstance(generator, str) else None


def _entry_name(list_key: str, number: int, entry: Mapping[str, Any]) -> str:
    case_id = entry.get("case_id")
    return f"{list_key} entry {number}" + (f" ({case_id})" if isinstance(case_id, str) and case_id else "")


def _check_entry(path: Path, list_key: str, number: int, entry: Any, required: Sequence[str], version: int) -> None:
    """Raise ``InputError`` naming ``path`` and the entry unless ``entry`` is a case of the schema."""
    if not isinstance(entry, dict):
        raise InputError(path, f"{list_key} entry {number} is {type(entry).__name__}; expected an object per case")
    if version == 1 and "case_id" not in entry and isinstance(entry.get("image"), str):
        entry["case_id"] = nifti_stem(entry["image"].rstrip("/"))  # version 1: case_id was optional
    missing = [key for key in required if key not in entry]
    if missing:
        case = f" (case {entry['case_id']})" if isinstance(entry.get("case_id"), str) else ""
        raise InputError(path, f"{list_key} entry {number} lacks {', '.join(missing)}{case}; expected "
                         f"{', '.join(required)} in every {list_key} case (docs/data.md)")  # fmt: skip
    name = _entry_name(list_key, number, entry)
    for key in ("case_id", "image", "label"):
        value = entry.get(key)
        if key == "image" and isinstance(value, list):  # one file per channel, in channel order
            if not value or any(not isinstance(item, str) or not item.strip() for item in value):
                raise InputError(path, f"{name}: image is {value!r}; expected a non-empty string or a non-empty list "
                                 "of them (one file per channel)")  # fmt: skip
        elif key in entry and (not isinstance(value, str) or not value.strip()):
            raise InputError(path, f"{name}: {key} is {value!r}; expected a non-empty string")
    fold = entry.get("fold")
    if "fold" in entry and (not isinstance(fold, int) or isinstance(fold, bool) or fold < 0):
        raise InputError(path, f"{name}: fold is {fold!r}; expected an integer >= 0")
    for key in TEXT_FIELDS:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise InputError(path, f"{name}: {key} is {entry[key]!r}; expected a string or null")


def check_dataset(content: Any, path: str | os.PathLike, need_training: bool = True) -> dict[str, Any]:
    """Check ``content`` against the schema; return it with ``schema_version`` set (1 when absent).

    Version 1 cases without ``case_id`` get one from their image's file name. Keys the schema does not name are
    kept as they are.

    Args:
        content: the parsed file.
        path: the file, named in every error.
        need_training: refuse an empty ``training`` list (what training reads); a writer may write one (a tree of
            test cases only).

    Raises:
        InputError: naming ``path`` and the entry at fault: not an object, an unknown ``schema_version``, no
            ``training`` cases, a case lacking a required key or with a value of the wrong type, or a case ID
            listed twice (compared ignoring case, as macOS and Windows compare the file names made from it).
    """
    path = Path(path)
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise InputError(path, "expected a JSON object with a 'training' list (docs/data.md)")
    version = content.get(SCHEMA_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise InputError(path, f"{SCHEMA_KEY} is {version!r}; expected an integer from 1 to {SCHEMA_VERSION} (a newer "
                         "file needs a newer medseg3d)")  # fmt: skip
    test = content.get("test", [])
    if not isinstance(test, list):
        raise InputError(path, f"'test' is {type(test).__name__}; expected a list of cases")
    for number, entry in enumerate(content["training"]):
        _check_entry(path, "training", number, entry, TRAINING_FIELDS, version)
    for number, entry in enumerate(test):
        _check_entry(path, "test", number, entry, TEST_FIELDS, version)
    if need_training and not content["training"]:
        raise InputError(path, "holds no training case")
    seen: dict[str, str] = {}
    for list_key, entries in (("training", content["training"]), ("test", test)):
        for number, entry in enumerate(entries):
            name = _entry_name(list_key, number, entry)
            first = seen.setdefault(entry["case_id"].casefold(), name)
            if first != name:
                raise InputError(
                    path, f"{name}: case ID {entry['case_id']!r} is also {first}; expected unique case IDs"
                )
    for key in ("folds", "seed"):
        if key in content and (not isinstance(content[key], int) or isinstance(content[key], bool)):
            raise InputError(path, f"{key} is {content[key]!r}; expected an integer")
    return {SCHEMA_KEY: version, **content}


def write_dataset_json(dataset_dir: str | os.PathLike, content: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``content`` as ``dataset_dir/dataset.json``, atomically, in the current schema version.

    ``schema_version`` comes first; ``numTraining`` (and ``numTest`` with a ``test`` list) are counted here and
    placed just before ``training``; every other key keeps its order.

    Args:
        dataset_dir: the dataset folder; the paths in ``content`` are relative to it (:func:`relative_path`).
        content: the metadata, ``training`` and optional ``test`` cases (module docstring, ``docs/data.md``).

    Returns:
        What was written.

    Raises:
        InputError: ``content`` breaks the schema (a bug of the caller; the file is left as it was), or the file
            cannot be written.
    """
    path = dataset_json_path(dataset_dir)
    out: dict[str, Any] = {SCHEMA_KEY: SCHEMA_VERSION}
    for key, value in content.items():
        if key in (SCHEMA_KEY, "numTraining", "numTest"):
            continue
        if key == "training":
            out["numTraining"] = len(value)
            if "test" in content:
                out["numTest"] = len(content["test"])
        out[key] = value
    out = json.loads(json.dumps(out))  # a copy in JSON types: what the reader will see
    check_dataset(out, path, need_training=False)
    write_json(out, path)
    return out


def read_dataset_json(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``dataset_dir/dataset.json`` and check it against the schema (:func:`check_dataset`).

    Returns:
        The content, with ``schema_version`` set (1 for a file without it); extra keys and columns kept.

    Raises:
        InputError: the file is missing, not JSON, or breaks the schema; the message names the file and the entry.
    """
    path = dataset_json_path(dataset_dir)
    if not path.is_file():
        raise InputError(path, "not found; expected the dataset.json that prep_brats or medseg3d datalist writes "
                         "(see docs/data.md)")  # fmt: skip
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from None
    return check_dataset(content, path)


def _resolve(dataset_dir: str | os.PathLike, listed: str | list[str]) -> str | list[str]:
    # As monai.data.load_decathlon_datalist resolves image and label paths; a list of channel files path by path.
    if isinstance(listed, list):
        return [os.path.normpath(os.path.join(os.fspath(dataset_dir), item)) for item in listed]
    return os.path.normpath(os.path.join(os.fspath(dataset_dir), listed))


def fold_datalists(
    dataset_dir: str | os.PathLike,
    fold: int,
    keys: Sequence[str] = KEPT_FIELDS,
    class_field: str | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """The (training, validation) cases of ``fold``: that fold validates, every other fold trains.

    Args:
        dataset_dir: folder holding ``dataset.json``.
        fold: the validation fold.
        keys: the per-case fields each returned case keeps for the data loader, default image, label, case_id and
            fold; a bundle adds ``grade`` or an extra column here. Every case must hold a string or number for
            each (None and nested values do not collate into batches).
        class_field: the per-case field a multitask network learns to predict (``grade``, ``tumour_type`` or an
            extra column), or None. Each case then also holds ``class`` (``CLASS_KEY``): the index of its value in
            ``class_names``, -1 where the value is null or absent (the case trains segmentation only).
        class_names: the classes in index order (``class_names_for``).

    Returns:
        Two lists of cases, ``image`` and ``label`` as absolute paths; an ``image`` may be a file, a DICOM
        series folder or a list of channel files (``LoadImaged`` stacks them as channels), a ``label`` is a file.

    Raises:
        InputError: a bad ``dataset.json`` (:func:`read_dataset_json`), a fold that no case has, a fold that holds
            every case, an image or label it names that does not exist, a label that is a folder, a kept field
            that a case lacks or holds as null or a nested value, or a class value not in ``class_names``.
    """
    if class_field is not None and not class_names:
        raise ValueError(f"class_field {class_field!r} needs its class_names")
    content = read_dataset_json(dataset_dir)
    path = dataset_json_path(dataset_dir)
    folds = sorted({entry["fold"] for entry in content["training"]})
    if fold not in folds:
        raise InputError(path, f"no case is in fold {fold}; folds present: {folds}")
    entries = []
    for number, entry in enumerate(content["training"]):
        resolved = {
            **entry,
            "image": _resolve(dataset_dir, entry["image"]),
            "label": _resolve(dataset_dir, entry["label"]),
        }
        for key in ("image", "label"):
            channels = resolved[key] if isinstance(resolved[key], list) else [resolved[key]]
            for listed in map(Path, channels):
                # An image may also be a DICOM series folder (medseg3d datalist lists those); a label is one file,
                # and so is each channel file of an image listed channel by channel.
                if listed.is_file() or (key == "image" and len(channels) == 1 and listed.is_dir()):
                    continue
                if listed.is_dir():
                    what, expected = ("label", "a label file") if key == "label" else ("image", "one file per channel")
                    raise InputError(listed, f"listed as {what} of {entry['case_id']} in {path} but a folder; "
                                     f"expected {expected}")  # fmt: skip
                raise InputError(listed, f"listed as {key} of {entry['case_id']} in {path} but missing")
        for key in keys:
            value = resolved.get(key)
            if key == "image" and isinstance(value, list):  # channel files: loaded, never collated as they are
                continue
            if not isinstance(value, _SCALARS):
                what = "lacks it" if key not in resolved else f"holds {value!r}"
                raise InputError(path, f"{_entry_name('training', number, entry)}: the data loader keeps {key}, but "
                                 f"the case {what}; expected a string or number in every case")  # fmt: skip
        kept = {key: resolved[key] for key in keys}
        if class_field is not None:
            kept[CLASS_KEY] = _class_index(entry.get(class_field), list(class_names), class_field, path, number, entry)
        entries.append(kept)
    train = [e for e, source in zip(entries, content["training"], strict=True) if source["fold"] != fold]
    val = [e for e, source in zip(entries, content["training"], strict=True) if source["fold"] == fold]
    if not train:
        raise InputError(path, f"fold {fold} holds every case; nothing is left to train on (use more folds)")
    return train, val


def _class_index(value: Any, names: list[str], field: str, path: Path, number: int, entry: Mapping) -> int:
    if value is None or value == "":
        return -1
    if str(value) not in names:
        raise InputError(path, f"{_entry_name('training', number, entry)}: {field} is {value!r}; expected one of "
                         f"{names} (the bundle's class_names) or null")  # fmt: skip
    return names.index(str(value))


def class_names_for(dataset_dir: str | os.PathLike, field: str | None, names: Sequence[str] | None = None) -> list[str]:
    """The classes of ``field`` in index order: ``names`` when given, else the field's known classes
    (``CLASS_NAMES``: grade LGG, HGG; the BraTS 2023 tumour types), else the sorted distinct values the training
    cases of ``dataset.json`` hold. No field: no classes.

    Raises:
        InputError: fewer than two classes to learn (the message names ``dataset.json`` and the field).
    """
    if field is None:
        return []
    if names:
        return [str(n) for n in names]
    if field in CLASS_NAMES:
        return list(CLASS_NAMES[field])
    content = read_dataset_json(dataset_dir)
    found = sorted({str(e[field]) for e in content["training"] if e.get(field) not in (None, "")})
    if len(found) < 2:
        raise InputError(dataset_json_path(dataset_dir), f"classify {field!r}: the training cases hold "
                         f"{found or 'no value'}; expected at least two classes")  # fmt: skip
    return found
