"""Label maps in the formats clinicians open: 3D Slicer segmentations (``.seg.nrrd``) and DICOM Segmentation objects.

``medseg3d infer --output_format`` writes each case's label map as NIfTI (``scans.write_label``), as a Slicer
segmentation, as a DICOM SEG, or several of them. Each written label value is a *segment* with a name, a colour
and a coded meaning from the bundle's label table (``segments`` in its ``inference.yaml``): ``SegmentSpec``.

- ``.seg.nrrd``: the label map (one layer, values as written) in LPS with the ``Segment{i}_*`` fields 3D Slicer
  writes (ID, name, colour, label value, layer, extent, terminology tags) and the ``Segmentation_*`` fields, so
  Slicer opens named, coloured segments on the scan's grid.
- DICOM SEG (highdicom, BINARY, one segment per label): for a DICOM series input it is in the scan's study and
  frame of reference and references each source instance frame by frame; source UIDs that are empty or missing
  (anonymised exports) are taken from the file meta header or generated, deterministically from the series'
  files, and reported (``DicomSegResult.generated``). Any other input has no DICOM identity: the scan itself is
  written as a DICOM image series beside the SEG (``<case>.dicom/``: one series per channel, a new study, the
  NIfTI's geometry, 16-bit pixels with a rescale), and the SEG references the series of ``reference_channel``
  (docs/outputs.md).

Writes are atomic (a file through ``core.io.atomic_path``, the image series folder through a temporary folder
renamed in place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from medseg3d import __version__
from medseg3d.core.errors import InputError
from medseg3d.core.io import atomic_path
from medseg3d.data.reader import lps_to_ras
from medseg3d.data.scans import Scan

OUTPUT_FORMATS: tuple[str, ...] = ("nifti", "seg.nrrd", "dicom-seg")
SUFFIXES: dict[str, str] = {"nifti": ".nii.gz", "seg.nrrd": ".seg.nrrd", "dicom-seg": ".seg.dcm"}
SERIES_SUFFIX = ".dicom"  # the image series written beside a DICOM SEG of a non-DICOM input
PROBABILITIES_SUFFIX = ".probabilities.npz"  # `--save_probabilities`

# Segments without an entry in the label table: a generic tissue code and Slicer's first colours.
_TISSUE = "SCT^85756007^Tissue"
_PALETTE = ((128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (221, 130, 101))
# Image storage classes of the series written for a non-DICOM input (what its pixels are).
_IMAGE_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_UID_ROOT = "2.25."  # UUID-derived UIDs (DICOM PS3.5 B.2)


def parse_code(text: str) -> Code:
    """``"SCHEME^VALUE^MEANING"`` (Slicer's terminology spelling) to a DICOM code.

    >>> parse_code("SCT^15825003^Aorta")
    Code(value='15825003', scheme_designator='SCT', meaning='Aorta', scheme_version=None)
    """
    parts = str(text).split("^")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(f"a code is written SCHEME^VALUE^MEANING (e.g. SCT^15825003^Aorta), got {text!r}")
    return Code(value=parts[1].strip(), scheme_designator=parts[0].strip(), meaning=parts[2].strip())


@dataclass(frozen=True)
class SegmentSpec:
    """One written label value as a segment: ``name`` (Slicer's segment name, the SEG's label), ``colour`` (RGB
    0-255), ``category`` and ``type`` (coded: ``SCHEME^VALUE^MEANING``), ``description``."""

    value: int
    name: str
    colour: tuple[int, int, int]
    category: str = _TISSUE
    type: str = _TISSUE
    description: str = ""

    def codes(self) -> tuple[Code, Code]:
        return parse_code(self.category), parse_code(self.type)


def segment_specs(
    written: Mapping[str, int], table: Mapping[str, Mapping[str, Any]] | None = None
) -> list[SegmentSpec]:
    """The segments of a case: each (name -> written value) of ``written`` with its entry of the label ``table``
    (``colour``, ``category``, ``type``, ``description``; defaults: a palette colour and a generic tissue code),
    in value order; background (0) left out.

    Raises:
        ValueError: a colour is not three values in 0..255, or a code is malformed.

    >>> [s.name for s in segment_specs({"ET": 4, "NCR": 1, "ED": 2})]
    ['NCR', 'ED', 'ET']
    """
    table = table or {}
    specs = []
    for i, (name, value) in enumerate(sorted(written.items(), key=lambda kv: int(kv[1]))):
        if int(value) == 0:
            continue
        entry = dict(table.get(name) or {})
        colour = tuple(int(c) for c in entry.get("colour", _PALETTE[i % len(_PALETTE)]))
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise ValueError(f"segment {name!r}: colour must be three values in 0..255, got {entry.get('colour')!r}")
        spec = SegmentSpec(int(value), str(name), colour, str(entry.get("category", _TISSUE)),  # type: ignore[arg-type]
                           str(entry.get("type", _TISSUE)), str(entry.get("description", "")))  # fmt: skip
        spec.codes()  # malformed codes fail here, before any case runs
        specs.append(spec)
    return specs


def output_file(output_dir: str | os.PathLike, case_id: str, output_format: str) -> Path:
    """Where ``case_id``'s label map in ``output_format`` goes.

    >>> output_file("out", "case1", "seg.nrrd").as_posix()
    'out/case1.seg.nrrd'
    """
    if output_format not in SUFFIXES:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    return Path(output_dir) / f"{case_id}{SUFFIXES[output_format]}"


def check_formats(formats: str | Sequence[str]) -> list[str]:
    """The requested formats as a list, checked, duplicates dropped (a comma-separated string is accepted).

    >>> check_formats("nifti,seg.nrrd")
    ['nifti', 'seg.nrrd']
    """
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f) for f in formats]
    bad = [f for f in items if f not in OUTPUT_FORMATS]
    if bad or not items:
        raise ValueError(f"output formats must be some of {', '.join(OUTPUT_FORMATS)}, got {formats!r}")
    return list(dict.fromkeys(items))


def probabilities_file(output_dir: str | os.PathLike, case_id: str) -> Path:
    """Where ``case_id``'s probabilities go (``--save_probabilities``).

    >>> probabilities_file("out", "case1").as_posix()
    'out/case1.probabilities.npz'
    """
    return Path(output_dir) / f"{case_id}{PROBABILITIES_SUFFIX}"


def write_probabilities(
    probabilities: np.ndarray, scan: Scan, path: str | os.PathLike, channels: Sequence[str], output_mode: str
) -> Path:
    """Write a case's probabilities as a compressed NumPy archive, atomically: ``probabilities`` float16
    (K, X, Y, Z) on the scan's grid and index order, ``affine`` (4, 4) voxel -> RAS mm (the label map's),
    ``channels`` (K names: regions WT, TC, ET; or background and each label), ``output_mode`` (``regions``: one
    sigmoid per nested region, ``labels``: a softmax over the channels).

    Raises:
        ValueError: not K channels on the scan's grid.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1:] != scan.spatial_shape or len(probabilities) != len(channels):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match {len(channels)} channels on the scan's "
            f"grid {scan.spatial_shape}"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, probabilities=probabilities.astype(np.float16, copy=False), affine=np.asarray(scan.affine, np.float64),
            channels=np.asarray(list(channels)), output_mode=np.asarray(output_mode),
        )  # fmt: skip
    return Path(path)


