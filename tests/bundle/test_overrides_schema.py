"""Each bundle's override schema (``configs/overrides.yaml``): complete, consistent with the configs, enforced."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from medseg3d.bundle.workflow import WORKFLOWS, Interval, bundle_schema, check_overrides, load_schema, make_workflow
from medseg3d.core.errors import InputError

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(path.name for path in BUNDLES.iterdir() if (path / "configs" / "common.yaml").is_file())
PLAIN = {"int": int, "number": (int, float), "bool": bool, "str": str, "list": (list, tuple), "paths": (str, list)}


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_setting_exists_with_its_declared_type(name: str, tmp_path: Path) -> None:
    schema = bundle_schema(BUNDLES / name)
    assert schema, f"{name} declares no override schema"
    parsers = [make_workflow(BUNDLES / name, w, {"output_dir": str(tmp_path)}).parser for w in WORKFLOWS]
    for key, entry in schema.items():
        holders = [p for p in parsers if key in p]
        assert holders, f"{name}/configs/overrides.yaml: {key} is in none of the bundle's workflows"
        for parser in holders:
            raw = parser[key]
            value = parser.get_parsed_content(key) if isinstance(raw, str) and raw[:1] in "$@" else raw
            if value is None:
                assert entry.get("nullable") or "type" not in entry or key == "class_weights", key
                continue
            if "type" in entry:
                assert isinstance(value, PLAIN[entry["type"]]), f"{key}: {value!r} is not {entry['type']}"
                assert entry["type"] != "int" or not isinstance(value, bool), key
            if "range" in entry:
                assert entry["range"].contains(value), f"{key}: the default {value!r} is out of its range"
            if "choices" in entry:
                assert value in entry["choices"], f"{key}: the default {value!r} is not among its choices"


@pytest.mark.parametrize("name", NAMES)
def test_the_settings_every_bundle_shares_are_declared_alike(name: str) -> None:
    reference, schema = bundle_schema(BUNDLES / "brats_mri_resunet_3d"), bundle_schema(BUNDLES / name)
    for key in ("learning_rate", "max_epochs", "batch_size", "num_workers", "roi_size", "overlap", "prob_flip"):
        assert schema[key] == reference[key], key


BUNDLE = BUNDLES / "brats_mri_resunet_3d"
CT = BUNDLES / "ct_aorta_resunet_3d"


@pytest.mark.parametrize(
    "bundle, workflow, overrides, message",
    [
        pytest.param(BUNDLE, "train", {"learning_rate": 0}, "learning_rate expects a positive number, got 0",
                     id="zero"),
        pytest.param(BUNDLE, "train", {"num_workers": -1}, "num_workers expects a number >= 0", id="negative"),
        pytest.param(BUNDLE, "train", {"prob_zoom": 1.2}, "prob_zoom expects a number in [0, 1], got 1.2", id="prob"),
        pytest.param(BUNDLE, "train", {"optimizer_name": "adam"}, "optimizer_name expects one of sgd, adamw",
                     id="choice"),
        pytest.param(BUNDLE, "train", {"cache": "ram"}, "cache expects one of memory, disk, none", id="cache"),
        pytest.param(BUNDLE, "train", {"roi_size": [32, 0, 32]}, "roi_size expects positive numbers", id="entries"),
        pytest.param(BUNDLE, "train", {"class_weights": 2}, "class_weights expects list", id="null-default-typed"),
        pytest.param(BUNDLE, "train", {"max_epochs": None}, "max_epochs expects int", id="not-nullable"),
        pytest.param(BUNDLE, "train", {"network_def#kind": "vnet"}, "network_def#kind expects one of unet, dynunet",
                     id="nested"),
        pytest.param(BUNDLE, "inference", {"overlap": 1.0}, "overlap expects a number in [0, 1), got 1.0",
                     id="fraction"),
        pytest.param(BUNDLE, "inference", {"divisible": 0}, "divisible expects a positive number", id="divisible"),
        pytest.param(CT, "inference", {"chunk_voxels": "all"}, "chunk_voxels expects int", id="nullable-typed"),
        pytest.param(CT, "inference", {"predictor#inverse_slab": 0}, "predictor#inverse_slab expects a positive",
                     id="nested-nullable"),
    ],
)  # fmt: skip
def test_bad_overrides_fail_naming_the_setting(bundle: Path, workflow: str, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match="bad override: .*" + re.escape(message)):
        make_workflow(bundle, workflow, overrides)


@pytest.mark.parametrize(
    "bundle, workflow, overrides",
    [
        pytest.param(BUNDLE, "train", {"class_weights": [1.0, 2.0, 2.0]}, id="list-for-null"),
        pytest.param(BUNDLE, "train", {"class_weights": None, "learning_rate": 1}, id="null-and-int-for-number"),
        pytest.param(CT, "inference", {"chunk_voxels": None, "predictor#inverse_slab": None}, id="nullable"),
        pytest.param(BUNDLE, "train", {"prob_flip": 0, "overlap": 0.0, "num_workers": 0}, id="closed-bounds"),
    ],
)
def test_good_overrides_pass(bundle: Path, workflow: str, overrides: dict) -> None:
    make_workflow(bundle, workflow, overrides)


def test_a_new_setting_is_declared_in_the_bundle_alone(tmp_path: Path) -> None:
    """A setting added to a bundle's configs and its overrides.yaml is checked with no change to medseg3d."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    with open(bundle / "configs" / "train.yaml", "a") as f:
        f.write("label_smoothing: 0.0\n")
    with open(bundle / "configs" / "overrides.yaml", "a") as f:
        f.write('label_smoothing: {type: number, range: "[0, 0.5]"}\n')
    make_workflow(bundle, "train", {"label_smoothing": 0.1})
    with pytest.raises(ValueError, match=r"label_smoothing expects a number in \[0, 0.5\], got 0.7"):
        make_workflow(bundle, "train", {"label_smoothing": 0.7})


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("lr: {type: float}\n", "lr: type must be one of int, number", id="type"),
        pytest.param("lr: {range: '0 to 1'}\n", "lr: range: expected an interval", id="interval"),
        pytest.param("lr: {range: '(1, 0)'}\n", "is empty", id="empty-interval"),
        pytest.param("lr: {minimum: 0}\n", "lr: unknown field(s) minimum", id="field"),
        pytest.param("lr: 3\n", "lr: expected a mapping", id="not-a-mapping"),
        pytest.param("[1, 2]\n", "expected a mapping of setting ids", id="list"),
        pytest.param("lr: {choices: sgd}\n", "choices must be a list", id="choices"),
    ],
)
def test_a_bad_schema_file_is_refused_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        load_schema(path)
    assert caught.value.path == str(path)


def test_without_a_schema_only_types_are_checked() -> None:
    parser = make_workflow(BUNDLE, "train", {}).parser
    check_overrides(parser, {"learning_rate": -1.0})  # no schema given: the type fits
    with pytest.raises(ValueError, match="learning_rate expects float"):
        check_overrides(parser, {"learning_rate": "fast"})


@pytest.mark.parametrize(
    "text, inside, outside, words",
    [
        pytest.param("(0, inf)", [1e-9, 5], [0, -1], "a positive number", id="positive"),
        pytest.param("[0, inf)", [0, 3.5], [-1e-9], "a number >= 0", id="non-negative"),
        pytest.param("[0, 1]", [0, 1, 0.5], [1.01, -0.1], "a number in [0, 1]", id="closed"),
        pytest.param("[0, 1)", [0, 0.99], [1], "a number in [0, 1)", id="half-open"),
        pytest.param("(-inf, 3]", [-1e9, 3], [3.5], "a number in (-inf, 3]", id="below"),
    ],
)
def test_intervals(text: str, inside: list[float], outside: list[float], words: str) -> None:
    interval = Interval.parse(text)
    assert all(interval.contains(v) for v in inside) and not any(interval.contains(v) for v in outside)
    assert interval.describe() == words
