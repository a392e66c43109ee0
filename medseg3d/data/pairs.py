"""Training datalists from a folder of image/label pairs: what ``medseg3d datalist ROOT`` writes.

:func:`build_datalist` finds the pairs under ROOT in two layouts, checks every pair (both readable, the label on the
image's voxel grid, label values non-negative integers), assigns cross-validation folds with
:func:`medseg3d.data.folds.assign_folds` and writes ``OUT/dataset.json`` (default OUT = ROOT) atomically, in the
format that :func:`medseg3d.data.dataset_json.fold_datalists` reads. A pair that fails a check is reported (the file
at fault and what was expected) and left out; the others are still listed.

Layouts (``docs/data.md``, "Image/label pairs"):

1. Decathlon / nnU-Net: ``imagesTr/<id>.<ext>`` (nnU-Net's channel suffix ``<id>_0000.<ext>`` maps to ``<id>``) or
   a DICOM series folder ``imagesTr/<id>/``, with ``labelsTr/<id>.<ext>``; such a pair of folders may lie anywhere
   under ROOT.
2. Suffix pairs anywhere under ROOT: ``<id>_ct.<ext>`` or a DICOM series folder ``<id>_ct/`` with
   ``<id>_seg.<ext>`` (``-ct``/``-seg`` too, any case); a bare ``ct.<ext>``/``seg.<ext>`` takes its folder's name.
3. An nnU-Net v2 raw dataset: ROOT holds nnU-Net's ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
   ``imagesTr/<id>_<XXXX><file_ending>`` (one file per channel), ``labelsTr/<id><file_ending>``, optional
   ``imagesTs/`` (listed as ``test`` cases) and ``splits_final.json`` (its folds are kept). A case of several channels
   lists its channel files as ``image`` (``docs/nnunet.md``); the layout is read by ``medseg3d.data.nnunet``.

``<ext>`` is ``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.

Per-case classes (``--classes CSV``, :func:`read_class_csv`): a CSV ``case_id,<field>[,<field2>...]`` whose columns
become per-case columns of every training entry (a string, or null where the case has no row or an empty cell), so
that a bundle can learn one with ``--classify <field>`` (``docs/multitask.md``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg3d.core.constants import IMAGE_EXTENSIONS, REGIONS
from medseg3d.core.errors import InputError, check_output_folder
from medseg3d.data.brats import safe_case_id
from medseg3d.data.dataset_json import (
    assign_entry_folds,
    dataset_json_path,
    relative_path,
    write_dataset_json,
    written_by,
)
from medseg3d.data.nnunet import (
    SPLITS_FILE,
    NnunetDataset,
    find_nnunet_cases,
    is_nnunet_dataset,
    read_nnunet_dataset,
    read_splits,
)
from medseg3d.data.reader import ImageInfo, check_same_grid, image_extension, label_values, read_info, read_label

logger = logging.getLogger(__name__)

GENERATOR = "medseg3d datalist"  # dataset.json's "generator"
DEFAULT_FOLDS = 5
_SUFFIX = re.compile(r"^(?:(?P<id>.+?)[_-])?(?P<role>ct|seg)$", re.IGNORECASE)
_CHANNEL = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")
_EXTENSIONS_TEXT = "/".join(IMAGE_EXTENSIONS)
CASE_ID_COLUMN = "case_id"
# Keys of a training entry that a --classes column must not replace (the schema's required keys).
RESERVED_COLUMNS = ("case_id", "image", "label", "fold")


@dataclass(frozen=True)
class Rejection:
    """A file that is not listed, and why.

    Attributes:
        path: the file (or DICOM series folder) at fault, as found under ROOT.
        reason: what is wrong and what was expected.
    """

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class DatalistResult:
    """What :func:`build_datalist` wrote.

    Attributes:
        path: the ``dataset.json`` written.
        entries: its ``training`` entries (``image``, ``label`` relative to the file's folder, ``case_id``, ``fold``),
            sorted by case ID.
        rejected: the pairs left out (also in the file's ``rejected`` list, with paths relative to its folder).
        labels: label value (as a string) -> name, background ``"0"`` first.
        folds: the number of folds.
        warnings: things that do not stop the listing but may surprise training (non-consecutive label values,
            ``classes`` rows that match no listed case, listed cases without a row).
        class_fields: the per-case columns taken from the ``classes`` CSV, in its column order (empty without one).
        test: the ``test`` entries (an nnU-Net dataset's ``imagesTs`` cases: ``case_id``, ``image``).
        splits: the ``splits_final.json`` whose folds the entries keep, or None (folds dealt by ``assign_folds``).
    """

    path: Path
    entries: list[dict[str, Any]]
    rejected: list[Rejection]
    labels: dict[str, str]
    folds: int
    warnings: list[str] = field(default_factory=list)
    class_fields: list[str] = field(default_factory=list)
    test: list[dict[str, Any]] = field(default_factory=list)
    splits: Path | None = None

    def summary(self) -> str:
        """One line: cases, folds, label values, rejected count (and the class columns with how many cases know
        each)."""
        values = ", ".join(self.labels)
        folds = f"{self.folds} folds" + (f" ({self.splits.name})" if self.splits is not None else "")
        tests = f", {len(self.test)} test cases" if self.test else ""
        line = (
            f"{self.path}: {len(self.entries)} cases in {folds}{tests}, label values {values}, "
            f"{len(self.rejected)} rejected"
        )
        for name in self.class_fields:
            known = sum(entry.get(name) is not None for entry in self.entries)
            line += f"; class column {name}: {known} of {len(self.entries)} cases known"
        return line


class DatalistError(InputError):
    """Nothing can be listed (no usable pair, too few cases for the folds, ``--labels`` not matching the values).

    Attributes:
        rejected: the pairs rejected before the error, so that a caller can still report them.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, rejected: Sequence[Rejection] = ()) -> None:
        super().__init__(path, problem)
        self.rejected = list(rejected)


@dataclass(frozen=True)
class Pair:
    """An image and its label as found on disk (nothing read yet).

    Attributes:
        case_id: unique under ROOT (compared case-insensitively), a plain file name.
        image: the image file or DICOM series folder (channel 0 of a case of several channel files).
        label: the label file (None for an nnU-Net ``imagesTs`` case).
        modality: ``"CT"`` for ``<id>_ct`` images, else None (a DICOM series' Modality tag is read later).
        images: every channel file in channel order, for a case of several (nnU-Net); empty for one image.
    """

    case_id: str
    image: Path  # a file or a DICOM series folder
    label: Path | None
    modality: str | None  # "CT" for <id>_ct; a DICOM series' Modality tag replaces it
    images: tuple[Path, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """The image files: every channel, or the one image."""
        return self.images or (self.image,)


# ---------------------------------------------------------------------------------------------------------- discovery


def _stem(path: Path) -> str | None:
    """The file name without its image extension, or None for a file that is no image.

    >>> _stem(Path("a/ct_000_0000.nii.gz")), _stem(Path("b.MHA")), _stem(Path("notes.txt"))
    ('ct_000_0000', 'b', None)
    """
    extension = image_extension(path)
    return path.name[: -len(extension)] if extension else None


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(p.name for p in paths)


def _decathlon(images_dir: Path | None, labels_dir: Path | None, parent: Path) -> tuple[list[Pair], list[Rejection]]:
    """Pairs of one imagesTr/labelsTr couple (either may be missing)."""
    pairs: list[Pair] = []
    rejected: list[Rejection] = []
    labels: dict[str, list[Path]] = {}
    if labels_dir is not None:
        for path in _visible(labels_dir):
            stem = _stem(path)
            if stem is not None and path.is_file():
                labels.setdefault(stem, []).append(path)
    images: dict[str, list[tuple[Path, str | None]]] = {}
    if images_dir is not None:
        for path in _visible(images_dir):
            stem = path.name if path.is_dir() else _stem(path)
            if stem is None:
                continue
            channel = None
            match = _CHANNEL.match(stem)
            if stem not in labels and match:  # nnU-Net: <id>_0000 is channel 0 of case <id>
                stem, channel = match["id"], match["channel"]
            images.setdefault(stem, []).append((path, channel))
    labels_name = labels_dir.name if labels_dir is not None else "labelsTr"
    images_name = images_dir.name if images_dir is not None else "imagesTr"
    for stem in sorted(images):
        found = images[stem]
        paths = [p for p, _ in found]
        if len(found) > 1:
            if all(channel is not None for _, channel in found):
                reason = (
                    f"case {stem} has {len(found)} channel files ({_names(paths)}); expected one image per case, "
                    "or give the nnU-Net dataset folder, whose dataset.json names the channels, as ROOT "
                    "(docs/nnunet.md)"
                )
            else:
                reason = f"several images for case {stem} ({_names(paths)}); expected one file or DICOM folder"
            rejected.append(Rejection(paths[0], reason))
            continue
        if stem not in labels:
            where = f"{labels_name}/{stem}.nii.gz (or {_EXTENSIONS_TEXT})"
            rejected.append(Rejection(paths[0], f"no label for this image; expected {where} in {parent}"))
            continue
        if len(labels[stem]) > 1:
            reason = f"several labels for case {stem} ({_names(labels[stem])}); expected one"
            rejected.append(Rejection(labels[stem][0], reason))
            continue
        pairs.append(Pair(safe_case_id(stem), paths[0], labels[stem][0], None))
    for stem in sorted(set(labels) - set(images)):
        where = f"{images_name}/{stem}.nii.gz (or {stem}_0000.nii.gz, or a DICOM series folder {images_name}/{stem}/)"
        rejected.append(Rejection(labels[stem][0], f"no image for this label; expected {where}"))
    return pairs, rejected


def _suffix_pairs(found: dict[str, dict[str, list[Path]]]) -> tuple[list[Pair], list[Rejection]]:
    """Pairs of the ``<id>_ct``/``<id>_seg`` files collected over the tree, matched by id."""
    pairs: list[Pair] = []
    rejected: list[Rejection] = []
    for case in sorted(found):
        images, labels = found[case].get("ct", []), found[case].get("seg", [])
        if len(images) > 1:
            reason = f"several images for case {case} ({', '.join(map(str, images))}); expected one"
            rejected.append(Rejection(images[0], reason))
        elif len(labels) > 1:
            reason = f"several labels for case {case} ({', '.join(map(str, labels))}); expected one"
            rejected.append(Rejection(labels[0], reason))
        elif not labels:
            reason = f"no label for this image; expected {case}_seg.nii.gz (or {_EXTENSIONS_TEXT}) under the root"
            rejected.append(Rejection(images[0], reason))
        elif not images:
            reason = f"no image for this label; expected {case}_ct.nii.gz (or a DICOM series folder {case}_ct/)"
            rejected.append(Rejection(labels[0], reason))
        else:
            pairs.append(Pair(safe_case_id(case), images[0], labels[0], "CT"))
    return pairs, rejected


def find_pairs(root: str | os.PathLike) -> tuple[list[Pair], list[Rejection]]:
    """Image/label pairs under ``root`` (both layouts, hidden entries skipped), nothing read yet.

    Returns:
        (pairs sorted by case ID, rejections: images without label, labels without image, ambiguous or repeated
        cases).

    Raises:
        InputError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder; expected a folder of image/label pairs (imagesTr/ + labelsTr/, or "
                         "<id>_ct + <id>_seg files)")  # fmt: skip
    pairs: list[Pair] = []
    rejected: list[Rejection] = []
    suffixed: dict[str, dict[str, list[Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        by_lower = {d.lower(): d for d in dirnames}
        images_dir, labels_dir = by_lower.get("imagestr"), by_lower.get("labelstr")
        if images_dir or labels_dir:
            found = _decathlon(
                folder / images_dir if images_dir else None, folder / labels_dir if labels_dir else None, folder
            )
            pairs += found[0]
            rejected += found[1]
        for name in list(dirnames):
            match = _SUFFIX.match(name)
            if name in (images_dir, labels_dir) or (match and match["role"].lower() == "ct"):
                dirnames.remove(name)  # read above, or a DICOM series folder: not searched further
            if match and match["role"].lower() == "ct":
                suffixed.setdefault(match["id"] or folder.name, {}).setdefault("ct", []).append(folder / name)
        for name in sorted(filenames):
            path = folder / name
            stem = None if name.startswith(".") else _stem(path)
            match = _SUFFIX.match(stem) if stem else None
            if match:
                suffixed.setdefault(match["id"] or folder.name, {}).setdefault(match["role"].lower(), []).append(path)
    found = _suffix_pairs(suffixed)
    pairs += found[0]
    rejected += found[1]
    # One case ID per case (compared as macOS and Windows compare file names): a copy would leak between folds.
    kept: dict[str, Pair] = {}
    for pair in sorted(pairs, key=lambda p: (p.case_id, str(p.image))):
        first = kept.setdefault(pair.case_id.casefold(), pair)
        if first is not pair:
            reason = f"case ID {pair.case_id} is also the case of {first.image}; expected unique case IDs (rename one)"
            rejected.append(Rejection(pair.image, reason))
    return sorted(kept.values(), key=lambda p: p.case_id), rejected


# ----------------------------------------------------------------------------------------------------------- checking


def _check_images(files: Sequence[Path]) -> ImageInfo:
    """The grid of a case's image (its first channel), every channel file sound and on that grid; ``InputError``
    naming the file at fault otherwise.

    Through ``medseg3d.data.reader``: of a NIfTI image only the header and a cheap truncation check, NRRD/MHA images
    and DICOM series in full (a series' slice positions checked).
    """
    first = read_info(files[0], verify_data=True)
    for path in files[1:]:
        info = read_info(path, verify_data=True)
        check_same_grid(path, info.grid, files[0], first.grid,
                        expected="expected every channel of a case on one voxel grid")  # fmt: skip
    return first


def _check_pair(pair: Pair, declared: NnunetDataset | None = None) -> tuple[list[int], str | None]:
    """(label values, modality) of a sound pair; ``InputError`` naming the file at fault otherwise.

    The image as :func:`_check_images` checks it; the label read in full (its values are needed), on the image's
    grid, its values non-negative integers, and with ``declared`` (an nnU-Net dataset) among the values its
    ``dataset.json`` declares.
    """
    image = _check_images(pair.files)
    label = read_label(pair.label)
    check_same_grid(pair.label, label.grid, pair.image, image.grid, relation="not on the grid of its image",
                    expected="expected the label on the image's voxel grid (same size, spacing, origin and "
                    "direction)")  # fmt: skip
    values = label_values(label.array, pair.label)
    unexpected = [v for v in values if declared is not None and v not in declared.values]
    if unexpected:
        raise InputError(pair.label, f"unexpected label values {', '.join(map(str, unexpected))}; expected only "
                         f"{', '.join(map(str, declared.values))} (the labels of {declared.path})")  # fmt: skip
    return values, image.modality or pair.modality


# ------------------------------------------------------------------------------------------------------ nnU-Net v2


def _nnunet_pairs(dataset: NnunetDataset) -> tuple[list[Pair], list[Pair], list[Rejection]]:
    """(training pairs, test cases (``imagesTs``, ``label`` None), rejections) of an nnU-Net dataset, nothing read:
    each case's channel files grouped (``medseg3d.data.nnunet.find_nnunet_cases``), case IDs made plain file names
    and unique ignoring case over both lists (the later by path is rejected, as in :func:`find_pairs`)."""
    pairs: list[Pair] = []
    rejected: list[Rejection] = []
    kept: dict[str, Pair] = {}
    for part in ("Tr", "Ts"):
        cases, problems = find_nnunet_cases(dataset, part)
        rejected += [Rejection(path, reason) for path, reason in problems]
        for case in cases:
            pair = Pair(safe_case_id(case.case_id), case.images[0], case.label, None,
                        case.images if len(case.images) > 1 else ())  # fmt: skip
            first = kept.setdefault(pair.case_id.casefold(), pair)
            if first is not pair:
                reason = f"case ID {pair.case_id} is also the case of {first.image}; expected unique case IDs"
                rejected.append(Rejection(pair.image, reason))
            else:
                pairs.append(pair)
    return [p for p in pairs if p.label is not None], [p for p in pairs if p.label is None], rejected


def _image_field(pair: Pair, out: Path) -> str | list[str]:
    """A case's ``image`` in ``dataset.json``: the file, or its channel files in channel order."""
    if pair.images:
        return [relative_path(path, out) for path in pair.images]
    return relative_path(pair.image, out)


def _splits_folds(
    dataset: NnunetDataset, folds: int | None, listed: list[tuple[Pair, str | None]], rejected: list[Rejection]
) -> tuple[dict[str, int], int, list[str]]:
    """(case ID -> fold from ``splits_final.json``, the number of folds, warnings); listed cases in no ``val`` list
    are moved to ``rejected``."""
    path = dataset.splits
    val_lists = read_splits(path)
    if folds is not None and folds != len(val_lists):
        raise DatalistError(path, f"holds {len(val_lists)} folds but --folds {folds} was given; expected no --folds "
                            f"(the folds of {SPLITS_FILE} are kept) or --folds {len(val_lists)}", rejected)  # fmt: skip
    fold_of = {safe_case_id(case): k for k, val in enumerate(val_lists) for case in val}
    for pair, modality in list(listed):
        if pair.case_id not in fold_of:
            listed.remove((pair, modality))
            reason = (f"case {pair.case_id} is in no fold's val list of {path}; expected every case validated by "
                      f"one fold (or remove {SPLITS_FILE} to have folds dealt)")  # fmt: skip
            rejected.append(Rejection(pair.image, reason))
    warnings = []
    known = {pair.case_id for pair, _ in listed}
    unlisted = sorted(set(fold_of) - known)
    if unlisted:
        warnings.append(f"{path}: {len(unlisted)} cases of its val lists are not listed (not found or rejected): "
                        f"{', '.join(unlisted)}")  # fmt: skip
    for k in range(len(val_lists)):
        if not any(fold_of[case] == k for case in known):
            warnings.append(f"{path}: fold {k} has no listed case; training fold {k} will fail")
    return fold_of, len(val_lists), warnings


def _nnunet_warnings(dataset: NnunetDataset, found: int) -> list[str]:
    """What an nnU-Net dataset holds that training here takes differently, or that nnU-Net would refuse."""
    warnings = []
    if dataset.num_training is not None and dataset.num_training != found:
        warnings.append(f"{dataset.path}: numTraining is {dataset.num_training}, but imagesTr/labelsTr hold {found} "
                        "cases with every channel and a label (nnU-Net refuses such a dataset)")  # fmt: skip
    if dataset.ignore_label is not None:
        warnings.append(f"label {dataset.ignore_label} is nnU-Net's ignore label: the bundles train it as a class of "
                        "its own")  # fmt: skip
    regions = {name: tuple(values) for name, values in dataset.regions.items()}
    if regions and sorted(map(sorted, regions.values())) != sorted(map(sorted, REGIONS.values())):
        ours = ", ".join(f"{name} {set(values)}" for name, values in REGIONS.items())
        theirs = ", ".join(f"{name} {set(values)}" for name, values in regions.items())
        warnings.append(f"regions {theirs} are not the BraTS bundles' regions {ours} of the prepared labels (1 NCR, "
                        "2 ED, 3 ET); nnU-Net's BraTS conversion numbers the labels 1 ED, 2 NCR, 3 ET: remap the "
                        "labels before training a BraTS bundle with output_mode regions")  # fmt: skip
    return warnings


# ------------------------------------------------------------------------------------------------------------ classes


@dataclass
class CaseTable:
    """A per-case CSV (:func:`read_class_csv`).

    Attributes:
        path: the CSV file.
        columns: the columns besides ``case_id``, in file order.
        rows: case ID (as written) -> column -> value (whitespace stripped; None for an empty cell).
    """

    path: Path
    columns: list[str]
    rows: dict[str, dict[str, str | None]]
    _folded: dict[str, dict[str, str | None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._folded = {case_id.casefold(): row for case_id, row in self.rows.items()}

    def lookup(self, case_id: str) -> dict[str, str | None] | None:
        """The row of ``case_id``, compared ignoring case (as case IDs are unique); None when it has none."""
        return self._folded.get(case_id.casefold())


def read_class_csv(path: str | os.PathLike, reserved: Sequence[str] = ()) -> CaseTable:
    """Read a per-case CSV: a header row ``case_id,<column>[,<column>...]``, then one row per case.

    Read as UTF-8 (a spreadsheet's byte-order mark is skipped); names and cells are stripped of surrounding
    whitespace; blank lines are skipped. Used by ``medseg3d datalist --classes`` (the columns become per-case
    columns of ``dataset.json``) and ``medseg3d evaluate --classes`` (the true class of each case).

    Args:
        path: the CSV file.
        reserved: column names that are refused (``RESERVED_COLUMNS`` for a datalist: they would replace the
            entry's own keys).

    Raises:
        InputError: naming ``path``: unreadable or not UTF-8 text, no header, no ``case_id`` column, no other
            column, an empty, repeated or reserved column name, a row whose cell count differs from the header's,
            an empty or repeated case ID (compared ignoring case).
    """
    path = Path(path)
    expected = "expected a CSV with a header row case_id,<column>[,<column>...] and one row per case"
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start}); {expected}") from None
    except csv.Error as exc:
        raise InputError(path, f"cannot be parsed as CSV ({exc}); {expected}") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc}); {expected}") from None
    numbered = [(number, [cell.strip() for cell in line]) for number, line in enumerate(lines, 1)]
    numbered = [(number, cells) for number, cells in numbered if any(cells)]
    if not numbered:
        raise InputError(path, f"is empty; {expected}")
    header_line, header = numbered[0]
    if CASE_ID_COLUMN not in header:
        raise InputError(path, f"line {header_line} has no {CASE_ID_COLUMN} column (columns: {', '.join(header)}); "
                         f"{expected}")  # fmt: skip
    if any(not name for name in header):
        raise InputError(path, f"line {header_line}: column {header.index('') + 1} has no name; {expected}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputError(path, f"column {', '.join(repeated)} appears more than once; expected distinct names")
    columns = [name for name in header if name != CASE_ID_COLUMN]
    clash = [name for name in columns if name in reserved]
    if clash:
        raise InputError(path, f"column {', '.join(clash)} is a key every dataset.json case already has "
                         f"({', '.join(reserved)}); expected other names for the per-case columns")  # fmt: skip
    if not columns:
        raise InputError(path, f"holds only the {CASE_ID_COLUMN} column; {expected}")
    rows: dict[str, dict[str, str | None]] = {}
    first_line: dict[str, tuple[int, str]] = {}
    for number, cells in numbered[1:]:
        if len(cells) != len(header):
            raise InputError(path, f"line {number} has {len(cells)} cells; expected {len(header)}, one per column of "
                             f"the header ({','.join(header)})")  # fmt: skip
        row = dict(zip(header, cells, strict=True))
        case_id = row.pop(CASE_ID_COLUMN)
        if not case_id:
            raise InputError(path, f"line {number} has an empty {CASE_ID_COLUMN}; expected the case ID in every row")
        seen = first_line.setdefault(case_id.casefold(), (number, case_id))
        if seen[0] != number:
            raise InputError(path, f"line {number}: case {case_id} is also on line {seen[0]} ({seen[1]}); expected "
                             "one row per case (case IDs compared ignoring case)")  # fmt: skip
        rows[case_id] = {name: value or None for name, value in row.items()}
    return CaseTable(path, columns, rows)


def _add_classes(entries: list[dict[str, Any]], table: CaseTable) -> list[str]:
    """Set ``table``'s columns on every entry (None where the case has no row or an empty cell); the warnings."""
    listed = {entry["case_id"].casefold() for entry in entries}
    for entry in entries:
        row = table.lookup(entry["case_id"]) or {}
        entry.update({name: row.get(name) for name in table.columns})
    warnings = []
    unmatched = sorted(case_id for case_id in table.rows if case_id.casefold() not in listed)
    if unmatched:
        warnings.append(
            f"{table.path}: {len(unmatched)} case IDs match no listed case (left out): {', '.join(unmatched)}"
        )
    missing = [entry["case_id"] for entry in entries if table.lookup(entry["case_id"]) is None]
    if missing:
        warnings.append(
            f"{table.path}: no row for {len(missing)} of {len(entries)} listed cases (their "
            f"{', '.join(table.columns)} null): {', '.join(missing)}"
        )
    return warnings


# ------------------------------------------------------------------------------------------------------------ writing


def _label_names(
    values: list[int],
    names: Sequence[str] | None,
    root: Path,
    rejected: list[Rejection],
    defaults: dict[int, str] | None = None,
) -> dict:
    """Label value (a string) -> name, background ``"0"`` first: ``names`` in value order, else ``defaults``, else
    ``label_<value>``."""
    foreground = [v for v in values if v != 0]
    if names is None:
        names = [(defaults or {}).get(v, f"label_{v}") for v in foreground]
    names = [str(n).strip() for n in names]
    found = ", ".join(map(str, foreground)) or "none"
    if len(names) != len(foreground):
        raise DatalistError(
            root,
            f"--labels gives {len(names)} names ({', '.join(names) or 'none'}) but the labels hold "
            f"{len(foreground)} values besides background 0: {found}; give one name per value, in value order",
            rejected,
        )
    if any(not n for n in names) or len(set(names)) != len(names) or "background" in names:
        raise DatalistError(root, f"--labels {','.join(names)}: expected distinct, non-empty names other than "
                            "'background' (0 is always background)", rejected)  # fmt: skip
    return {"0": "background", **{str(v): n for v, n in zip(foreground, names, strict=True)}}


def _check_not_nnunet_json(root: Path, out: Path) -> None:
    """Refuse to write the project's dataset.json over the nnU-Net dataset's own (``out`` = ROOT)."""
    if dataset_json_path(out).resolve() == dataset_json_path(root).resolve():
        raise InputError(dataset_json_path(out), "is the nnU-Net dataset's own dataset.json; expected --out DIR for "
                         "the one medseg3d trains on (it points to the files here; nothing is copied)")  # fmt: skip


def _check_overwrite(out: Path) -> None:
    """Refuse to replace a dataset.json that this command did not write (prep_brats's, a Decathlon original)."""
    path = dataset_json_path(out)
    if path.exists() and written_by(out) != GENERATOR:
        raise InputError(path, "exists and was not written by medseg3d datalist; expected no dataset.json there "
                         "(give --out DIR to write elsewhere, or move it)")  # fmt: skip


def build_datalist(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    folds: int | None = None,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
    classes: str | os.PathLike | None = None,
) -> DatalistResult:
    """Find, check and list the image/label pairs under ``root`` into ``out/dataset.json`` (atomically).

    Args:
        root: folder of image/label pairs in any layout (module docstring, ``docs/data.md``), or an nnU-Net v2 raw
            dataset folder (``docs/nnunet.md``): its cases' channel files are listed in channel order, its label
            names (and regions) and its ``imagesTs`` cases are recorded, and the folds of its ``splits_final.json``
            are kept.
        out: folder of the ``dataset.json``; default ``root`` (for an nnU-Net dataset, whose own ``dataset.json``
            lies there, ``out`` must be given). Paths in the file are relative to it.
        folds: cross-validation folds (>= 1), default 5; needs at least as many usable cases. With a
            ``splits_final.json``: its number of folds (another number is an error).
        seed: seed of the fold assignment.
        label_names: names of the non-zero label values, in value order: those found, or for an nnU-Net dataset
            those its ``dataset.json`` declares; default ``label_<value>`` (nnU-Net: its names).
        classes: a CSV ``case_id,<field>[,<field2>...]`` (:func:`read_class_csv`): each field becomes a per-case
            column of every entry (the case's value as a string; null where the case has no row or an empty cell),
            and the folds are balanced over the first field's values, as ``prep_brats`` balances them over the
            grade. Case IDs are matched ignoring case; rows that match no listed case, and listed cases without
            a row, are reported in ``warnings``.

    Returns:
        What was written; ``rejected`` lists the pairs left out (the file is written when any pair is usable).

    Raises:
        DatalistError: no usable pair, fewer cases than folds, ``label_names`` not one per non-zero value, or
            ``folds`` not the number of folds of ``splits_final.json`` (``rejected`` carries the rejections so far;
            nothing is written).
        InputError: ``root`` is not a folder, ``out`` cannot be created or written, or holds a dataset.json this
            command did not write (an nnU-Net dataset's own included); ``classes`` is unreadable, lacks a
            ``case_id`` column or names a column ``RESERVED_COLUMNS`` holds; an nnU-Net ``dataset.json`` or
            ``splits_final.json`` that nnU-Net would refuse (nothing is written).
        ValueError: ``folds`` < 1.

    Example:
        >>> import tempfile
        >>> from medseg3d.data.synth_ct import write_ct_cases
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = Path(tmp.name)
        >>> _ = write_ct_cases(root, cases=2, shape=(16, 16, 16))
        >>> result = build_datalist(root, folds=2, label_names=["aorta"])
        >>> [(e["image"], e["label"], e["fold"]) for e in result.entries]
        [('imagesTr/ct_000.nii.gz', 'labelsTr/ct_000.nii.gz', 0), ('imagesTr/ct_001.nii.gz', 'labelsTr/ct_001.nii.gz', 1)]
        >>> result.labels
        {'0': 'background', '1': 'aorta'}
        >>> tmp.cleanup()
    """  # noqa: E501
    if folds is not None and folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    root = Path(root)
    out = Path(out) if out is not None else root
    path = dataset_json_path(out)
    # Before any pair is read: a bad CSV fails at once.
    table = read_class_csv(classes, reserved=RESERVED_COLUMNS) if classes is not None else None
    nnunet = read_nnunet_dataset(root) if root.is_dir() and is_nnunet_dataset(root) else None
    test_cases: list[Pair] = []
    if nnunet is None:
        pairs, rejected = find_pairs(root)
    else:
        _check_not_nnunet_json(root, out)
        pairs, test_cases, rejected = _nnunet_pairs(nnunet)
    check_output_folder(out)
    _check_overwrite(out)
    listed: list[tuple[Pair, str | None]] = []
    values: set[int] = set()
    for pair in pairs:
        try:
            found, modality = _check_pair(pair, nnunet)
        except InputError as exc:
            rejected.append(Rejection(Path(exc.path) if exc.path else pair.image, exc.problem))
            continue
        except (ValueError, RuntimeError, OSError) as exc:  # a reader failing in a way not foreseen: still one case
            reason = f"cannot check it with its label {pair.label.name} ({type(exc).__name__}: {exc})"
            rejected.append(Rejection(pair.image, reason))
            continue
        values.update(found)
        listed.append((pair, modality))
    tests = []
    for pair in test_cases:
        try:
            _check_images(pair.files)
        except (ValueError, RuntimeError, OSError) as exc:  # InputError included
            where = Path(exc.path) if isinstance(exc, InputError) and exc.path else pair.image
            rejected.append(Rejection(where, exc.problem if isinstance(exc, InputError) else str(exc)))
            continue
        tests.append(pair)
    warnings: list[str] = []
    fold_of = None
    if nnunet is not None and nnunet.splits is not None:
        fold_of, folds, split_warnings = _splits_folds(nnunet, folds, listed, rejected)
        warnings += split_warnings
    folds = DEFAULT_FOLDS if folds is None else folds
    rejected.sort(key=lambda r: (str(r.path), r.reason))
    if not listed:
        how = f"all {len(rejected)} found were rejected" if rejected else "none found"
        expected = (
            f"imagesTr/<case>_0000{nnunet.file_ending} ... + labelsTr/<case>{nnunet.file_ending} (docs/nnunet.md)"
            if nnunet is not None
            else "imagesTr/<id>.nii.gz + labelsTr/<id>.nii.gz, or <id>_ct.nii.gz + <id>_seg.nii.gz (docs/data.md)"
        )
        raise DatalistError(root, f"no usable image/label pair ({how}); expected {expected}", rejected)
    if fold_of is None and len(listed) < folds:
        raise DatalistError(root, f"{folds} folds need at least {folds} cases, found {len(listed)} usable; give "
                            f"--folds {len(listed)} or fewer", rejected)  # fmt: skip
    if nnunet is None:
        labels = _label_names(sorted(values), label_names, root, rejected)
    else:
        labels = _label_names(nnunet.values, label_names, root, rejected, defaults=nnunet.names)
        warnings += _nnunet_warnings(nnunet, len(pairs))
    foreground = [int(v) for v in labels if v != "0"]
    if not foreground:
        warnings.append("every label is background only (value 0); nothing to learn")
    elif foreground != list(range(1, len(foreground) + 1)):
        warnings.append(
            f"label values {', '.join(map(str, foreground))} are not consecutive: the network needs "
            f"{foreground[-1] + 1} output channels (or remap the labels to 1..{len(foreground)})"
        )
    entries = [
        {"image": _image_field(pair, out), "label": relative_path(pair.label, out), "case_id": pair.case_id}
        for pair, _ in listed
    ]
    if table is not None:
        warnings += _add_classes(entries, table)
    if fold_of is not None:
        entries = [{**entry, "fold": fold_of[entry["case_id"]]} for entry in entries]
    else:
        entries = assign_entry_folds(entries, folds, seed, stratify_by=table.columns[0] if table else None)
    if nnunet is None:
        modalities = {modality for _, modality in listed}
        modality = modalities.pop() if len(modalities) == 1 and None not in modalities else "image"
        content = {
            "name": root.resolve().name,
            "description": "Image/label pairs listed by medseg3d datalist (docs/data.md)",
            "generator": GENERATOR,
            "tensorImageSize": "3D",
            "modality": {"0": modality},
            "labels": labels,
            "folds": folds,
            "seed": seed,
        }
    else:
        content = _nnunet_content(nnunet, root, out, labels, folds, seed if fold_of is None else None)
    content["training"] = entries
    test = [{"case_id": pair.case_id, "image": _image_field(pair, out)} for pair in tests]
    if nnunet is not None and (root / "imagesTs").is_dir():
        content["test"] = test
    content["rejected"] = [{"path": relative_path(r.path, out), "reason": r.reason} for r in rejected]
    write_dataset_json(out, content)
    return DatalistResult(path, entries, rejected, labels, folds, warnings, table.columns if table else [], test,
                          nnunet.splits if fold_of is not None else None)  # fmt: skip


def _nnunet_content(
    dataset: NnunetDataset, root: Path, out: Path, labels: dict[str, str], folds: int, seed: int | None
) -> dict[str, Any]:
    """The metadata of an nnU-Net dataset's listing: its name, channels and labels as nnU-Net names them (``labels``
    name -> value, as nnU-Net and ``prep_brats`` write it), the regions of a region-based dataset, and where its
    folds come from (``seed``, or ``splits`` for ``splits_final.json``)."""
    channels = len(dataset.channel_names)
    content: dict[str, Any] = {
        "name": dataset.name,
        "description": f"nnU-Net v2 dataset {root.resolve().name} listed by medseg3d datalist (docs/nnunet.md)",
        "generator": GENERATOR,
        "source_format": "nnU-Net v2",
        "tensorImageSize": "4D" if channels > 1 else "3D",
        "channel_names": dict(dataset.channel_names),
        "modality": dict(dataset.channel_names),
        "labels": {name: int(value) for value, name in labels.items()},
    }
    if dataset.regions:
        content["regions"] = {name: list(values) for name, values in dataset.regions.items()}
        content["regions_class_order"] = list(dataset.regions_class_order or [])
    content["folds"] = folds
    if seed is None:
        content["splits"] = relative_path(dataset.splits, out)
    else:
        content["seed"] = seed
    return content