# ------------------------------------------------------------------------------------------------------- seg.nrrd


def _lps_image(labels: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK image of ``labels`` (X, Y, Z) with the scan's geometry (ITK keeps it in LPS)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    lps = lps_to_ras(affine_ras)  # the same negation turns RAS into LPS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def _slicer_tag(spec: SegmentSpec) -> str:
    category, kind = spec.codes()
    code = lambda c: f"{c.scheme_designator}^{c.value}^{c.meaning}"  # noqa: E731
    return (
        f"TerminologyEntry:Segmentation category and type - DICOM master list~{code(category)}~{code(kind)}~^^~"
        "Anatomic codes - DICOM master list~^^~^^|"
    )


def write_seg_nrrd(labels: np.ndarray, scan: Scan, path: str | os.PathLike, segments: Sequence[SegmentSpec]) -> Path:
    """Write ``labels`` (written values, the scan's (X, Y, Z) grid) as a 3D Slicer segmentation, atomically.

    One layer holds every segment (labels never overlap); ``Segment{i}_Extent`` is the segment's box in voxels
    (Slicer's "empty" extent ``0 -1 0 -1 0 -1`` when the case has none of it). Gzip-compressed.
    """
    labels = np.asarray(labels)
    if labels.shape != scan.spatial_shape:
        raise ValueError(f"labels of shape {labels.shape} do not match the scan's spatial shape {scan.spatial_shape}")
    dtype = np.uint8 if labels.max(initial=0) < 256 and labels.min(initial=0) >= 0 else np.int16
    image = _lps_image(labels.astype(dtype, copy=False), scan.affine)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for i, spec in enumerate(segments):
        where = np.nonzero(labels == spec.value)
        if where[0].size:
            extent = " ".join(f"{int(ax.min())} {int(ax.max())}" for ax in where)
        else:
            extent = "0 -1 0 -1 0 -1"
        fields = {
            "ID": f"Segment_{spec.value}",
            "Name": spec.name,
            "NameAutoGenerated": "0",
            "Color": " ".join(f"{c / 255.0:.6g}" for c in spec.colour),
            "ColorAutoGenerated": "0",
            "LabelValue": str(spec.value),
            "Layer": "0",
            "Extent": extent,
            "Tags": _slicer_tag(spec),
        }
        for key, value in fields.items():
            image.SetMetaData(f"Segment{i}_{key}", value)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)


