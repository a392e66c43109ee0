"""Convert a raw BraTS tree (2019-2023 layouts) into a prepared dataset.

Per case: the four modalities are stacked in ``MODALITIES`` order, each z-scored over its non-zero
(brain) voxels with the background kept at 0, padded to a multiple of ``--divisible`` (BraTS
240x240x155 -> 240x240x160), and the segmentation is remapped to consecutive labels 0..3 (NCR, ED, ET).
``OUT/dataset.json`` (a MONAI datalist) and ``OUT/prep_report.csv`` describe the result; the format
is specified in ``docs/data.md``.

Cases are converted one at a time per worker, so memory does not grow with the number of cases.
Every output is written to a temporary file and renamed, and a case counts as done only once its
state record is written last, so an interrupted run is resumed by running the same command again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medseg3d.core.constants import (
    EDITIONS,
    LABEL_DESCRIPTIONS,
    MODALITIES,
    PREPARED_LABELS,
    REGIONS,
    BratsEdition,
)
from medseg3d.core.errors import InputError, check_output_folder
from medseg3d.core.io import save_nifti, write_json, write_text
from medseg3d.data.brats import RawCase, detect_edition, find_cases
from medseg3d.data.dataset_json import assign_entry_folds, write_dataset_json
from medseg3d.data.reader import check_same_grid, read_label, read_volume
from medseg3d.transforms.array import PadToDivisible, RemapLabels
from medseg3d.transforms.brats import brats_preprocessing

logger = logging.getLogger("prep_brats")

STATE_DIR = ".prep_state"
GENERATOR = "medseg3d prep_brats"  # dataset.json's "generator"
_COHORT = re.compile(r"^BraTS-(?P<cohort>[A-Z]+)-\d+-\d+$")  # BraTS 2023 case IDs name their cohort (GLI, MET, ...)
REPORT_COLUMNS = (
    "case_id",
    "status",
    "split",
    "edition",
    "grade",
    "fold",
    "folder",
    "shape",
    "spacing",
    "padded_shape",
    "pad",
    "brain_voxels",
    *(f"{name}_voxels" for name in PREPARED_LABELS if name != "background"),
    *(f"{m}_{stat}" for m in MODALITIES for stat in ("mean", "std", "max")),
    "seconds",
    "notes",
    "reason",
)


@dataclass(frozen=True)
class PrepOptions:
    """Settings of one conversion (the command-line flags)."""

    edition: str = "auto"
    folds: int = 5
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    divisible: int = 16


@dataclass
class PrepResult:
    """What a conversion produced: one report row per case and the datalist written."""

    rows: list[dict[str, Any]]
    dataset: dict[str, Any]

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Rows of the cases that could not be converted."""
        return [row for row in self.rows if row["status"] == "rejected"]


def _fingerprint(case: RawCase) -> list[list[Any]]:
    """Name, size and modification time of each input file: a changed input invalidates the case."""
    out = []
    for path in case.files:
        stat = path.stat()
        out.append([path.name, stat.st_size, stat.st_mtime_ns])
    return out


def _outputs(case: RawCase) -> dict[str, str]:
    """Relative output paths of ``case`` (image, and label when it has a segmentation)."""
    if case.seg is None:
        return {"image": f"imagesTs/{case.case_id}.nii.gz"}
    return {"image": f"imagesTr/{case.case_id}.nii.gz", "label": f"labelsTr/{case.case_id}.nii.gz"}


def _load_done(case: RawCase, out_dir: Path) -> dict[str, Any] | None:
    """The state record of a case already converted from the same inputs, else None."""
    state_path = out_dir / STATE_DIR / f"{case.case_id}.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != _fingerprint(case):
        return None
    if not all((out_dir / rel).is_file() for rel in _outputs(case).values()):
        return None
    return state


