"""Names the rest of the package relies on: dictionary keys, BraTS editions, label values and regions.

Every BraTS edition ships the same four MRI sequences under different file suffixes and (since 2023)
different label values. The prepared dataset always uses one channel order and one consecutive label
convention, recorded here, so that training and inference never depend on the source edition.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dictionary keys used by the transforms and datalists (MONAI's own names where MONAI has one).
IMAGE = "image"
LABEL = "label"
CASE_ID = "case_id"
INFER_SUMMARY = "summary.csv"  # `medseg3d infer`'s table of cases, which `medseg3d evaluate --classes` reads
PROBABILITY_PREFIX = "p_"  # its column of each class's probability (a multitask model): p_<name>
CLASS_KEY = "class"  # a case's class index for the multitask network (-1: unknown)

# Case classes the multitask network learns, per dataset.json field, in index order: the last is the positive
# class of a two-class AUC (HGG). A field not listed here (a CSV column given to `medseg3d datalist --classes`)
# takes its names from the bundle's `class_names`, or the sorted values the training cases hold.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "grade": ("LGG", "HGG"),
    "tumour_type": ("GLI", "MEN", "MET", "PED", "SSA"),  # BraTS 2023 cohorts: glioma, meningioma, metastases,
}  # paediatric, sub-Saharan African glioma

# Channel order of every prepared BraTS image (nnU-Net's order for BraTS): channel i is MODALITIES[i].
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# Consecutive labels of the prepared dataset. 0 is background.
PREPARED_LABELS: dict[str, int] = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
LABEL_DESCRIPTIONS: dict[str, str] = {
    "background": "background and healthy tissue",
    "NCR": "necrotic tumour core (2019-2020: necrotic and non-enhancing tumour core)",
    "ED": "peritumoural edema (2023: surrounding non-enhancing FLAIR hyperintensity, SNFH)",
    "ET": "GD-enhancing tumour",
}

# The BraTS label table of `medseg3d infer --output_format seg.nrrd/dicom-seg` (docs/outputs.md): each sub-region's
# colour and its codes (SCHEME^VALUE^MEANING) from DICOM's context groups for brain lesions (CID 7168/7169).
# SNOMED CT has necrosis and edema; for the enhancing part DICOM's group uses NCIt's "Enhancing Lesion".
BRATS_SEGMENTS: dict[str, dict[str, object]] = {
    "NCR": {"colour": (255, 0, 0), "category": "SCT^49755003^Morphologically Abnormal Structure",
            "type": "SCT^6574001^Necrosis", "description": "necrotic tumour core"},
    "ED": {"colour": (0, 200, 0), "category": "SCT^49755003^Morphologically Abnormal Structure",
           "type": "SCT^79654002^Edema", "description": "peritumoural edema"},
    "ET": {"colour": (255, 220, 0), "category": "SCT^49755003^Morphologically Abnormal Structure",
           "type": "NCIt^C113842^Enhancing Lesion", "description": "enhancing tumour"},
}  # fmt: skip

# BraTS evaluation regions, as sets of prepared label values.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

# File names of the images the project reads (``medseg3d.data.reader``), lower case, longest match first: NIfTI
# through nibabel, NRRD and MetaImage (a detached ``.nhdr``/``.mhd`` header names its data file) through SimpleITK.
# DICOM comes as series folders; DICOM_EXTENSIONS only help recognise slice files.
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
ITK_EXTENSIONS: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_EXTENSIONS: tuple[str, ...] = (*NIFTI_EXTENSIONS, *ITK_EXTENSIONS)
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom", ".ima")

# Spellings of each modality seen in the wild (file-name suffix tokens, lower case). The first one is
# each edition's own; the rest let prep_brats pair modalities of re-named or raw trees.
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1native"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1contrast"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "fla", "t2flair"),
}
SEG_ALIASES: tuple[str, ...] = ("seg", "segm", "label", "labels", "mask")


@dataclass(frozen=True)
class BratsEdition:
    """How one BraTS edition names its files and labels.

    Attributes:
        name: the edition, e.g. ``"2021"``.
        suffixes: file-name suffix token of each modality in ``MODALITIES`` order, plus ``seg``.
        separator: the character joining case ID and suffix (``_`` before 2023, ``-`` since).
        label_values: source label value of each prepared label (``NCR``, ``ED``, ``ET``).
        has_grade: whether the layout records the HGG/LGG grade.
        case_prefix: how case IDs of this edition start (used to detect the edition).
    """

    name: str
    suffixes: dict[str, str]
    separator: str
    label_values: dict[str, int]
    has_grade: bool
    case_prefix: str

    @property
    def source_labels(self) -> tuple[int, ...]:
        """Label values allowed in this edition's segmentations, background included."""
        return (0, *sorted(self.label_values.values()))

    @property
    def to_prepared(self) -> dict[int, int]:
        """Map from source label value to prepared (consecutive) label value."""
        mapping = {0: 0}
        for name, value in self.label_values.items():
            mapping[value] = PREPARED_LABELS[name]
        return mapping

    @property
    def to_source(self) -> dict[int, int]:
        """Map from prepared label value back to this edition's label value (the inverse recorded)."""
        return {prepared: source for source, prepared in self.to_prepared.items()}

    def file_name(self, case_id: str, key: str, extension: str = ".nii.gz") -> str:
        """File name of modality (or ``"seg"``) ``key`` of ``case_id``.

        >>> EDITIONS["2023"].file_name("BraTS-GLI-00001-000", "flair")
        'BraTS-GLI-00001-000-t2f.nii.gz'
        >>> EDITIONS["2021"].file_name("BraTS2021_00000", "t1ce")
        'BraTS2021_00000_t1ce.nii.gz'
        """
        return f"{case_id}{self.separator}{self.suffixes[key]}{extension}"


_LEGACY_SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
_LEGACY_LABELS = {"NCR": 1, "ED": 2, "ET": 4}

EDITIONS: dict[str, BratsEdition] = {
    "2019": BratsEdition("2019", _LEGACY_SUFFIXES, "_", _LEGACY_LABELS, has_grade=True, case_prefix="BraTS19_"),
    "2020": BratsEdition("2020", _LEGACY_SUFFIXES, "_", _LEGACY_LABELS, has_grade=True, case_prefix="BraTS20_"),
    "2021": BratsEdition("2021", _LEGACY_SUFFIXES, "_", _LEGACY_LABELS, has_grade=False, case_prefix="BraTS2021_"),
    "2023": BratsEdition(
        "2023",
        {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
        "-",
        {"NCR": 1, "ED": 2, "ET": 3},
        has_grade=False,
        case_prefix="BraTS-",
    ),
}
