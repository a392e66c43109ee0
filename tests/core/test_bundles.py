"""A bundle is found by path, or by name in $MEDSEG3D_BUNDLES (the container's bundles); `--version` names the
versions a bug report needs."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from medseg3d import __version__
from medseg3d.cli import build_parser, main
from medseg3d.core.bundles import BUNDLES_ENV, find_bundle

REPO = Path(__file__).resolve().parents[2]


def _bundle(root: Path, name: str) -> Path:
    (root / name / "configs").mkdir(parents=True)
    return root / name


def test_a_name_is_looked_up_in_each_entry_of_the_variable_in_order(tmp_path, monkeypatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    only_second = _bundle(second, "ct")
    in_both = _bundle(first, "brats")
    _bundle(second, "brats")
    (first / "not_a_bundle").mkdir()  # a folder without configs/ is skipped
    _bundle(second, "not_a_bundle")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(BUNDLES_ENV, f"{first}:{second}")
    assert find_bundle("ct") == only_second
    assert find_bundle("brats") == in_both
    assert find_bundle("not_a_bundle") == second / "not_a_bundle"


def test_a_folder_given_as_a_path_wins_and_an_unknown_name_is_returned_unchanged(tmp_path, monkeypatch) -> None:
    _bundle(tmp_path / "elsewhere", "brats")
    local = _bundle(tmp_path, "brats")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path / "elsewhere"))
    assert find_bundle("brats") == Path("brats") and Path("brats").resolve() == local
    assert find_bundle("missing") == Path("missing")
    monkeypatch.delenv(BUNDLES_ENV)
    assert find_bundle(tmp_path / "elsewhere" / "brats") == tmp_path / "elsewhere" / "brats"


def test_infer_takes_a_bundle_by_name(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(BUNDLES_ENV, str(REPO / "bundles"))
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["infer", "in", "out", "--bundle", "ct_aorta_resunet_3d"])
    assert args.bundle == REPO / "bundles" / "ct_aorta_resunet_3d"


def test_version_names_medseg3d_torch_and_monai(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"medseg3d {__version__} (torch {version('torch')}, monai {version('monai')})"
    )