def prepare_case(case: RawCase, out_dir: str | os.PathLike, edition: BratsEdition, divisible: int = 16) -> dict:
    """Convert one case; return its state record ``{"row": report row, "entry": datalist entry}``.

    Raises:
        InputError: the case cannot be converted; the message names the file and what was expected.
    """

    start = time.perf_counter()
    out_dir = Path(out_dir)
    if case.problems:
        raise InputError(case.folder, "; ".join(case.problems))

    reference = case.images[MODALITIES[0]]
    stack = None
    affine = None
    grid = None
    stats: dict[str, float] = {}
    for channel, modality in enumerate(MODALITIES):
        path = case.images[modality]
        volume = read_volume(path)
        data = volume.array[0]
        if stack is None:
            stack = np.empty((len(MODALITIES), *data.shape), dtype=np.float32)
            affine, grid = volume.affine, volume.grid
        else:
            check_same_grid(path, volume.grid, reference, grid)
        brain = data != 0
        values = data[brain]
        stats[f"{modality}_mean"] = round(float(values.mean()), 4)
        stats[f"{modality}_std"] = round(float(values.std()), 4)
        stats[f"{modality}_max"] = round(float(values.max()), 4)
        stack[channel] = data
        del volume, data, brain, values

    seg = None
    if case.seg is not None:
        label = read_label(case.seg)
        check_same_grid(case.seg, label.grid, reference, grid)
        seg = label.array[0]
        try:
            seg = np.asarray(RemapLabels(edition.to_prepared)(seg))
        except ValueError as exc:
            raise InputError(case.seg, f"{exc} (BraTS {edition.name} labels)") from None

    pad_width = PadToDivisible(divisible).pad_width(stack.shape[1:])
    original_shape = stack.shape[1:]
    brain_voxels = int(np.count_nonzero(np.any(stack != 0, axis=0)))
    # the BraTS preprocessing inference applies too (medseg3d/transforms/brats.py): z-score, zero-padding
    prepared = {"image": stack} if seg is None else {"image": stack, "label": seg[None]}
    prepared = brats_preprocessing("image", divisible, label_keys=[k for k in prepared if k == "label"])(prepared)
    image = np.asarray(prepared["image"])
    del stack
    padded_affine = affine.copy()
    padded_affine[:3, 3] -= affine[:3, :3] @ np.array([before for before, _ in pad_width], dtype=float)

    outputs = _outputs(case)
    label_counts = {}
    if seg is not None:
        seg = np.asarray(prepared["label"])[0].astype(np.uint8)
        counts = np.bincount(seg.ravel(), minlength=len(PREPARED_LABELS))
        label_counts = {f"{name}_voxels": int(counts[v]) for name, v in PREPARED_LABELS.items() if v}
        save_nifti(seg, padded_affine, out_dir / outputs["label"])
    # Channels last on disk (Medical Decathlon convention); MONAI's loaders move them first again.
    try:
        save_nifti(np.moveaxis(image, 0, -1), padded_affine, out_dir / outputs["image"])
    except BaseException:  # a full disk, a kill: no label map left without its image
        if seg is not None:
            (out_dir / outputs["label"]).unlink(missing_ok=True)
        raise

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    row = {
        "case_id": case.case_id,
        "status": "ok",
        "split": "train" if case.seg is not None else "test",
        "edition": edition.name,
        "grade": case.grade or "",
        "folder": str(case.folder),
        "shape": "x".join(map(str, original_shape)),
        "spacing": "x".join(f"{s:g}" for s in np.round(spacing, 4)),
        "padded_shape": "x".join(map(str, image.shape[1:])),
        "pad": json.dumps([list(p) for p in pad_width]),
        "brain_voxels": brain_voxels,
        **label_counts,
        **stats,
        "seconds": round(time.perf_counter() - start, 2),
        "notes": "; ".join(case.notes),
        "reason": "",
    }
    entry = {
        "case_id": case.case_id,
        **outputs,
        "grade": case.grade,
        "original_shape": list(original_shape),
        "pad": [list(p) for p in pad_width],
        "source": str(case.folder),
    }
    return {"row": row, "entry": entry}


def _convert(case: RawCase, out_dir: str, edition_name: str, divisible: int) -> dict:
    """Worker: convert one case and record it as done; never raises for bad input."""
    out = Path(out_dir)
    try:
        state = prepare_case(case, out, EDITIONS[edition_name], divisible)
    except InputError as exc:
        return {"row": _rejected_row(case, edition_name, str(exc))}
    except (OSError, MemoryError) as exc:
        return {"row": _rejected_row(case, edition_name, f"{type(exc).__name__}: {exc}")}
    state["fingerprint"] = _fingerprint(case)
    write_json(state, out / STATE_DIR / f"{case.case_id}.json")
    return state


def _rejected_row(case: RawCase, edition_name: str, reason: str) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "status": "rejected",
        "split": "train" if case.seg is not None else "test",
        "edition": edition_name,
        "grade": case.grade or "",
        "folder": str(case.folder),
        "notes": "; ".join(case.notes),
        "reason": reason,
    }


def _worker_init() -> None:
    # One thread per worker process: parallelism comes from the processes.

    torch.set_num_threads(1)


def _run_cases(todo: list[RawCase], out_dir: Path, edition: BratsEdition, options: PrepOptions) -> Iterable[dict]:
    """Convert ``todo`` in ``options.workers`` processes, yielding state records as they finish."""

    with tqdm(total=len(todo), desc="prep_brats", unit="case", file=sys.stderr, dynamic_ncols=True) as bar:
        if options.workers <= 1:
            # One torch thread here too, as in the worker processes: a case gains nothing from more (240x240x155:
            # 1.9 s with one or two), and on cores shared with other jobs the OpenMP threads wait for each other
            # at every small op (200 cases of 56x48x40 on 2 busy cores: 11 s with one, 11 to 32 s with two).

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for case in todo:
                    bar.set_postfix_str(case.case_id)
                    yield _convert(case, str(out_dir), edition.name, options.divisible)
                    bar.update()
            finally:
                torch.set_num_threads(threads)
            return

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(options.workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(_convert, c, str(out_dir), edition.name, options.divisible) for c in todo]
            for future in as_completed(futures):
                yield future.result()
                bar.update()


