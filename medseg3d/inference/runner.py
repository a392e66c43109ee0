"""Batch inference over a folder: every case in, a label map per case out, and ``summary.csv`` -- never stopped
by one bad case.

The model is loaded once. While one case runs, a thread reads the next (I/O and decompression overlap the
network). Each case's failure (unreadable file, wrong number of modalities, image too small, out of
memory) becomes a ``failed`` row with its reason, and the next case runs. Outputs and ``summary.csv`` are
written to a temporary file and renamed, and ``summary.csv`` is rewritten after every case, so an
interrupted batch leaves only whole files, and ``resume`` skips the cases whose label map exists.

Under ``torchrun`` each rank takes every WORLD_SIZE-th case; rank 0 merges the ranks' rows into one
``summary.csv``.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from medseg3d.core.constants import EDITIONS, INFER_SUMMARY, PROBABILITY_PREFIX, REGIONS
from medseg3d.core.errors import InputError
from medseg3d.core.io import write_text
from medseg3d.core.ranks import get_rank, is_distributed
from medseg3d.data.label_formats import (
    check_formats,
    output_file,
    probabilities_file,
    segment_specs,
    write_dicom_seg,
    write_probabilities,
    write_seg_nrrd,
)
from medseg3d.data.reader import read_label
from medseg3d.data.scans import find_scans, read_scan, write_label
from medseg3d.inference.preview import save_preview
from medseg3d.ops.diameter import label_diameters

logger = logging.getLogger(__name__)

SUMMARY = INFER_SUMMARY
BASE_COLUMNS = ("case_id", "input", "status", "error", "seconds")


def output_path(output_dir: str | os.PathLike, case_id: str) -> Path:
    """Where the NIfTI label map of ``case_id`` goes.

    >>> output_path("out", "BraTS2021_00001").as_posix()
    'out/BraTS2021_00001.nii.gz'
    """
    return output_file(output_dir, case_id, "nifti")


def parse_shard(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"I/N"`` (task I of N, 0 <= I < N; a SLURM array's ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)
    as ``(I, N)``; None stays None.

    >>> parse_shard("2/3"), parse_shard(None)
    ((2, 3), None)
    """
    if text is None:
        return None
    try:
        index, count = (int(v) for v in (text.split("/") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise ValueError(f"shard must be I/N (task I of N, e.g. 0/3), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: expected 0 <= I < N")
    return index, count


def shard_of(case_id: str, count: int) -> int:
    """The shard a case belongs to among ``count``: a hash of its id alone, so a case keeps its shard when others
    are added or removed, and every task computes the same split without talking to the others.

    >>> shard_of("BraTS2021_00000", 3) == shard_of("BraTS2021_00000", 3), shard_of("a", 1)
    (True, 0)
    """
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big") % count


def summary_part(output_dir: str | os.PathLike, shard: tuple[int, int], running: bool = False) -> Path:
    """The summary rows of one finished shard, ``summary.part-<I>-of-<N>.csv`` (merged into ``summary.csv``), or
    with ``running`` those of a shard still running, rewritten after each case (a killed task leaves it whole, and
    ``merge_summary_parts`` never takes it for a finished part)."""
    state = ".running" if running else ""
    return Path(output_dir) / f"{Path(SUMMARY).stem}.part-{shard[0]}-of-{shard[1]}{state}.csv"


def merge_summary_parts(output_dir: str | os.PathLike, count: int) -> Path | None:
    """Write ``summary.csv`` from the ``count`` shards' parts (rows in case order, the union of their columns),
    atomically, when every part exists; return it, or None while some shard has not finished. Any task may call
    it: the last to finish writes the whole summary (two at once write the same file)."""
    parts = [summary_part(output_dir, (i, count)) for i in range(count)]
    if not all(p.is_file() for p in parts):
        return None
    rows, columns = [], []
    for part in parts:
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            columns += [c for c in reader.fieldnames or () if c not in columns]
            rows += list(reader)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: row["case_id"]))
    return write_text(buffer.getvalue(), Path(output_dir) / SUMMARY)


