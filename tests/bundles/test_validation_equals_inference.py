"""Validation = inference: the label maps a bundle's validation scores are the ones `medseg3d infer` writes.

A raw BraTS tree is prepared by ``prep_brats``; the bundle's ``validate#evaluator`` runs on the prepared
validation fold and ``medseg3d infer`` on the same cases' raw folders, with the same (random) weights. After the
padding ``prep_brats`` added is cropped and the labels are written in the edition's values, the two agree voxel
for voxel: the same preprocessing (``medseg3d.transforms.brats``), inferer, decoding and postprocessing rules.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events

from medseg3d.bundle.workflow import make_workflow
from medseg3d.core.constants import EDITIONS
from medseg3d.data.dataset_json import fold_datalists
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.preparation.brats import PrepOptions, prep_brats
from medseg3d.transforms.array import CropPadding
from medseg3d.transforms.decode import logits_to_labels

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SHAPE = (44, 37, 29)  # non-cubic and not a multiple of 16: prep_brats and inference pad it alike
NETWORK = {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]}
# the bundles' rule (the largest tumour component) and one whose effect always shows: every NCR component removed
RULES = {"all": {"keep_largest": 1}, 1: {"min_size": 10**6}}
CASES = {
    "brats_mri_resunet_3d": {**NETWORK, "roi_size": [32, 32, 16]},
    "brats_mri_slicestack_2p5d": {**NETWORK, "roi_size": [32, 32]},
}


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> tuple[Path, Path]:
    """A raw BraTS 2021 tree of 4 cases and its prepared dataset (2 folds)."""
    root = tmp_path_factory.mktemp("brats_equal")
    write_brats_tree(root / "raw", cases=4, edition="2021", shape=SHAPE, seed=3)
    prep_brats(root / "raw", root / "prepared", PrepOptions(folds=2))
    return root / "raw", root / "prepared"


def _validation_labels(bundle: Path, overrides: dict, weights: dict, output_mode: str) -> dict[str, np.ndarray]:
    """Prepared labels (X, Y, Z) per validation case, as the bundle's validation decoded and postprocessed them."""
    parser = make_workflow(bundle, "train", overrides).parser
    parser.get_parsed_content("network").load_state_dict(weights)
    evaluator = parser.get_parsed_content("validate#evaluator")
    found: dict[str, np.ndarray] = {}

    def keep(engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output, strict=True):
            pred = output["pred"].detach().cpu()
            # the encoded masks back to labels: regions nest (regions_to_labels), one-hot labels by argmax
            found[item["case_id"]] = logits_to_labels(pred * 2 - 1, output_mode)

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, keep)
    evaluator.run()
    return found


@pytest.mark.parametrize("output_mode", ["regions", "labels"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_validation_scores_the_label_maps_medseg3d_infer_writes(
    brats: tuple[Path, Path], tmp_path: Path, name: str, output_mode: str
) -> None:
    from medseg3d.cli import main

    _, prepared = brats
    bundle = BUNDLES / name
    network = {**CASES[name], "output_mode": output_mode, "postprocess": RULES}
    cpu = {"device": "$torch.device('cpu')", "amp": False, "num_workers": 0, "cache": "none"}
    train = {**network, **cpu, "dataset_dir": str(prepared), "output_dir": str(tmp_path / "run")}
    torch.manual_seed(0)
    weights = make_workflow(bundle, "train", train).parser.get_parsed_content("network_def").state_dict()
    validated = _validation_labels(bundle, train, weights, output_mode)

    cases = {entry["case_id"]: entry for entry in json.loads((prepared / "dataset.json").read_text())["training"]}
    validation = [cases[entry["case_id"]] for entry in fold_datalists(prepared, 0)[1]]  # with source and pad
    assert sorted(validated) == sorted(entry["case_id"] for entry in validation) and len(validated) == 2
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for entry in validation:  # the raw case folders, without their segmentation
        shutil.copytree(entry["source"], inputs / entry["case_id"], ignore=shutil.ignore_patterns("*seg*"))
    torch.save(weights, tmp_path / "weights.pt")
    out = tmp_path / "pred"
    args = [part for key, value in network.items() for part in (f"--{key}", str(value).replace(" ", ""))]
    command = ["infer", str(inputs), str(out), "--bundle", str(bundle), "--checkpoint", str(tmp_path / "weights.pt")]
    assert main([*command, "--device", "cpu", *args]) == 0

    to_source = EDITIONS["2021"].to_source
    for entry in validation:
        labels = np.asarray(CropPadding(entry["pad"])(validated[entry["case_id"]][None]))[0]
        expected = np.vectorize(to_source.get)(labels).astype(np.uint8)
        written = np.asarray(nib.load(out / f"{entry['case_id']}.nii.gz").dataobj)
        assert written.shape == SHAPE
        assert (written > 0).sum() > 100, "the comparison needs predicted tumour"
        assert not (written == 1).any(), "inference applied the postprocessing rules"
        np.testing.assert_array_equal(written, expected, err_msg=entry["case_id"])
