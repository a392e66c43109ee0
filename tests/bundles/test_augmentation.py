"""The bundle's training augmentation keeps image and label aligned, and labels integer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg3d.bundle.workflow import make_workflow
from medseg3d.core.io import save_nifti

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_resunet_3d"
SPATIAL = ("prob_rotate", "prob_zoom", "prob_elastic", "prob_flip")
INTENSITY = ("prob_brightness", "prob_gamma", "prob_gamma_inverted", "prob_noise", "prob_blur")


def _case(tmp_path: Path) -> dict[str, str]:
    """Blocky labels; every image channel encodes its voxel's label (10 x label + 5) so alignment is visible."""
    rng = np.random.default_rng(0)
    label = np.zeros((48, 40, 32), np.uint8)
    for value in (2, 1, 3):
        start = rng.integers(4, 20, 3)
        label[tuple(slice(s, s + 14) for s in start)] = value
    image = np.repeat((label.astype(np.float32) * 10 + 5)[..., None], 4, axis=-1)
    save_nifti(image, np.eye(4), tmp_path / "image.nii.gz")
    save_nifti(label, np.eye(4), tmp_path / "label.nii.gz")
    return {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spatial_augmentation_moves_image_and_label_together(tmp_path: Path, seed: int) -> None:
    overrides = {"output_mode": "labels", "roi_size": [32, 32, 24], "num_samples": 2}
    overrides.update({name: 1.0 for name in SPATIAL})
    overrides.update({name: 0.0 for name in INTENSITY})
    workflow = make_workflow(BUNDLE, "train", overrides)
    workflow.parser.parse()
    transform = workflow.parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed=seed)
    samples = transform(_case(tmp_path))
    assert len(samples) == 2
    for sample in samples:
        image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
        assert image.shape == (4, 32, 32, 24) and label.shape == (1, 32, 32, 24)
        assert set(np.unique(label)) <= {0, 1, 2, 3}, "labels stay integer class values (nearest interpolation)"
        decoded = np.clip(np.round((image[0] - 5) / 10), 0, 3)
        # Interpolated image and nearest-neighbour label may differ only where the label changes within a
        # voxel: compare away from label boundaries and from the zero padding rotation and zoom add.
        inside = ndimage.binary_erosion(image[0] > 4.5, iterations=2)
        uniform = ndimage.maximum_filter(label[0], size=5) == ndimage.minimum_filter(label[0], size=5)
        core = inside & uniform
        assert core.sum() > 1000
        agreement = np.mean(decoded[core] == label[0][core])
        assert agreement > 0.99, f"image and label drifted apart: {agreement:.3f} agreement"
        tumour = core & (label[0] > 0)
        assert tumour.sum() > 200, "the patch must hold labelled voxels (sampling by class)"
        shifted = np.mean(np.roll(decoded, 4, axis=0)[tumour] == label[0][tumour])
        assert shifted < 0.95, "the check must be able to see a 4-voxel misalignment"
