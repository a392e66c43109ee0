"""Finding BraTS cases in a raw tree of any edition (2019-2023) and pairing their modality files.

A case is a folder holding NIfTI files whose names end in a modality token (``_t1ce``, ``-t2f``, ...).
Files are paired by that token, not by position, so the edition's own names, the common re-namings
and the known quirks (BraTS 2020 case 355's ``W39_1998.09.19_Segm.nii``, ``.nii`` beside ``.nii.gz``)
all resolve to the same four modalities and one segmentation.
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

from medseg3d.core.constants import EDITIONS, MODALITIES, MODALITY_ALIASES, NIFTI_EXTENSIONS, SEG_ALIASES, BratsEdition
from medseg3d.core.errors import InputError
from medseg3d.core.io import nifti_stem

logger = logging.getLogger(__name__)

_TOKEN_TO_KEY: dict[str, str] = {alias: key for key, aliases in MODALITY_ALIASES.items() for alias in aliases}
_TOKEN_TO_KEY.update({alias: "seg" for alias in SEG_ALIASES})
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
GRADES = ("HGG", "LGG")


@dataclass
class RawCase:
    """One case found in a raw tree.

    Attributes:
        case_id: identifier used for output file names (file-name prefix, else folder name; made safe).
        folder: the folder holding the case's files.
        images: modality key (``MODALITIES``) -> file, for the modalities found.
        seg: the segmentation file, or None (validation-style case).
        grade: ``HGG``/``LGG`` where the layout records it, else None.
        edition: the edition the case's naming matches, or None if its naming is not an edition's own.
        problems: what is wrong with the pairing (missing or ambiguous files); empty when complete.
        notes: quirks handled on the way (e.g. a misnamed segmentation), for the report.
    """

    case_id: str
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    seg: Path | None = None
    grade: str | None = None
    edition: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every input file of the case, modalities in channel order then the segmentation."""
        paths = [self.images[key] for key in MODALITIES if key in self.images]
        return paths + ([self.seg] if self.seg is not None else [])


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case), hidden files excluded."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(NIFTI_EXTENSIONS)


def modality_token(path: Path) -> tuple[str, str]:
    """Split a file name into (prefix, last token) at its last ``_`` or ``-``.

    >>> modality_token(Path("BraTS-GLI-00001-000-t2f.nii.gz"))
    ('BraTS-GLI-00001-000', 't2f')
    >>> modality_token(Path("BraTS20_Training_001_flair.nii"))
    ('BraTS20_Training_001', 'flair')
    """
    stem = nifti_stem(path)
    match = re.match(r"^(.*?)[-_]([^-_]+)$", stem)
    if match is None:
        return "", stem
    return match.group(1), match.group(2)


def safe_case_id(name: str) -> str:
    """Turn ``name`` into a case ID that is a plain file name: no separators, no leading dots.

    >>> safe_case_id("../BraTS 2021/ 00001")
    'BraTS_2021_00001'
    """
    cleaned = _SAFE_ID.sub("_", name).strip("._")
    return cleaned or "case"


def edition_of_case_id(case_id: str) -> str | None:
    """The edition whose case-ID prefix ``case_id`` carries, or None.

    >>> edition_of_case_id("BraTS2021_00000"), edition_of_case_id("BraTS-MET-00110-000"), edition_of_case_id("x")
    ('2021', '2023', None)
    """
    # Longest prefix first: "BraTS2021_" must win over nothing else, "BraTS20_" is a different edition.
    for edition in sorted(EDITIONS.values(), key=lambda e: -len(e.case_prefix)):
        if case_id.startswith(edition.case_prefix):
            return edition.name
    return None


def pair_folder(folder: Path, files: list[Path]) -> RawCase:
    """Pair the NIfTI ``files`` of one folder by modality token."""
    by_key: dict[str, list[Path]] = {}
    unknown: list[Path] = []
    prefixes: set[str] = set()
    tokens: set[str] = set()
    for path in files:
        prefix, token = modality_token(path)
        key = _TOKEN_TO_KEY.get(token.lower())
        if key is None:
            unknown.append(path)
            continue
        by_key.setdefault(key, []).append(path)
        tokens.add(token.lower())
        if key != "seg":
            prefixes.add(prefix)

    case_id = safe_case_id(prefixes.pop() if len(prefixes) == 1 else folder.name)
    case = RawCase(case_id=case_id, folder=folder)
    ambiguous: set[str] = set()
    for key, paths in by_key.items():
        # The same file shipped as .nii and .nii.gz (BraTS 2020 circulates both): keep the compressed one.
        stems = {nifti_stem(p) for p in paths}
        if len(stems) == 1 and len(paths) > 1:
            paths = sorted(paths, key=lambda p: not p.name.lower().endswith(".nii.gz"))[:1]
            case.notes.append(f"{key}: both .nii and .nii.gz present, used {paths[0].name}")
        if len(paths) > 1:
            names = ", ".join(sorted(p.name for p in paths))
            case.problems.append(f"ambiguous {key}: several files match ({names})")
            ambiguous.add(key)
            continue
        if key == "seg":
            case.seg = paths[0]
        else:
            case.images[key] = paths[0]
    missing = [key for key in MODALITIES if key not in case.images and key not in ambiguous]
    if missing:
        expected = ", ".join(f"{m} (a file ending in {'/'.join(MODALITY_ALIASES[m][:2])})" for m in missing)
        case.problems.append(f"missing modality: {expected}")
    if unknown and not case.problems:
        case.notes.append("ignored files: " + ", ".join(p.name for p in unknown))

    case.edition = edition_of_case_id(case_id)
    if case.edition is None and tokens:
        case.edition = "2023" if tokens & {"t1n", "t1c", "t2w", "t2f"} else None
    return case


