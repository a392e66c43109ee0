"""nnU-Net v2 raw datasets: their layout read (for ``medseg3d datalist`` and ``medseg3d infer``) and written (a
prepared BraTS dataset exported for ``nnUNetv2_plan_and_preprocess``).

nnU-Net v2 keeps a dataset in ``DatasetNNN_Name/``: one file per channel, ``imagesTr/<case>_<XXXX><file_ending>``
(``XXXX`` the 4-digit channel index, from ``0000``), the label ``labelsTr/<case><file_ending>``, optional
``imagesTs/``, and a ``dataset.json`` with ``channel_names`` (``{"0": "T1", ...}``), ``labels`` (name -> value, or
name -> list of values for region-based training, with ``regions_class_order``), ``numTraining`` and
``file_ending``. Its cross-validation split, ``splits_final.json`` (a list, per fold, of ``{"train": [...], "val":
[...]}``), lives in nnU-Net's preprocessed folder; here it is read from the dataset folder, where users copy it.

What this module does, and who calls it:

- :func:`read_nnunet_dataset` checks such a ``dataset.json`` (every error names the file and what was expected) and
  :func:`find_nnunet_cases` groups the channel files of each case, so that ``medseg3d.data.pairs`` lists the
  dataset in the project's ``dataset.json`` (the files referenced in place, never copied);
- :func:`channel_file`, :func:`group_channel_files` and :func:`channel_problem` are the one rule for channel files,
  which ``medseg3d.data.scans.find_scans`` also applies to an inference input such as ``imagesTs/``;
- :func:`export_nnunet` writes a prepared BraTS dataset (``prep_brats``'s output) as ``DatasetNNN_Name/`` with its
  folds as ``splits_final.json``, so that nnU-Net trains on the same cases and folds (``docs/nnunet.md``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg3d.core.constants import IMAGE_EXTENSIONS, MODALITIES, PREPARED_LABELS, REGIONS
from medseg3d.core.errors import InputError, check_output_folder
from medseg3d.core.io import atomic_path, write_json
from medseg3d.data.dataset_json import dataset_json_path, read_dataset_json
from medseg3d.data.reader import ImageData, image_extension, read_image

logger = logging.getLogger(__name__)

NNUNET_JSON = "dataset.json"
SPLITS_FILE = "splits_final.json"
EXPORTER = "medseg3d nnunet-export"  # the exported dataset.json's "converted_by"
EXPORT_FILE_ENDING = ".nii.gz"
OUTPUT_MODES = ("regions", "labels")
IGNORE = "ignore"  # nnU-Net's name of the label value that is not trained on
_CHANNEL = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_DATASET_FOLDER = re.compile(r"^Dataset(?P<id>\d{3})_")
# What the exported dataset.json keeps of the prepared one (under "medseg3d"): how to read its labels back.
_KEPT_RECORDS = ("edition", "source_label_values", "folds", "seed")


# ------------------------------------------------------------------------------------------------------ channel files


def channel_file(path: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[str, int] | None:
    """(case, channel index) of an nnU-Net channel file ``<case>_<XXXX><ext>``, or None for any other name.

    Args:
        path: the file.
        extensions: the image extensions accepted (lower case; matched ignoring case).

    >>> channel_file("imagesTs/BraTS_001_0003.nii.gz"), channel_file("ct_12.nii.gz"), channel_file("a_0000.txt")
    (('BraTS_001', 3), None, None)
    """
    extension = image_extension(path)
    if extension is None or extension not in extensions:
        return None
    match = _CHANNEL.match(Path(path).name[: -len(extension)])
    return (match["id"], int(match["channel"])) if match else None


def group_channel_files(
    files: Sequence[str | os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> dict[str, dict[int, list[Path]]]:
    """The channel files among ``files``, grouped: case -> channel index -> its files (several only when a channel
    is given twice, e.g. as ``.nii`` and ``.nii.gz``). Other files are left out. Cases and files come sorted.

    >>> groups = group_channel_files(["a_0001.nii.gz", "a_0000.nii.gz", "b_0000.nrrd", "notes.txt"])
    >>> {case: {c: [p.name for p in paths] for c, paths in channels.items()} for case, channels in groups.items()}
    {'a': {0: ['a_0000.nii.gz'], 1: ['a_0001.nii.gz']}, 'b': {0: ['b_0000.nrrd']}}
    """
    groups: dict[str, dict[int, list[Path]]] = {}
    for path in sorted(Path(f) for f in files):
        found = channel_file(path, extensions)
        if found is not None:
            groups.setdefault(found[0], {}).setdefault(found[1], []).append(path)
    return {case: dict(sorted(groups[case].items())) for case in sorted(groups)}


def channel_problem(
    case_id: str, channels: Mapping[int, Sequence[Path]], names: Sequence[str]
) -> tuple[Path, str] | None:
    """Why the channel files of one case are not exactly one file per channel ``0 .. len(names) - 1``, or None.

    Args:
        case_id: the case, as its file names spell it.
        channels: channel index -> the files found for it (:func:`group_channel_files`), at least one file in all.
        names: the name of each expected channel, in index order (``channel_names``, or ``MODALITIES``).

    Returns:
        (the file at fault: the first missing channel's file, else the first extra or repeated one; a sentence
        naming the case, what is wrong and the files expected), or None when the case is complete.

    >>> path, reason = channel_problem("a", {0: [Path("ts/a_0000.nii.gz")], 2: [Path("ts/a_0002.nii.gz")]}, "xyz")
    >>> str(path), reason
    ('ts/a_0001.nii.gz', 'case a lacks channel 1 (y), file a_0001.nii.gz; expected one file per channel, a_0000.nii.gz to a_0002.nii.gz (x, y, z)')
    """  # noqa: E501
    present = [path for paths in channels.values() for path in paths]
    folder, extension = present[0].parent, image_extension(present[0]) or ""
    expected = len(names)
    missing = [c for c in range(expected) if c not in channels]
    extra = [c for c in channels if c >= expected]
    repeated = [c for c in channels if c < expected and len(channels[c]) > 1]
    if not (missing or extra or repeated):
        return None

    def file(c: int) -> str:
        return f"{case_id}_{c:04d}{extension}"

    parts = []
    if missing:
        what = ", ".join(f"{c} ({names[c]})" for c in missing)
        files = ", ".join(file(c) for c in missing)
        parts.append(f"lacks channel{'s' if len(missing) > 1 else ''} {what}, file{'s' if len(missing) > 1 else ''} "
                     f"{files}")  # fmt: skip
    for c in repeated:
        parts.append(f"has {len(channels[c])} files for channel {c} ({', '.join(p.name for p in channels[c])})")
    if extra:
        files = ", ".join(p.name for c in extra for p in channels[c])
        parts.append(f"has channel files beyond the {expected} expected ({files})")
    at_fault = folder / file(missing[0]) if missing else (channels[extra[0]] if extra else channels[repeated[0]])[0]
    reason = (
        f"case {case_id} {'; '.join(parts)}; expected one file per channel, {file(0)} to {file(expected - 1)} "
        f"({', '.join(names)})"
    )
    return at_fault, reason


# ------------------------------------------------------------------------------------------------ the dataset folder


def is_nnunet_dataset(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an nnU-Net v2 ``dataset.json`` (one with ``file_ending``, which v2 requires and
    neither the Medical Decathlon, nnU-Net v1 nor this project writes). Its content is checked by
    :func:`read_nnunet_dataset`."""
    try:
        content = json.loads((Path(folder) / NNUNET_JSON).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(content, dict) and "file_ending" in content


@dataclass(frozen=True)
class NnunetDataset:
    """An nnU-Net v2 ``dataset.json``, checked (:func:`read_nnunet_dataset`).

    Attributes:
        folder: the dataset folder (``DatasetNNN_Name/``).
        name: its ``name``, else the folder's name.
        channel_names: channel index (a string, ``"0"``...) -> name, in index order.
        file_ending: the file ending of every image and label (``".nii.gz"``).
        values: every label value the labels may hold, sorted (background 0, the ignore label included).
        names: label value -> name: nnU-Net's names; for a region-based dataset, whose entries name regions,
            ``label_<value>``; the ignore label is ``ignore``.
        regions: region name -> its label values, in nnU-Net's order (empty unless region-based).
        regions_class_order: the label value each region is written as when predictions are turned back into
            labels (region-based only).
        ignore_label: nnU-Net's ``ignore`` label value, or None.
        num_training: ``numTraining``, or None when absent.
        splits: ``splits_final.json`` beside ``dataset.json``, or None when there is none.
    """

    folder: Path
    name: str
    channel_names: dict[str, str]
    file_ending: str
    values: list[int]
    names: dict[int, str]
    regions: dict[str, list[int]]
    regions_class_order: list[int] | None
    ignore_label: int | None
    num_training: int | None
    splits: Path | None

    @property
    def path(self) -> Path:
        """The ``dataset.json``."""
        return self.folder / NNUNET_JSON

    @property
    def channels(self) -> list[str]:
        """The channel names in index order."""
        return list(self.channel_names.values())


def _label_value(path: Path, name: str, value: Any) -> list[int]:
    """The values of one ``labels`` entry (an int, or a list of ints for a region)."""
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
        raise InputError(path, f"labels[{name!r}] is {value!r}; expected a label value (an integer >= 0) or, for a "
                         "region, a list of them")  # fmt: skip
    return values


def _check_labels(path: Path, content: dict) -> tuple[list[int], dict[int, str], dict[str, list[int]], list | None]:
    """(values, value -> name, regions, regions_class_order) of an nnU-Net ``labels`` object, as nnU-Net's
    ``LabelManager`` reads it: region-based when any entry is a list of several values."""
    labels = content.get("labels")
    expected = 'expected nnU-Net v2\'s name -> value object with "background": 0 (docs/nnunet.md)'
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, f"labels is {labels!r}; {expected}")
    if "background" not in labels:
        if all(key.isdigit() for key in labels):
            raise InputError(path, "labels maps values to names (the Medical Decathlon's and nnU-Net v1's form); "
                             f"{expected}; nnUNetv2_convert_old_nnUNet_dataset converts a v1 dataset")  # fmt: skip
        raise InputError(path, f"labels has no 'background' entry; {expected}")
    if labels["background"] != 0 or isinstance(labels["background"], bool):
        raise InputError(path, f"labels['background'] is {labels['background']!r}; {expected}")
    entries = {name: _label_value(path, name, value) for name, value in labels.items()}
    ignore = labels.get(IGNORE)
    if ignore is not None and isinstance(ignore, list):
        raise InputError(path, f"labels['ignore'] is {ignore!r}; expected one label value (nnU-Net's ignore label)")
    has_regions = any(isinstance(value, list) and len(value) > 1 for value in labels.values())
    values = sorted({v for name, vs in entries.items() for v in vs})
    if values != list(range(len(values))):
        raise InputError(path, f"label values {values} are not consecutive; expected 0, 1, 2, ... as nnU-Net requires")
    if ignore is not None and ignore != max(values):
        raise InputError(path, f"the ignore label is {ignore}; expected the highest label value ({max(values)}), as "
                         "nnU-Net requires")  # fmt: skip
    regions: dict[str, list[int]] = {}
    order = None
    if has_regions:
        regions = {name: vs for name, vs in entries.items() if name not in ("background", IGNORE) and vs != [0]}
        order = content.get("regions_class_order")
        if (
            not isinstance(order, list)
            or len(order) != len(regions)
            or any(not isinstance(v, int) or isinstance(v, bool) for v in order)
        ):
            raise InputError(path, f"regions_class_order is {order!r}; expected a list of {len(regions)} label "
                             f"values, one per region ({', '.join(regions)}), for region-based training")  # fmt: skip
        names = {v: f"label_{v}" for v in values if v != 0}
    else:
        names = {vs[0]: name for name, vs in entries.items() if name != "background"}
        repeated = [name for name, vs in entries.items() if name != "background" and names[vs[0]] != name]
        if repeated or any(v == 0 for name, vs in entries.items() if name != "background" for v in vs):
            raise InputError(path, "labels gives one value several names; expected one name per label value")
    if ignore is not None:
        names[ignore] = IGNORE
    return values, {0: "background", **dict(sorted(names.items()))}, regions, order


