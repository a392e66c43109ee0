"""Every bundle's training augmentation keeps image and label aligned, and labels integer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg3d.bundle.workflow import make_workflow
from medseg3d.core.io import save_nifti

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SPATIAL = ("prob_rotate", "prob_zoom", "prob_elastic", "prob_flip")
INTENSITY = ("prob_brightness", "prob_gamma", "prob_gamma_inverted", "prob_noise", "prob_blur")


def _blocks(values: tuple[int, ...]) -> np.ndarray:
    """Blocky labels of 14-voxel cubes on a 48x40x32 grid."""
    rng = np.random.default_rng(0)
    label = np.zeros((48, 40, 32), np.uint8)
    for value in values:
        start = rng.integers(4, 20, 3)
        label[tuple(slice(s, s + 14) for s in start)] = value
    return label


@dataclass(frozen=True)
class Setup:
    """One bundle's augmentation check.

    Attributes:
        bundle: the bundle's folder name.
        overrides: patch size and samples per volume.
        image_shape, label_shape: of each sample.
        labels: the label values written (the case encodes them in the image).
        scale, offset: a voxel of label ``v`` holds ``scale * v + offset`` after the bundle's intensity preprocessing.
        channel: the image channel that carries the sample's label (the centre slice of a 2.5D stack).
        padding: image values below it are the zero padding rotation and zoom add.
        min_core, min_labelled: voxels of a sample away from label boundaries and padding, and of those, labelled.
        pooled: count those over all samples of the case (a 2D patch sampled on background may hold no label).
    """

    bundle: str
    overrides: dict
    image_shape: tuple[int, ...]
    label_shape: tuple[int, ...]
    labels: tuple[int, ...]
    scale: float
    offset: float
    channel: int
    padding: float
    min_core: int
    min_labelled: int
    pooled: bool = False

    def case(self, tmp_path: Path) -> dict[str, str]:
        """Every image channel encodes its voxel's label (``scale`` x label + ``offset``) so alignment is visible."""
        label = _blocks(self.labels)
        if self.bundle.startswith("ct_"):  # HU on a 1.5 mm grid (the bundle's spacing): 0 HU body, 400 HU aorta
            image, affine = (label.astype(np.int16) * 400), np.diag([1.5, 1.5, 1.5, 1.0])
        else:  # four modalities, normalised over the non-zero voxels by the bundle: raw values as they come out
            image, affine = np.repeat((label.astype(np.float32) * 10 + 5)[..., None], 4, axis=-1), np.eye(4)
        save_nifti(image, affine, tmp_path / "image.nii.gz")
        save_nifti(label, affine, tmp_path / "label.nii.gz")
        return {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}

    def decode(self, image: np.ndarray) -> np.ndarray:
        return np.clip(np.round((image - self.offset) / self.scale), 0, max(self.labels))


SETUPS = [
    pytest.param(
        Setup("brats_mri_resunet_3d", {"roi_size": [32, 32, 24], "num_samples": 2}, (4, 32, 32, 24), (1, 32, 32, 24),
              (2, 1, 3), 10.0, 5.0, 0, 4.5, 1000, 200),
        id="brats_mri_resunet_3d",
    ),
    pytest.param(  # 2.5D: 5-slice stacks of 4 modalities, 2D patches; the label is the centre slice's
        Setup("brats_mri_slicestack_2p5d", {"roi_size": [32, 24], "num_samples": 4}, (20, 32, 24), (1, 32, 24),
              (2, 1, 3), 10.0, 5.0, 2, 4.5, 300, 100, pooled=True),
        id="brats_mri_slicestack_2p5d",
    ),
    pytest.param(  # HU window [-200, 800] -> [0, 1]: body 0.2, aorta 0.6, padding 0
        Setup("ct_aorta_resunet_3d", {"roi_size": [32, 32, 24], "num_samples": 2}, (1, 32, 32, 24), (1, 32, 32, 24),
              (1, 1), 0.4, 0.2, 0, 0.1, 1000, 200),
        id="ct_aorta_resunet_3d",
    ),
]  # fmt: skip


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spatial_augmentation_moves_image_and_label_together(tmp_path: Path, setup: Setup, seed: int) -> None:
    overrides = {"output_mode": "labels", **setup.overrides}
    overrides.update({name: 1.0 for name in SPATIAL})
    overrides.update({name: 0.0 for name in INTENSITY})
    workflow = make_workflow(BUNDLES / setup.bundle, "train", overrides)
    workflow.parser.parse()
    transform = workflow.parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed=seed)
    samples = transform(setup.case(tmp_path))
    assert len(samples) == setup.overrides["num_samples"]
    matches, shifted = [], []
    for sample in samples:
        image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
        assert image.shape == setup.image_shape and label.shape == setup.label_shape
        assert set(np.unique(label)) <= {0, *setup.labels}, "labels stay integer class values (nearest interpolation)"
        decoded = setup.decode(image[setup.channel])
        # Interpolated image and nearest-neighbour label may differ only where the label changes within a
        # voxel: compare away from label boundaries and from the zero padding rotation and zoom add.
        inside = ndimage.binary_erosion(image[setup.channel] > setup.padding, iterations=2)
        uniform = ndimage.maximum_filter(label[0], size=5) == ndimage.minimum_filter(label[0], size=5)
        core = inside & uniform
        tumour = core & (label[0] > 0)
        matches.append(decoded[core] == label[0][core])
        shifted.append(np.roll(decoded, 4, axis=0)[tumour] == label[0][tumour])
    if setup.pooled:
        matches, shifted = [np.concatenate(matches)], [np.concatenate(shifted)]
    for match, shift in zip(matches, shifted, strict=True):
        assert match.size > setup.min_core
        assert match.mean() > 0.99, f"image and label drifted apart: {match.mean():.3f} agreement"
        assert shift.size > setup.min_labelled, "the patch must hold labelled voxels (sampling by class)"
        assert shift.mean() < 0.95, "the check must be able to see a 4-voxel misalignment"