def _tumour_type(case_id: str) -> str | None:
    """The BraTS 2023 cohort code of a case ID (``BraTS-MET-00110-000`` -> ``MET``), else None.

    >>> _tumour_type("BraTS-PED-00001-000"), _tumour_type("BraTS2021_00000")
    ('PED', None)
    """
    match = _COHORT.match(case_id)
    return match["cohort"] if match else None


def build_dataset(edition: BratsEdition, states: Sequence[dict], options: PrepOptions, raw_dir: Path) -> dict[str, Any]:
    """The ``dataset.json`` content for the converted cases (``states`` of status ok or skipped).

    What :func:`medseg3d.data.dataset_json.write_dataset_json` writes (it adds ``schema_version`` and the counts):
    the preparation's records (channels, labels and their inverse mapping, normalization, padding) and one case per
    entry, training cases with their grade-stratified ``fold``.
    """
    entries = [{**s["entry"], "tumour_type": _tumour_type(s["entry"]["case_id"])} for s in states]
    train = sorted((e for e in entries if "label" in e), key=lambda e: e["case_id"])
    test = sorted((e for e in entries if "label" not in e), key=lambda e: e["case_id"])
    train = assign_entry_folds(train, options.folds, options.seed, stratify_by="grade")
    channels = {str(i): m for i, m in enumerate(MODALITIES)}
    return {
        "name": f"BraTS{edition.name}",
        "description": f"BraTS {edition.name} prepared by medseg3d prep_brats from {raw_dir}",
        "generator": GENERATOR,
        "edition": edition.name,
        "tensorImageSize": "4D",
        "channel_names": channels,
        "modality": channels,
        "source_suffixes": {m: edition.suffixes[m] for m in MODALITIES},
        "labels": dict(PREPARED_LABELS),
        "label_descriptions": dict(LABEL_DESCRIPTIONS),
        "source_label_values": {str(k): v for k, v in sorted(edition.to_source.items())},
        "regions": {name: list(values) for name, values in REGIONS.items()},
        "normalization": {"method": "zscore", "over": "non-zero voxels of each channel", "background": 0.0},
        "padding": {"divisible": options.divisible, "method": "symmetric", "value": 0, "per_case_key": "pad"},
        "folds": options.folds,
        "seed": options.seed,
        "training": train,
        "test": test,
    }


def _report_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({col: row.get(col, "") for col in REPORT_COLUMNS})
    return buffer.getvalue()


def prep_brats(
    raw_dir: str | os.PathLike, out_dir: str | os.PathLike, options: PrepOptions | None = None
) -> PrepResult:
    """Convert the raw BraTS tree ``raw_dir`` into a prepared dataset in ``out_dir``.

    Bad cases are reported (``PrepResult.rejected``) and skipped; the others are converted.

    Raises:
        InputError: ``raw_dir`` holds no case at all, or ``out_dir`` cannot be created or written.
        ValueError: bad options, or a tree that mixes editions.
    """
    options = options or PrepOptions()
    if options.folds < 1 or options.workers < 1 or options.divisible < 1:
        raise ValueError(f"folds, workers and divisible must be >= 1, got {options}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if out_dir.resolve().is_relative_to(raw_dir.resolve()):
        raise InputError(out_dir, f"the output folder must not lie inside the raw tree {raw_dir}")
    cases = find_cases(raw_dir)
    check_output_folder(out_dir)
    edition = detect_edition(cases, options.edition)
    logger.info("%d case folders found, BraTS %s naming", len(cases), edition.name)

    states: dict[str, dict] = {}
    todo: list[RawCase] = []
    for case in cases:
        done = None if options.overwrite else _load_done(case, out_dir)
        if done is not None:
            done["row"] = {**done["row"], "status": "skipped"}
            states[case.case_id] = done
        else:
            todo.append(case)

    for state in _run_cases(todo, out_dir, edition, options):
        row = state["row"]
        states[row["case_id"]] = state
        if row["status"] == "rejected":
            logger.error("rejected %s: %s", row["case_id"], row["reason"])

    ordered = [states[case.case_id] for case in cases]
    converted = [s for s in ordered if s["row"]["status"] != "rejected"]
    dataset = write_dataset_json(out_dir, build_dataset(edition, converted, options, raw_dir))
    folds = {e["case_id"]: e["fold"] for e in dataset["training"]}
    rows = [{**s["row"], "fold": folds.get(s["row"]["case_id"], "")} for s in ordered]
    write_text(_report_csv(rows), out_dir / "prep_report.csv")
    return PrepResult(rows=rows, dataset=dataset)


def format_report(result: PrepResult) -> str:
    """A few lines for the terminal: counts per status and split, and each rejection's reason."""
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ds = result.dataset
    lines = [
        f"BraTS {ds['edition']}: {len(result.rows)} cases - "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
        f"training {ds['numTraining']} (in {ds['folds']} folds), test {ds['numTest']}",
    ]
    lines += [f"  rejected {row['case_id']}: {row['reason']}" for row in result.rejected]
    return "\n".join(lines)