def _grade_from_parents(folder: Path, root: Path) -> str | None:
    """HGG/LGG when a parent folder (2019 layout) is named so."""
    for parent in folder.relative_to(root).parents:
        if parent.name.upper() in GRADES:
            return parent.name.upper()
    return None


def _name_mapping_grades(root: Path) -> dict[str, str]:
    """Case ID -> grade from every ``name_mapping.csv`` (BraTS 2020) under ``root``."""
    grades: dict[str, str] = {}
    for csv_path in sorted(root.rglob("name_mapping.csv")):
        try:
            with open(csv_path, newline="") as f:
                for row in csv.DictReader(f):
                    case = (row.get("BraTS_2020_subject_ID") or "").strip()
                    grade = (row.get("Grade") or "").strip().upper()
                    if case and grade in GRADES:
                        grades[case] = grade
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            logger.warning("%s: cannot read grades (%s); cases keep no grade", csv_path, exc)
    return grades


def find_cases(root: str | os.PathLike) -> list[RawCase]:
    """Every case under ``root``, sorted by case ID; a folder with NIfTI files is a case.

    Cases with pairing problems are returned too (``RawCase.problems``) so they can be reported.

    Raises:
        InputError: ``root`` is not a folder or holds no NIfTI file at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "expected a folder holding a raw BraTS tree")
    grades = _name_mapping_grades(root)
    cases: list[RawCase] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        files = sorted(folder / name for name in filenames if is_nifti(folder / name))
        if not files:
            continue
        case = pair_folder(folder, files)
        case.grade = grades.get(case.case_id) or _grade_from_parents(folder, root)
        cases.append(case)
    if not cases:
        raise InputError(root, "no NIfTI file (.nii or .nii.gz) found: expected one folder per case")
    _make_ids_unique(cases)
    return sorted(cases, key=lambda c: c.case_id)


def unique_case_ids(ids: Sequence[str], order: Sequence[Any]) -> list[str]:
    """``ids`` made unique, compared ignoring case (as macOS and Windows compare file names): the one rule for case IDs.

    In each group of equal IDs the first by ``order`` keeps its ID and the others get ``__2``, ``__3``, ... (a
    number no other ID takes), so two cases never write the same output file, on any file system.

    Args:
        ids: the case IDs, one per case.
        order: a sort key per case (e.g. readable first, then the source path): who keeps the ID.

    >>> unique_case_ids(["a", "A", "b", "a"], [2, 1, 0, 3])
    ['a__2', 'A', 'b', 'a__3']
    """
    groups: dict[str, list[int]] = {}
    for i, case_id in enumerate(ids):
        groups.setdefault(case_id.casefold(), []).append(i)
    taken = set(groups)
    result = list(ids)
    for members in groups.values():
        members.sort(key=lambda i: order[i])
        n = 2
        for i in members[1:]:
            while f"{ids[i]}__{n}".casefold() in taken:
                n += 1
            taken.add(f"{ids[i]}__{n}".casefold())
            result[i] = f"{ids[i]}__{n}"
    return result


def _make_ids_unique(cases: list[RawCase]) -> None:
    """``unique_case_ids`` over the cases: complete ones first, then by folder, keep their ID (noted when not)."""
    ids = unique_case_ids([c.case_id for c in cases], [(bool(c.problems), str(c.folder)) for c in cases])
    for case, case_id in zip(cases, ids, strict=True):
        if case_id != case.case_id:
            case.notes.append(f"case ID {case.case_id} appears in several folders; this one is {case_id}")
            case.case_id = case_id


def detect_edition(cases: list[RawCase], requested: str = "auto") -> BratsEdition:
    """The edition of a raw tree: ``requested`` unless ``"auto"``, else the one its case names carry.

    Raises:
        ValueError: an unknown ``requested`` edition, or a tree mixing editions.
    """
    if requested != "auto":
        if requested not in EDITIONS:
            raise ValueError(f"unknown edition {requested!r}; expected auto or one of {', '.join(EDITIONS)}")
        return EDITIONS[requested]
    found = sorted({case.edition for case in cases if case.edition is not None})
    if len(found) > 1:
        raise ValueError(f"the tree mixes BraTS editions {', '.join(found)}; convert them separately")
    if not found:
        # Legacy tokens (t1, t1ce, t2, flair) without an edition's case prefix: 2019-2021 share labels.
        logger.warning("no case name matches a BraTS edition; assuming 2021 labels (0/1/2/4), see --edition")
        return EDITIONS["2021"]
    return EDITIONS[found[0]]