def read_nnunet_dataset(folder: str | os.PathLike) -> NnunetDataset:
    """Read and check the ``dataset.json`` of an nnU-Net v2 raw dataset folder.

    Checked as nnU-Net checks it (``verify_dataset_integrity``, ``LabelManager``): ``channel_names`` (or the older
    ``modality``) maps ``"0"``, ``"1"``, ... to names; ``labels`` maps names to values with ``"background": 0``, the
    values consecutive, a list of values marking a region-based dataset, which then needs ``regions_class_order``
    (one value per region); ``file_ending`` is an image format this project reads. A ``splits_final.json`` beside it
    is noted (:func:`read_splits` reads it).

    Raises:
        InputError: naming ``dataset.json``: missing, not JSON, or any of the above broken; a ``dataset`` key (nnU-Net's
            explicit file lists), which is not supported: the files must lie in ``imagesTr``/``labelsTr``.
    """
    folder = Path(folder)
    path = folder / NNUNET_JSON
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "not found; expected the dataset.json of an nnU-Net v2 raw dataset") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise InputError(path, f"is a JSON {type(content).__name__}; expected an object (nnU-Net v2's dataset.json)")
    if "dataset" in content:
        raise InputError(path, "lists its files under 'dataset' (nnU-Net's explicit file lists); expected the "
                         "imagesTr/<case>_XXXX and labelsTr/<case> layout, which is all medseg3d reads")  # fmt: skip
    channels = content.get("channel_names", content.get("modality"))
    if (
        not isinstance(channels, dict)
        or not channels
        or sorted(channels, key=lambda k: (len(k), k)) != [str(i) for i in range(len(channels))]
        or any(not isinstance(n, str) or not n.strip() for n in channels.values())
    ):
        raise InputError(path, f"channel_names is {channels!r}; expected an object mapping each channel index "
                         '"0", "1", ... to its name')  # fmt: skip
    channel_names = {str(i): channels[str(i)] for i in range(len(channels))}
    ending = content.get("file_ending")
    if not isinstance(ending, str) or image_extension(f"x{ending}") != ending.lower():
        raise InputError(path, f"file_ending is {ending!r}; expected one of {', '.join(IMAGE_EXTENSIONS)} (the image "
                         "formats medseg3d reads)")  # fmt: skip
    values, names, regions, order = _check_labels(path, content)
    number = content.get("numTraining")
    num_training = number if isinstance(number, int) and not isinstance(number, bool) else None
    name = content.get("name") if isinstance(content.get("name"), str) and content["name"].strip() else folder.name
    splits = folder / SPLITS_FILE
    return NnunetDataset(
        folder=folder,
        name=name,
        channel_names=channel_names,
        file_ending=ending,
        values=values,
        names=names,
        regions=regions,
        regions_class_order=order,
        ignore_label=content["labels"].get(IGNORE),
        num_training=num_training,
        splits=splits if splits.is_file() else None,
    )