def label_volumes(labels: np.ndarray, spacing: Sequence[float], names: Mapping[str, int]) -> dict[str, Any]:
    """Voxels and millilitres of each named label value in ``labels`` (shape (X, Y, Z)), ``spacing`` in mm.

    >>> label_volumes(np.array([[[0, 2, 2]]]), (1.0, 2.0, 5.0), {"ED": 2, "ET": 4})
    {'ED_voxels': 2, 'ED_ml': 0.02, 'ET_voxels': 0, 'ET_ml': 0.0}
    """
    ml_per_voxel = float(np.prod(spacing)) / 1000.0
    row: dict[str, Any] = {}
    for name, value in names.items():
        # a comparison per label, in the array's own memory order: bincount needs a flat int64 copy (3.5 s for a
        # Fortran-ordered 512x512x300 map; this: 0.02 s per label)
        voxels = int(np.count_nonzero(labels == value))
        row[f"{name}_voxels"] = voxels
        row[f"{name}_ml"] = round(voxels * ml_per_voxel, 4)
    return row


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return f"out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if isinstance(exc, InputError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class BatchRunner:
    """Run a ``Predictor`` over every case of ``input_dir`` and write ``output_dir``.

    Args:
        predictor: ``predictor(array (C, X, Y, Z), affine (4, 4)) -> prepared labels (X, Y, Z)``.
        input_dir: a folder of cases (or one case); see ``medseg3d.data.scans.find_scans``.
        output_dir: ``<case_id>.nii.gz`` label maps, ``summary.csv``, ``previews/`` (created).
        expect: what a case is: ``brats`` (four MRI modalities) or ``image`` (one scan: CT).
        label_names: prepared label name -> value, the labels counted in ``summary.csv`` (background left out).
        output_labels: how prepared labels are written: ``brats`` (each case's edition convention:
            0/1/2/4 for 2019-2021, 0/1/2/3 for 2023; 2021 when the names do not tell), or a mapping
            prepared value -> written value (missing values unchanged); None writes them as they are.
        resume: skip the cases whose label map already exists.
        preview: write ``previews/<case_id>.png`` (three orthogonal slices, label overlay).
        preview_window: (low, high) grey levels of the previews (a CT window in HU); None: percentiles.
        progress: show a progress bar with each case's seconds.
        diameters: names of ``label_names`` whose maximum diameter goes into ``summary.csv`` as
            ``<name>_max_diameter_mm`` (after the voxel and mL columns): the diameter in mm of the largest ball
            inscribed in the label as written (``medseg3d.ops.diameter.max_diameter_mm``: the maximal inscribed
            circle along the vessel's centreline, e.g. the maximum aortic diameter), empty when the label is
            absent from the case; re-read from the label map for cases skipped by ``resume``.
        output_formats: one or several of ``nifti`` (``<case_id>.nii.gz``), ``seg.nrrd`` (a 3D Slicer segmentation,
            ``<case_id>.seg.nrrd``) and ``dicom-seg`` (a DICOM SEG, ``<case_id>.seg.dcm``; for a non-DICOM input with
            the scan as a DICOM series in ``<case_id>.dicom/``): ``medseg3d.data.label_formats``. ``resume`` skips a
            case when every requested file exists.
        segments: the label table: written label name -> ``colour``, ``category``, ``type`` (codes
            ``SCHEME^VALUE^MEANING``), ``description``; names it lacks get a palette colour and a generic code.
        model_name: the algorithm's name in a DICOM SEG (the bundle's name).
        dicom_modality: ``CT`` or ``MR``: the image series a DICOM SEG of a non-DICOM input comes with.
        channel_names: the input channels' names (series descriptions of that image series).
        reference_channel: the channel whose series that DICOM SEG references (BraTS: FLAIR).
        shard: ``(I, N)`` or ``"I/N"``: run only the cases whose id hashes to shard I of N (``shard_of``; a
            SLURM job array's task), write this shard's rows to ``summary.part-I-of-N.csv``, and when every part
            is there, ``summary.csv`` (``merge_summary_parts``).
        save_probabilities: also write ``<case_id>.probabilities.npz``: the probabilities the labels were decoded
            from, float16, on the scan's grid (``label_formats.write_probabilities``; the predictor must keep them:
            ``keep_probabilities``); ``resume`` then needs it too.

    A multitask predictor (``class_names``) adds each case's predicted ``class``, a probability ``p_<name>`` per
    class and ``class_pooled_over`` (``tumour``, or ``foreground`` when no tumour was predicted) to
    ``summary.csv``; a case skipped by ``resume`` leaves them empty.

    Raises:
        ValueError: ``expect`` or ``output_labels`` is not one of the values above, or ``diameters`` names a
            label that is not in ``label_names``.

    >>> runner = BatchRunner(None, "in", "out", label_names={"aorta": 1}, diameters=["aorta"])
    >>> runner._columns()[-3:]
    ['aorta_voxels', 'aorta_ml', 'aorta_max_diameter_mm']
    """

    def __init__(
        self,
        predictor: Any,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        expect: str = "image",
        label_names: Mapping[str, int] | None = None,
        output_labels: str | Mapping[int, int] | None = None,
        resume: bool = False,
        preview: bool = False,
        preview_window: Sequence[float] | None = None,
        progress: bool = True,
        diameters: Sequence[str] = (),
        output_formats: str | Sequence[str] = ("nifti",),
        segments: Mapping[str, Mapping[str, Any]] | None = None,
        model_name: str = "",
        dicom_modality: str = "CT",
        channel_names: Sequence[str] = (),
        reference_channel: int = 0,
        save_probabilities: bool = False,
        shard: str | Sequence[int] | None = None,
    ) -> None:
        if expect not in ("image", "brats"):
            raise ValueError(f"expect must be 'image' or 'brats', got {expect!r}")
        if isinstance(output_labels, str) and output_labels != "brats":
            raise ValueError(f"output_labels must be 'brats', a mapping or None, got {output_labels!r}")
        self.predictor = predictor
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.expect = expect
        self.label_names = {k: int(v) for k, v in (label_names or {}).items() if int(v) != 0}
        names = [diameters] if isinstance(diameters, str) else list(diameters or ())
        unknown = [name for name in names if name not in self.label_names]
        if unknown:
            raise ValueError(
                f"diameters must name labels of label_names (expected some of {sorted(self.label_names)}), "
                f"got {', '.join(repr(name) for name in unknown)}"
            )
        self.diameters = list(dict.fromkeys(names))
        self.output_labels = output_labels
        self.resume = bool(resume)
        self.preview = bool(preview)
        self.preview_window = None if preview_window is None else tuple(float(v) for v in preview_window)
        self.progress = progress
        self.formats = check_formats(output_formats)
        self.segments = {str(k): dict(v or {}) for k, v in (segments or {}).items()}
        segment_specs(self.label_names, self.segments)  # a malformed colour or code fails before any case
        self.model_name = str(model_name)
        self.dicom_modality = str(dicom_modality)
        self.channel_names = [str(n) for n in channel_names]
        self.reference_channel = int(reference_channel)
        self.save_probabilities = bool(save_probabilities)
        self.shard = parse_shard(shard)
        self.rows: list[dict[str, Any]] = []

    # -- labels ---------------------------------------------------------------------------------------------
    def _written_labels(self, case: Any) -> dict[str, int]:
        """Name -> value as written for ``case`` (the summary counts written values)."""
        mapping = self._mapping(case)
        return {name: mapping.get(value, value) for name, value in self.label_names.items()}

    def _mapping(self, case: Any) -> dict[int, int]:
        if self.output_labels is None:
            return {}
        if self.output_labels == "brats":
            return EDITIONS[getattr(case, "edition", None) or "2021"].to_source
        return {int(k): int(v) for k, v in self.output_labels.items()}

    def _to_output(self, labels: np.ndarray, case: Any) -> np.ndarray:
        mapping = {k: v for k, v in self._mapping(case).items() if k != v}
        if not mapping:
            return labels
        lut = np.arange(max(256, int(labels.max()) + 1), dtype=np.int32)
        for prepared, written in mapping.items():
            lut[prepared] = written
        out = lut[labels]
        return out.astype(np.uint8 if out.max(initial=0) < 256 else np.int16)

    # -- one case -------------------------------------------------------------------------------------------
    def _outputs(self, case_id: str) -> list[Path]:
        files = [output_file(self.output_dir, case_id, f) for f in self.formats]
        return files + ([probabilities_file(self.output_dir, case_id)] if self.save_probabilities else [])

    def _skip_row(self, case: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"status": "skipped", "error": "output exists (resume)"}
        readable = [output_file(self.output_dir, case.case_id, f) for f in ("nifti", "seg.nrrd") if f in self.formats]
        if not readable:  # a DICOM SEG alone: its volumes are not re-read
            return row
        path = readable[0]
        try:
            written = read_label(path)
            labels = written.array[0].astype(np.int64)
            row.update(label_volumes(labels, written.spacing, self._written_labels(case)))
            row.update(self._diameter_columns(labels, written.spacing, case))
        except Exception as exc:  # a damaged earlier output is reported, not trusted
            row.update(status="failed", error=f"existing output unreadable ({exc}); delete it to redo the case")
        return row

    def _diameter_columns(self, labels: np.ndarray, spacing: Sequence[float], case: Any) -> dict[str, Any]:
        """``<name>_max_diameter_mm`` of each label of ``diameters`` (None, an empty cell, when absent)."""
        if not self.diameters:
            return {}

        written = self._written_labels(case)
        found = label_diameters(labels, spacing, {name: written[name] for name in self.diameters})
        return {f"{name}_max_diameter_mm": None if mm is None else round(mm, 2) for name, mm in found.items()}

    def _run_case(self, case: Any, scan_future: Future) -> dict[str, Any]:
        start = time.perf_counter()
        scan = scan_future.result()  # raises the reading error of this case
        labels = self.predictor(scan.array, scan.affine)
        written = self._to_output(labels, case)
        segments = segment_specs(self._written_labels(case), self.segments)  # the outputs' and preview's table
        self._write_outputs(written, scan, case, segments)
        row: dict[str, Any] = {"status": "ok", "error": ""}
        row.update(label_volumes(written, scan.spacing, self._written_labels(case)))
        row.update(self._diameter_columns(written, scan.spacing, case))
        row.update(self._class_columns())
        if self.preview:
            path = self.output_dir / "previews" / f"{case.case_id}.png"
            save_preview(
                scan.array, written, path, case.case_id, window=self.preview_window, affine=scan.affine,
                segments=segments,
            )  # fmt: skip
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row

    def _write_outputs(self, written: np.ndarray, scan: Any, case: Any, segments: list[Any]) -> None:
        """The case's label map in each requested format (``segments``: its label table)."""
        if self.save_probabilities:
            found = getattr(self.predictor, "last_probabilities", None)
            if found is None:
                raise RuntimeError("save_probabilities: the predictor kept no probabilities (keep_probabilities)")
            path = probabilities_file(self.output_dir, case.case_id)
            write_probabilities(found, scan, path, self._probability_channels(len(found)), self._output_mode())
        for output_format in self.formats:
            path = output_file(self.output_dir, case.case_id, output_format)
            if output_format == "nifti":
                write_label(written, scan, path)
            elif output_format == "seg.nrrd":
                write_seg_nrrd(written, scan, path, segments)
            else:
                result = write_dicom_seg(
                    written, scan, path, segments, model=self.model_name, modality=self.dicom_modality,
                    channel_names=self.channel_names, reference_channel=self.reference_channel,
                )  # fmt: skip
                if result.generated:
                    filled = ", ".join(f"{k} ({v})" for k, v in result.generated.items())
                    logger.warning("%s: the source series lacks UIDs; the DICOM SEG uses %s", case.case_id, filled)

    def _output_mode(self) -> str:
        return str(getattr(self.predictor, "output_mode", "labels"))

    def _probability_channels(self, count: int) -> list[str]:
        """Names of the probability channels: the regions, or background and each label in value order."""
        if self._output_mode() == "regions":
            names = list(REGIONS)
        else:
            names = ["background", *sorted(self.label_names, key=self.label_names.__getitem__)]
        return names if len(names) == count else [f"channel{i}" for i in range(count)]

    def _class_names(self) -> list[str]:
        return list(getattr(self.predictor, "class_names", None) or [])

    def _class_columns(self) -> dict[str, Any]:
        """A multitask model's case class: ``class``, ``p_<name>`` per class, ``class_pooled_over``."""
        found = getattr(self.predictor, "last_class", None)
        if not self._class_names() or not found:
            return {}
        row: dict[str, Any] = {"class": found["class"], "class_pooled_over": found["pooled_over"]}
        row.update({f"{PROBABILITY_PREFIX}{name}": round(float(p), 4) for name, p in found["probabilities"].items()})
        return row

    # -- the batch ------------------------------------------------------------------------------------------
    def cases(self) -> list[Any]:
        """Every case of ``input_dir`` (this rank's share under ``torchrun``), bad ones included."""

        found = find_scans(self.input_dir, expect=self.expect, exclude=[self.output_dir])
        if self.shard is not None:
            found = [case for case in found if shard_of(case.case_id, self.shard[1]) == self.shard[0]]
        if is_distributed():
            found = found[dist.get_rank() :: dist.get_world_size()]
        return found

    def run(self) -> list[dict[str, Any]]:
        """Run every case; returns the summary rows (all ranks' on rank 0). Never raises for one case."""

        self.output_dir.mkdir(parents=True, exist_ok=True)
        cases = self.cases()
        todo = []
        self.rows = []
        for case in cases:
            base = {"case_id": case.case_id, "input": str(case.source)}
            if case.problem:
                self.rows.append({**base, "status": "failed", "error": f"{case.source}: {case.problem}"})
            elif self.resume and all(path.is_file() for path in self._outputs(case.case_id)):
                self.rows.append({**base, **self._skip_row(case)})
            else:
                todo.append(case)
        if not todo:  # every case skipped or failed at discovery: the summary is still (re)written
            self._write_summary(self.rows, self._rank_summary_path())
        bar = self._bar(len(todo))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-next") as reader:
            futures = {}
            if todo:
                futures[0] = reader.submit(read_scan, todo[0])
            for i, case in enumerate(todo):
                if i + 1 < len(todo):
                    futures[i + 1] = reader.submit(read_scan, todo[i + 1])
                base = {"case_id": case.case_id, "input": str(case.source)}
                start = time.perf_counter()
                try:
                    row = self._run_case(case, futures.pop(i))
                except Exception as exc:  # one bad case never stops the batch
                    self._free_memory()
                    row = {"status": "failed", "error": _error_text(exc)}
                    row["seconds"] = round(time.perf_counter() - start, 2)
                    logger.warning("%s failed: %s", case.case_id, row["error"])
                self.rows.append({**base, **row})
                self._write_summary(self.rows, self._rank_summary_path())
                if bar is not None:
                    bar.set_postfix_str(f"{case.case_id} {row['seconds']:.1f} s {row['status']}", refresh=False)
                    bar.update()
        if bar is not None:
            bar.close()
        return self._finish()

    def _bar(self, total: int):
        if not self.progress:
            return None

        return tqdm(total=total, desc=f"infer (rank {get_rank()})" if get_rank() else "infer", unit="case")

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _rank_summary_path(self) -> Path:
        if self.shard is not None:
            return summary_part(self.output_dir, self.shard, running=True)
        if is_distributed():
            return self.output_dir / f".{SUMMARY}.rank{get_rank()}"
        return self.output_dir / SUMMARY

    def _columns(self) -> list[str]:
        extra = []
        for name in self.label_names:
            extra += [f"{name}_voxels", f"{name}_ml"]
        extra += [f"{name}_max_diameter_mm" for name in self.diameters]
        if self._class_names():
            extra += ["class", *(f"{PROBABILITY_PREFIX}{name}" for name in self._class_names()), "class_pooled_over"]
        return [*BASE_COLUMNS, *extra]

    def _write_summary(self, rows: Sequence[Mapping[str, Any]], path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns(), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(buffer.getvalue(), path)

    def _finish(self) -> list[dict[str, Any]]:
        """Rank 0 merges every rank's rows into ``summary.csv`` (in case order) when distributed."""

        if self.shard is not None:
            self._write_summary(self.rows, summary_part(self.output_dir, self.shard))
            summary_part(self.output_dir, self.shard, running=True).unlink(missing_ok=True)
            merged = merge_summary_parts(self.output_dir, self.shard[1])
            logger.info("shard %d/%d done; %s", *self.shard, merged or "summary.csv waits for the other shards")
            return self.rows
        if not is_distributed():
            return self.rows

        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.rows)
        rows = sorted((row for part in gathered for row in part), key=lambda row: row["case_id"])
        if dist.get_rank() == 0:
            self._write_summary(rows, self.output_dir / SUMMARY)
        dist.barrier()
        self._rank_summary_path().unlink(missing_ok=True)
        self.rows = rows
        return rows


def failed_count(rows: Sequence[Mapping[str, Any]]) -> int:
    """How many rows failed (the exit code is non-zero when any did).

    >>> failed_count([{"status": "ok"}, {"status": "failed"}, {"status": "skipped"}])
    1
    """
    return sum(1 for row in rows if row.get("status") == "failed")


def seconds_per_case(rows: Sequence[Mapping[str, Any]]) -> float:
    """Mean seconds of the cases that ran (ok), NaN when none did."""
    times = [float(row["seconds"]) for row in rows if row.get("status") == "ok"]
    return sum(times) / len(times) if times else math.nan
