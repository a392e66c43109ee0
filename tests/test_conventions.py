"""The package's conventions, enforced: transform pairs, MONAI keyword names, no unsafe checkpoint loads."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from monai.transforms import MapTransform, Transform

import medseg3d.transforms.array as array
import medseg3d.transforms.dictionary as dictionary
import medseg3d.transforms.slices as slices

REPO = Path(__file__).resolve().parents[1]


def _classes(module, base) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, base)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
    }


def test_every_dictionary_transform_has_its_array_twin() -> None:
    arrays = {**_classes(array, Transform), **_classes(slices, Transform)}
    dicts = _classes(dictionary, MapTransform)
    assert dicts, "no dictionary transform found"
    for name in dicts:
        assert name.endswith("d"), f"{name}: dictionary transforms end in 'd'"
        assert name[:-1] in arrays, f"{name} has no array twin {name[:-1]} in transforms/array.py or slices.py"
    for name in arrays:
        assert f"{name}d" in dicts, f"{name} has no dictionary form {name}d in transforms/dictionary.py"


@pytest.mark.parametrize("name", sorted(_classes(dictionary, MapTransform)))
def test_dictionary_transforms_take_monai_keywords(name: str) -> None:
    params = inspect.signature(getattr(dictionary, name).__init__).parameters
    assert list(params)[1] == "keys"
    assert "allow_missing_keys" in params


def test_checkpoints_only_load_with_weights_only() -> None:
    offenders = []
    for path in REPO.glob("**/*.py"):
        if ".venv" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_code_and_configs_are_ascii() -> None:
    """MONAI reads bundle configs with the locale's encoding (ASCII under LANG=C, as on many clusters)."""
    offenders = []
    for pattern in ("**/*.py", "**/*.yaml", "**/*.json", "**/*.conf"):
        for path in REPO.glob(pattern):
            if ".venv" in path.parts or "demo_out" in path.parts:
                continue
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                if any(byte > 127 for byte in line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, f"non-ASCII characters: {offenders}"