@dataclass(frozen=True)
class NnunetCase:
    """The files of one case of an nnU-Net dataset (nothing read yet).

    Attributes:
        case_id: the case as its file names spell it (``<case>`` of ``<case>_0000.nii.gz``).
        images: one file per channel, in channel order.
        label: ``labelsTr/<case><file_ending>``; None for ``imagesTs`` cases.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def find_nnunet_cases(dataset: NnunetDataset, part: str = "Tr") -> tuple[list[NnunetCase], list[tuple[Path, str]]]:
    """The cases of ``images<part>/`` (and ``labels<part>/`` for ``"Tr"``), each checked for one file per channel
    and a label.

    Args:
        dataset: the dataset (:func:`read_nnunet_dataset`).
        part: ``"Tr"`` (training cases, with labels) or ``"Ts"`` (test cases, images only).

    Returns:
        (the complete cases sorted by case, problems as (file at fault, reason)): a case lacking a channel file or
        its label, a file whose name is not ``<case>_XXXX<file_ending>`` (or ``<case><file_ending>`` in labelsTr), a
        label without images, a folder among the files. A case with a problem is not among the cases.
    """
    ending = dataset.file_ending
    images_dir, labels_dir = dataset.folder / f"images{part}", dataset.folder / f"labels{part}"
    problems: list[tuple[Path, str]] = []
    image_files = []
    for path in _visible(images_dir):
        if path.is_file() and path.name.endswith(ending) and _CHANNEL.match(path.name[: -len(ending)]):
            image_files.append(path)
        else:
            what = "a folder" if path.is_dir() else "not an nnU-Net image file name"
            problems.append((path, f"{what}; expected channel files <case>_XXXX{ending} in {images_dir.name}/ (XXXX "
                             f"the 4-digit channel index, {ending} the file_ending of dataset.json)"))  # fmt: skip
    groups = group_channel_files(image_files, (ending.lower(),))
    labels: dict[str, Path] = {}
    if part == "Tr":
        for path in _visible(labels_dir):
            if path.is_file() and path.name.endswith(ending):
                labels[path.name[: -len(ending)]] = path
            else:
                what = "a folder" if path.is_dir() else "not a label file name"
                problems.append((path, f"{what}; expected <case>{ending} in {labels_dir.name}/"))
    cases = []
    for case_id, channels in groups.items():
        problem = channel_problem(case_id, channels, dataset.channels)
        if problem is not None:
            problems.append(problem)
            continue
        images = tuple(paths[0] for paths in channels.values())
        if part == "Tr" and case_id not in labels:
            problems.append((images[0], f"no label for case {case_id}; expected {labels_dir.name}/{case_id}{ending}"))
            continue
        cases.append(NnunetCase(case_id, images, labels.get(case_id)))
    for case_id in sorted(set(labels) - set(groups)):
        problems.append((labels[case_id], f"no image for this label; expected {images_dir.name}/{case_id}_0000{ending}"
                         + (f" to {case_id}_{len(dataset.channels) - 1:04d}{ending}" if len(dataset.channels) > 1
                            else "")))  # fmt: skip
    return cases, problems


def read_splits(path: str | os.PathLike) -> list[list[str]]:
    """The validation cases of each fold of nnU-Net's ``splits_final.json`` (a list, per fold, of ``{"train": [...],
    "val": [...]}``): fold k validates ``val`` of entry k and trains on the others, as nnU-Net's trainer does.

    Raises:
        InputError: naming the file: not JSON, not a non-empty list of objects each with a ``val`` list of case
            names, or a case in the ``val`` lists of two folds.
    """
    path = Path(path)
    expected = 'expected a list with one {"train": [...], "val": [...]} object per fold, as nnU-Net writes it'
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read as JSON ({exc}); {expected}") from None
    if not isinstance(content, list) or not content:
        raise InputError(path, f"is {type(content).__name__ if content else 'empty'}; {expected}")
    folds: list[list[str]] = []
    seen: dict[str, int] = {}
    for k, fold in enumerate(content):
        val = fold.get("val") if isinstance(fold, dict) else None
        if not isinstance(val, list) or any(not isinstance(case, str) or not case for case in val):
            raise InputError(path, f"fold {k} has no list of case names under 'val'; {expected}")
        for case in val:
            first = seen.setdefault(case, k)
            if first != k:
                raise InputError(path, f"case {case} is in the val list of fold {first} and of fold {k}; expected each "
                                 "case validated by one fold")  # fmt: skip
        folds.append(list(val))
    return folds


# ------------------------------------------------------------------------------------------------------------ export


@dataclass
class ExportResult:
    """What :func:`export_nnunet` wrote.

    Attributes:
        folder: ``OUT/DatasetNNN_Name``.
        training: the training cases (``imagesTr``/``labelsTr``), sorted.
        test: the test cases (``imagesTs``), sorted.
        folds: the validation cases of each fold (``splits_final.json``'s ``val`` lists).
        output_mode: ``regions`` or ``labels``: what the ``labels`` of its ``dataset.json`` make nnU-Net train.
    """

    folder: Path
    training: list[str]
    test: list[str]
    folds: list[list[str]]
    output_mode: str

    def summary(self) -> str:
        """One line: where, how many cases and folds, and what nnU-Net will train."""
        target = "regions WT, TC, ET" if self.output_mode == "regions" else "labels NCR, ED, ET"
        return (
            f"{self.folder}: {len(self.training)} training cases in {len(self.folds)} folds (splits_final.json), "
            f"{len(self.test)} test cases; nnU-Net trains the {target}"
        )


def _regions_class_order(regions: Mapping[str, Sequence[int]]) -> list[int]:
    """For nested regions (each holding the next), the label value that region i is written as when nnU-Net turns
    predicted regions into labels (it writes them in order, each over the last): the value in region i and not in
    region i + 1. The inverse of the project's ``regions_to_labels``: WT, TC, ET -> ED 2, NCR 1, ET 3.

    >>> _regions_class_order({"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)})
    [2, 1, 3]
    """
    sets = [set(values) for values in regions.values()]
    order = []
    for i, region in enumerate(sets):
        own = region - (sets[i + 1] if i + 1 < len(sets) else set())
        if len(own) != 1 or (i + 1 < len(sets) and not sets[i + 1] <= region):
            raise ValueError(f"regions {dict(regions)} are not nested with one label value each between them")
        order.append(own.pop())
    return order


def nnunet_labels(output_mode: str) -> dict[str, Any]:
    """The ``labels`` (and ``regions_class_order``) of an exported BraTS dataset.

    ``regions``: nnU-Net's region-based form for BraTS, the project's regions WT, TC, ET of the prepared labels (1
    NCR, 2 ED, 3 ET) with sigmoid outputs, as the BraTS bundles train by default (``output_mode: regions``); nnU-Net
    writes its predictions back as the prepared labels through ``regions_class_order`` [2, 1, 3]. ``labels``: the
    four labels with a softmax (the bundles' ``output_mode: labels``).

    >>> nnunet_labels("regions")
    {'labels': {'background': 0, 'WT': [1, 2, 3], 'TC': [1, 3], 'ET': [3]}, 'regions_class_order': [2, 1, 3]}
    >>> nnunet_labels("labels")
    {'labels': {'background': 0, 'NCR': 1, 'ED': 2, 'ET': 3}}
    """
    if output_mode == "labels":
        return {"labels": dict(PREPARED_LABELS)}
    if output_mode == "regions":
        regions = {name: list(values) for name, values in REGIONS.items()}
        return {"labels": {"background": 0, **regions}, "regions_class_order": _regions_class_order(REGIONS)}
    raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")


def _copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically; a file whose extension differs from the target's is re-encoded
    (``.nii`` -> ``.nii.gz``) with its header and voxels unchanged."""
    with atomic_path(target) as tmp:
        if image_extension(source) == image_extension(target):
            shutil.copyfile(source, tmp)
        else:
            image = nib.load(source)
            nib.save(type(image)(np.asarray(image.dataobj), None, header=image.header), tmp)


def _write_channel(image: ImageData, channel: int, target: Path) -> None:
    """Channel ``channel`` of a multi-channel NIfTI image as a 3D NIfTI file with the source's header (affine,
    sform/qform matrices and codes, units) and voxel type."""
    voxels = np.asarray(image.array[channel])
    header = image.header.copy()
    header.set_data_shape(voxels.shape)
    header.set_data_dtype(voxels.dtype)
    header.set_slope_inter(1.0, 0.0)  # the voxels are read scaled
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    with atomic_path(target) as tmp:
        nib.save(image_class(voxels, None, header=header), tmp)


def _export_images(prepared: Path, entry: Mapping[str, Any], images_dir: Path, channels: int) -> None:
    """Write the channels of one prepared case as ``images_dir/<case>_XXXX.nii.gz``."""
    case_id, listed = entry["case_id"], entry["image"]
    targets = [images_dir / f"{case_id}_{c:04d}{EXPORT_FILE_ENDING}" for c in range(channels)]
    if isinstance(listed, list):  # already one file per channel (a listed nnU-Net dataset): copied
        if len(listed) != channels:
            raise InputError(prepared / listed[0], f"case {case_id} lists {len(listed)} channel files; expected "
                             f"{channels} ({', '.join(MODALITIES)})")  # fmt: skip
        for source, target in zip(listed, targets, strict=True):
            _copy_file(prepared / source, target)
        return
    path = prepared / listed
    if image_extension(path) not in (".nii.gz", ".nii"):
        raise InputError(path, f"the image of case {case_id} is not NIfTI; expected the {channels}-channel NIfTI file "
                         "prep_brats writes")  # fmt: skip
    image = read_image(path, channels=channels, dtype=None)
    for c, target in enumerate(targets):
        _write_channel(image, c, target)


def _fold_lists(content: Mapping[str, Any], path: Path) -> list[list[str]]:
    """The validation cases of folds 0..K-1 of a prepared ``dataset.json``; every fold must hold a case, since
    nnU-Net addresses fold k as the k-th entry of ``splits_final.json``."""
    folds: dict[int, list[str]] = {}
    for entry in content["training"]:
        folds.setdefault(entry["fold"], []).append(entry["case_id"])
    empty = [k for k in range(max(folds) + 1) if k not in folds]
    if empty:
        raise InputError(path, f"no case is in fold {', '.join(map(str, empty))} (folds present: {sorted(folds)}); "
                         "expected folds 0 to K-1, each with a case, as splits_final.json needs")  # fmt: skip
    return [sorted(folds[k]) for k in range(len(folds))]


def _check_target(out: Path, folder: Path, dataset_id: int, overwrite: bool) -> None:
    """Refuse an existing target (unless ``overwrite``) and another dataset with the same ID in ``out``."""
    if folder.exists() and not overwrite:
        raise InputError(folder, "exists; expected a new folder (give --overwrite to replace it)")
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder; expected the dataset folder or nothing")
    for other in _visible(out):
        match = _DATASET_FOLDER.match(other.name)
        if match and int(match["id"]) == dataset_id and other.name != folder.name:
            raise InputError(other, f"already uses dataset ID {dataset_id}; expected one dataset per ID in {out} "
                             "(nnU-Net finds datasets by ID): choose another --id")  # fmt: skip


def _replace_folder(building: Path, folder: Path) -> None:
    """Rename the complete ``building`` onto ``folder``; an existing ``folder`` is moved aside first and deleted only
    once the new one is in place (put back if the rename fails)."""
    if not folder.exists():
        os.replace(building, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    try:
        os.replace(building, folder)
    except BaseException:
        os.replace(aside / folder.name, folder)  # if this fails too, the old dataset stays in the hidden folder
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_nnunet(
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    dataset_id: int,
    name: str = "BraTSPrepared",
    output_mode: str = "regions",
    overwrite: bool = False,
) -> ExportResult:
    """Write a prepared BraTS dataset as the nnU-Net v2 raw dataset ``out/Dataset<ID>_<name>/``.

    - ``imagesTr/<case>_0000.nii.gz`` to ``_0003``: channel t1, t1ce, t2, flair of each training case's prepared
      4-channel image (z-scored, zero-padded), one 3D file each with the source's header, so the geometry is
      identical; ``imagesTs/`` the same for the ``test`` cases.
    - ``labelsTr/<case>.nii.gz``: the prepared labels (0 background, 1 NCR, 2 ED, 3 ET), copied unchanged.
    - ``dataset.json``: ``channel_names`` from ``MODALITIES``, ``labels`` as :func:`nnunet_labels` gives them for
      ``output_mode``, ``numTraining``, ``file_ending``, and the prepared dataset's records under ``medseg3d``.
    - ``splits_final.json``: per fold k, its cases as ``val`` and the others as ``train``, so that nnU-Net trains
      and validates the same folds as the bundles.

    The dataset is built in a hidden folder beside its final place and renamed into place when complete, every file
    written atomically, so an interrupted export leaves nothing under ``Dataset<ID>_<name>``; with ``overwrite``, an
    existing folder is replaced only then.

    Args:
        prepared: the prepared dataset folder (``prep_brats OUT``, holding ``dataset.json``).
        out: the folder to write into (nnU-Net's ``nnUNet_raw``).
        dataset_id: nnU-Net's dataset ID, 1 to 999.
        name: the dataset name: letters, digits, ``_`` and ``-``.
        output_mode: ``regions`` (nnU-Net's region-based BraTS training, as the bundles) or ``labels``.
        overwrite: replace an existing ``Dataset<ID>_<name>``.

    Raises:
        InputError: a bad ``dataset.json`` (read by ``medseg3d.data.dataset_json``), an image that is not a 4-channel
            NIfTI file, a fold without a case, an existing target without ``overwrite``, another dataset with the
            same ID in ``out``, an ``out`` that cannot be written. Nothing is left under the final name.
        ValueError: an ID outside 1..999, a name with other characters, an unknown ``output_mode``.
    """
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset ID must be 1 to 999 (nnU-Net's DatasetNNN), got {dataset_id}")
    if not _DATASET_NAME.match(name):
        raise ValueError(f"dataset name {name!r}: expected letters, digits, '_' and '-' only")
    labels = nnunet_labels(output_mode)
    prepared, out = Path(prepared), Path(out)
    content = read_dataset_json(prepared)
    source = dataset_json_path(prepared)
    folds = _fold_lists(content, source)
    channels = len(MODALITIES)
    check_output_folder(out)
    folder = out / f"Dataset{dataset_id:03d}_{name}"
    _check_target(out, folder, dataset_id, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=out))
    try:
        training = sorted(content["training"], key=lambda e: e["case_id"])
        test = sorted(content.get("test", []), key=lambda e: e["case_id"])
        for entry in training:
            _export_images(prepared, entry, building / "imagesTr", channels)
            _copy_file(prepared / entry["label"], building / "labelsTr" / f"{entry['case_id']}{EXPORT_FILE_ENDING}")
        for entry in test:
            _export_images(prepared, entry, building / "imagesTs", channels)
        cases = [entry["case_id"] for entry in training]
        splits = [{"train": [c for c in cases if c not in set(val)], "val": val} for val in folds]
        description = (
            f"The prepared BraTS dataset {content.get('name', prepared.name)} (z-scored over the brain, zero-padded to "
            f"a multiple of 16, labels 1 NCR, 2 ED, 3 ET) written by {EXPORTER}; splits_final.json holds its folds"
        )
        write_json(
            {
                "name": name,
                "description": description,
                "channel_names": {str(c): modality for c, modality in enumerate(MODALITIES)},
                **labels,
                "numTraining": len(training),
                "numTest": len(test),
                "file_ending": EXPORT_FILE_ENDING,
                "converted_by": EXPORTER,
                "medseg3d": {
                    "prepared": str(prepared.resolve()),
                    "output_mode": output_mode,
                    **{key: content[key] for key in _KEPT_RECORDS if key in content},
                },
            },
            building / NNUNET_JSON,
        )
        write_json(splits, building / SPLITS_FILE)
        _replace_folder(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return ExportResult(folder, cases, [e["case_id"] for e in test], folds, output_mode)