# ------------------------------------------------------------------------------------------------------ DICOM SEG


@dataclass
class DicomSegResult:
    """What ``write_dicom_seg`` wrote: the SEG file, the image series folder it references when it wrote one, and
    the source attributes it had to generate (attribute -> value), which a log line reports."""

    path: Path
    series_folder: Path | None = None
    generated: dict[str, str] = field(default_factory=dict)


def _uid(*parts: object) -> str:
    """A UID derived from ``parts`` (the same parts, the same UID: a rerun rewrites the same object)."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()[:16]
    return _UID_ROOT + str(int.from_bytes(digest, "big"))


def _source_headers(files: Sequence[Path], source: Path) -> tuple[list[Dataset], dict[str, str]]:
    """The series' headers (no pixels), in ``files`` order (the reader's slice order), with empty or missing UIDs
    filled: SOP class and instance from the file meta header, study, series and frame of reference generated from
    the files' names. Returns the headers and what was filled."""
    headers, generated = [], {}
    seed = sorted(p.name for p in files)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(path, f"unreadable DICOM header ({exc})") from exc
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            generated["SOPClassUID"] = "from the file meta header"
        if not ds.get("SOPInstanceUID"):
            from_meta = meta is not None and meta.get("MediaStorageSOPInstanceUID")
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID if from_meta else _uid("instance", *seed, path.name)
            generated["SOPInstanceUID"] = "from the file meta header" if from_meta else "generated"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not ds.get(keyword):
                setattr(ds, keyword, _uid(keyword, *seed))
                generated[keyword] = getattr(ds, keyword)
        if not ds.get("SOPClassUID"):
            raise InputError(path, "no SOPClassUID in the dataset or its file meta header (needed to reference it)")
        headers.append(ds)
    if not headers:
        raise InputError(source, "no DICOM files to reference")
    return headers, generated


