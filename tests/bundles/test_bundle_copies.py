"""The files every bundle carries alike are identical copies, so a change to one without the others fails.

Each bundle folder stays self-contained (``python -m monai.bundle run`` from the folder, no config outside it),
so the overlays and ``logging.conf`` are copies; they hold wiring only (the factories in ``medseg3d`` do the
work), and this test keeps the copies from drifting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from monai.bundle import ConfigParser

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(path.name for path in BUNDLES.iterdir() if (path / "configs" / "common.yaml").is_file())
SHARED = ["evaluate.yaml", "multi_gpu_train.yaml", "logging.conf"]


def test_there_are_bundles_to_compare() -> None:
    assert len(NAMES) >= 3, NAMES


@pytest.mark.parametrize("filename", SHARED)
def test_shared_files_are_identical_in_every_bundle(filename: str) -> None:
    reference = (BUNDLES / NAMES[0] / "configs" / filename).read_bytes()
    differ = [name for name in NAMES[1:] if (BUNDLES / name / "configs" / filename).read_bytes() != reference]
    assert not differ, f"configs/{filename} of {', '.join(differ)} differs from {NAMES[0]}'s: change every copy"


def _strings(value: object):
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("name", NAMES)
def test_no_config_refers_outside_its_bundle(name: str) -> None:
    """No ``%file#id`` macro (MONAI reads the file it names): each bundle folder runs on its own. A macro of an id
    in the same config (``%train#crop``: a second instance of that item) names no file."""
    for path in sorted((BUNDLES / name / "configs").glob("*.yaml")):
        strings = _strings(yaml.safe_load(path.read_text()))
        macros = [text for text in strings if text.startswith("%") and ConfigParser.split_path_id(text[1:])[0]]
        assert not macros, f"{path}: {macros}"