def _segment_descriptions(segments: Sequence[SegmentSpec], model: str) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model or "medseg3d", version=__version__, family=Code("113847", "DCM", "Artificial Intelligence")
    )
    out = []
    for number, spec in enumerate(segments, start=1):
        category, kind = spec.codes()
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
        if spec.description:
            out[-1].SegmentDescription = spec.description[:64]
    return out


def _segment_numbers(labels: np.ndarray, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Written label values to segment numbers (1..N in ``segments`` order; other values: 0, not a segment)."""
    out = np.zeros(labels.shape, dtype=np.uint8 if len(segments) < 256 else np.uint16)
    for number, spec in enumerate(segments, start=1):
        out[labels == spec.value] = number
    return out


def _frames(labels: np.ndarray) -> np.ndarray:
    """(X, Y, Z) index order to DICOM frames (slices, rows, columns): column i, row j, frame k."""
    return np.ascontiguousarray(labels.transpose(2, 1, 0))


def _ds(values: Any) -> list[DSfloat]:
    """Decimal strings of at most 16 characters (DICOM's DS), as precise as that allows."""
    return [DSfloat(float(v), auto_format=True) for v in np.ravel(values)]


def _series_datasets(scan: Scan, channel: int, modality: str, study: dict[str, str], tag: str) -> list[Dataset]:
    """The scan's channel ``channel`` as one DICOM image series (single-frame instances, 16-bit with a rescale),
    in the scan's geometry (LPS), for inputs without a DICOM identity."""
    lps = lps_to_ras(scan.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    cosines = lps[:3, :3] / spacing
    volume = np.asarray(scan.array[channel], dtype=np.float64)
    low, high = float(volume.min()), float(volume.max())
    integral = np.all(volume == np.round(volume)) and -32768 <= low and high <= 32767
    slope = 1.0 if integral else max(high - low, 1e-6) / 65535.0
    intercept = 0.0 if integral else low + 32768 * slope
    stored = np.round((volume - intercept) / slope).clip(-32768, 32767).astype(np.int16)
    series_uid = _uid("series", study["StudyInstanceUID"], tag)
    sop_class = _IMAGE_SOP_CLASSES[modality]
    now = datetime.now()
    out = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = _uid("instance", series_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        for key, value in study.items():
            setattr(ds, key, value)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 1 + channel, k + 1
        ds.SeriesDescription = f"{tag} (derived from {scan.case.source.name})"[:64]
        ds.Modality, ds.ImageType = modality, ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.Manufacturer, ds.PositionReferenceIndicator = "medseg3d", ""
        ds.ImageOrientationPatient = _ds([*cosines[:, 0], *cosines[:, 1]])
        ds.ImagePositionPatient = _ds(lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3])
        ds.PixelSpacing = _ds([spacing[1], spacing[0]])  # row spacing (along j), column spacing (along i)
        ds.SliceThickness = _ds([spacing[2]])[0]
        ds.PatientPosition, ds.Laterality = "", ""
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT" or not integral:  # MR's IOD has no rescale: only where the voxels are not integers
            ds.RescaleIntercept, ds.RescaleSlope = _ds([intercept])[0], _ds([slope])[0]
        if modality == "CT":
            ds.RescaleType, ds.KVP, ds.AcquisitionNumber = "HU", "", ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", ""
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.AcquisitionNumber = "", "", "", ""
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        out.append(ds)
    return out


def _new_study(scan: Scan, case_id: str) -> dict[str, str]:
    """Patient and study attributes of a new study for an input without a DICOM identity (generated from the
    case and its source path: a rerun gives the same UIDs)."""
    return {
        "StudyInstanceUID": _uid("study", case_id, scan.case.source),
        "FrameOfReferenceUID": _uid("frame", case_id, scan.case.source),
        "PatientID": case_id[:64],
        "PatientName": f"{case_id[:60]}^",
        "PatientBirthDate": "",
        "PatientSex": "",
        "StudyDate": datetime.now().strftime("%Y%m%d"),
        "StudyTime": datetime.now().strftime("%H%M%S"),
        "StudyID": "",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
    }


def _write_series(datasets: Sequence[Sequence[Dataset]], folder: Path) -> None:
    """Write each series into ``folder/<series number>/`` through a temporary folder renamed in place."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for series in datasets:
            sub = tmp / f"series{int(series[0].SeriesNumber):02d}_{series[0].Modality}"
            sub.mkdir(parents=True)
            for ds in series:
                ds.save_as(sub / f"IM{int(ds.InstanceNumber):05d}.dcm", enforce_file_format=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dicom_seg(
    labels: np.ndarray,
    scan: Scan,
    path: str | os.PathLike,
    segments: Sequence[SegmentSpec],
    *,
    model: str = "",
    modality: str = "CT",
    channel_names: Sequence[str] = (),
    reference_channel: int = 0,
) -> DicomSegResult:
    """Write ``labels`` (written values on the scan's (X, Y, Z) grid) as a DICOM Segmentation (BINARY, one segment
    per entry of ``segments``, empty frames omitted), atomically.

    A DICOM series input is referenced as it is (see the module docstring for missing UIDs). Any other input is
    first written as a DICOM image series, ``<path without .seg.dcm>.dicom/``, one series per channel
    (``modality``: ``CT`` or ``MR``; ``channel_names`` as series descriptions), and the SEG references channel
    ``reference_channel``'s series.

    Raises:
        InputError: a source DICOM file is unreadable or has no SOP class.
        ValueError: ``labels`` is not on the scan's grid, or ``modality`` is neither CT nor MR.
    """
    labels = np.asarray(labels)
    path = Path(path)
    if labels.shape != scan.spatial_shape:
        raise ValueError(f"labels of shape {labels.shape} do not match the scan's spatial shape {scan.spatial_shape}")
    result = DicomSegResult(path)
    case = scan.case
    if case.kind == "dicom":
        sources, result.generated = _source_headers(case.files, case.source)
        if len(sources) != labels.shape[2]:
            raise InputError(case.source, f"{len(sources)} DICOM files for {labels.shape[2]} slices")
    else:
        if modality not in _IMAGE_SOP_CLASSES:
            raise ValueError(f"modality must be one of {', '.join(_IMAGE_SOP_CLASSES)}, got {modality!r}")
        if not 0 <= reference_channel < scan.array.shape[0]:
            raise ValueError(
                f"reference_channel {reference_channel} is not a channel of a {scan.array.shape[0]}-channel scan"
            )
        study = _new_study(scan, case.case_id)
        names = list(channel_names) or [f"channel{c}" for c in range(scan.array.shape[0])]
        series = [_series_datasets(scan, c, modality, study, names[c]) for c in range(scan.array.shape[0])]
        result.series_folder = path.with_name(path.name.removesuffix(SUFFIXES["dicom-seg"]) + SERIES_SUFFIX)
        _write_series(series, result.series_folder)
        sources = series[reference_channel]
    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_frames(_segment_numbers(labels, segments)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(segments, model),
        series_instance_uid=_uid("seg series", first.SeriesInstanceUID, model),
        series_number=900,
        sop_instance_uid=_uid("seg", first.SeriesInstanceUID, model, path.name),
        instance_number=1,
        manufacturer="medseg3d",
        manufacturer_model_name=(model or "medseg3d")[:64],
        software_versions=__version__,
        device_serial_number="none",
        series_description=f"medseg3d {model}".strip()[:64],
        content_label="MEDSEG3D",
        content_description="automatic segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return result


def read_dicom_seg(path: str | os.PathLike, source_uids: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
    """A DICOM SEG back as a label map of segment numbers (X, Y, Z), frame k on source instance ``source_uids[k]``,
    and segment number -> label. For tests and ``resume``."""
    seg = hd.seg.segread(path)
    frames = seg.get_pixels_by_source_instance(list(source_uids), combine_segments=True, skip_overlap_checks=True)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    return np.asarray(frames).transpose(2, 1, 0), names
