"""Security: checkpoints are data (never unpickled into code), input names cannot write outside the output
folder, and nothing read from input data (dataset.json, file and folder names) is evaluated as a config
expression. The trust model is in docs/security.md."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pickle
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from medseg3d.cli import main
from medseg3d.core.checkpoint_format import load_checkpoint, save_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.networks import res_unet

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"
SOURCE_TREES = ("medseg3d", "data_prep", "bundles", "benchmarks")
INFER = {"roi_size": [24, 24, 16], "network_def#channels": [4, 8], "network_def#strides": [2], "progress": False}
INFER_ARGS = [arg for key, value in INFER.items() for arg in (f"--{key}", str(value))]
TRAIN = {
    "max_epochs": 1, "val_interval": 1, "iterations_per_epoch": 0, "roi_size": [32, 32, 32], "num_workers": 0,
    "batch_size": 1,
    "network_def#channels": [4, 8], "network_def#strides": [2],
}  # fmt: skip
TRAIN_ARGS = [arg for key, value in TRAIN.items() for arg in (f"--{key}", str(value))]


# ------------------------------------------------------------------------------------------------------ checkpoints


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Calls in Python ``source`` that could unpickle code: ``torch.load`` without ``weights_only=True`` (also
    through ``import torch as th`` and ``from torch import load``), ``pickle``/``dill``/``joblib`` loads,
    ``allow_pickle=True``, ``yaml.load``/``yaml.unsafe_load``, ``torch.jit.load``.

    >>> unsafe_loads("import torch as th\\nth.load(p)\\nth.load(p, weights_only=True)")
    ['<source>:2: th.load(p)']
    """
    tree = ast.parse(source, filename)
    torch_load_names = {"torch.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_load_names |= {f"{a.asname}.load" for a in node.names if a.name == "torch" and a.asname}
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_load_names |= {alias.asname or alias.name for alias in node.names if alias.name == "load"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        weights_only = keywords.get("weights_only")
        bad = (
            (name in torch_load_names and not (isinstance(weights_only, ast.Constant) and weights_only.value is True))
            or re.fullmatch(r"(c?pickle|dill|joblib|_pickle)\.(load|loads|Unpickler)", name)
            or name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load")
            or any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords)
        )  # fmt: skip
        if bad:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_finds_unsafe_loads() -> None:
    source = (
        "from torch import load as tl\nimport torch as th, pickle, numpy as np\n"
        "tl(p)\nth.load(p, weights_only=False)\nth.load(p, weights_only=flag)\npickle.loads(b)\n"
        "np.load(p, allow_pickle=True)\nth.load(p, map_location='cpu', weights_only=True)\n"
    )
    assert [line.split(":")[1] for line in unsafe_loads(source)] == ["3", "4", "5", "6", "7"]


def test_every_checkpoint_load_in_the_source_tree_is_weights_only() -> None:
    """Python: every ``torch.load(`` passes ``weights_only=True`` and nothing else unpickles; bundle configs (whose
    ``$`` expressions are Python too): every ``torch.load(`` has ``weights_only=True`` inside the call."""
    found, checked = [], 0
    for tree in SOURCE_TREES:
        for path in sorted((REPO / tree).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if path.suffix == ".py":
                checked += 1
                found += unsafe_loads(text, str(path.relative_to(REPO)))
            elif path.suffix in (".yaml", ".yml", ".json", ".cfg", ".toml"):
                for match in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
                    if not re.search(r"weights_only\s*=\s*True", match.group(0)):
                        line = text.count("\n", 0, match.start()) + 1
                        found.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)}")
                if re.search(r"\b(pickle|dill|joblib)\.(load|loads)\b", text):
                    found.append(f"{path.relative_to(REPO)}: unpickles")
    assert checked > 50, "the source trees were not found"
    assert found == [], "\n".join(found)


class _TouchesMarker:
    """Unpickling this runs ``touch MARKER`` (harmless, and visible): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return res_unet(4, 3, channels=(4, 8), strides=(2,)).state_dict()


def _write_malicious(path: Path, marker: Path, layout: str) -> Path:
    payload = _TouchesMarker(marker)
    if layout == "torch-zip":
        torch.save({"network": _tiny_state(), "extra": payload}, path)
    elif layout == "raw-pickle":  # the legacy (non-zip) format torch.load also reads
        with open(path, "wb") as f:
            pickle.dump({"network": payload}, f, protocol=2)
    else:  # a bare state dict with one poisoned entry
        torch.save({**_tiny_state(), "model.0.conv.unit0.conv.weight": payload}, path)
    return path


LAYOUTS = ["torch-zip", "raw-pickle", "bare-state-dict"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_malicious_checkpoint_is_live(tmp_path: Path, layout: str) -> None:
    """The control: loaded the unsafe way, the payload does run (so the refusals below are not vacuous)."""
    marker = tmp_path / "PWNED"
    path = _write_malicious(tmp_path / "evil.pt", marker, layout)
    # The unsafe load, on purpose (the payload only touches MARKER); the legacy reader then finds no magic number.
    unsafe_load = torch.load
    with contextlib.suppress(RuntimeError):
        unsafe_load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_infer_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, capsys, layout: str) -> None:
    marker = tmp_path / "PWNED"
    evil = _write_malicious(tmp_path / "evil.pt", marker, layout)
    inputs = tmp_path / "inputs"
    write_brats_tree(inputs, cases=1, edition="2021", shape=(24, 20, 16), seed=0)
    out = tmp_path / "out"
    code = main(["infer", str(inputs), str(out), "--bundle", str(BUNDLE), "--checkpoint", str(evil), *INFER_ARGS])
    err = capsys.readouterr().err
    assert code == 2
    assert str(evil) in err and "refused: the checkpoint holds objects that would run code" in err, err
    assert not marker.exists()
    assert not (out / "summary.csv").exists()  # refused before any case


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_checkpoint_loader_refuses_it(tmp_path: Path, layout: str) -> None:
    """``load_checkpoint`` (training resume, cross-validation), ``Checkpoints.restore`` (``train --resume``),
    ``load_into`` (the evaluate overlay's ``LoadWeights``) and the ``Predictor``."""
    from medseg3d.core.checkpoint_format import load_into
    from medseg3d.inference.predictor import load_network_weights
    from medseg3d.training.handlers.checkpoints import Checkpoints

    marker = tmp_path / "PWNED"
    evil = _write_malicious(tmp_path / "evil.pt", marker, layout)
    net = res_unet(4, 3, channels=(4, 8), strides=(2,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    attempts = [
        lambda: load_checkpoint(evil),
        lambda: Checkpoints(tmp_path / "run", net, optimizer).restore(None, resume=str(evil)),
        lambda: load_into(net, evil),
        lambda: load_network_weights(net, evil),
    ]
    for attempt in attempts:
        with pytest.raises(InputError, match="refused") as info:
            attempt()
        assert str(evil) in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------ output paths

# File and folder names that try to escape: separators of other systems, traversal, absolute-looking, URL-encoded,
# look-alike and bidirectional unicode. (A name starting with "." is a hidden entry, skipped by design.)
HOSTILE_NAMES = [
    "x..\\..\\..\\evil",
    "C:\\Windows\\System32\\evil",
    "\\\\server\\share\\evil",
    "%2e%2e%2f%2e%2e%2fevil",
    "\uff0e\uff0e\uff0fevil",  # fullwidth "../", NFKC-normalises to a real traversal
    "a\u2215..\u2215..\u2215b",  # division slash
    "\u202eevil",  # right-to-left override
    "\u540d\u524d \u00fcn\u00efc\u00f8d\u00e9",  # CJK and accented letters
    "~root",
    "-rf",
]


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[bool, int]]:
    return {
        str(p): (p.is_symlink(), p.lstat().st_size)
        for p in root.rglob("*")
        if skip not in p.parents and p != skip and p.exists()
    }


def _assert_confined(out: Path) -> None:
    base = out.resolve()
    for path in out.rglob("*"):
        assert not path.is_symlink(), path
        assert path.resolve().is_relative_to(base), path


def test_case_ids_from_hostile_names_stay_inside_the_output_folder(tiny_prepared: Path, tmp_path: Path) -> None:
    from medseg3d.data.scans import find_scans
    from medseg3d.inference.runner import output_path

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = sorted((tiny_prepared / "imagesTr").glob("*.nii.gz"))[0]  # (X, Y, Z, 4): a BraTS case in one file
    for name in HOSTILE_NAMES:
        shutil.copy(image, inputs / f"{name}.nii.gz")
    raw = write_brats_tree(tmp_path / "raw", cases=1, edition="2021", shape=(24, 20, 16), seed=0)[0]
    folder = inputs / "C:\\..\\..\\tmp"  # a case folder whose files carry a traversal prefix
    folder.mkdir()
    for path in raw.glob("*.nii.gz"):
        if "seg" not in path.name:
            shutil.copy(path, folder / path.name.replace(raw.name, "y\\..\\..\\evil"))
    out = tmp_path / "out"
    cases = find_scans(inputs, expect="brats", exclude=[out])
    assert len(cases) == len(HOSTILE_NAMES) + 1 and not any(case.problem for case in cases)
    for case in cases:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", case.case_id), case.case_id
        assert output_path(out, case.case_id).parent == out
    # A link planted where an output will go, pointing outside: it is replaced, its target left alone.
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"precious")
    out.mkdir()
    (out / f"{cases[0].case_id}.nii.gz").symlink_to(victim)

    weights = _checkpoint(tmp_path / "weights")
    before = _snapshot(tmp_path, out)
    code = main(["infer", str(inputs), str(out), "--bundle", str(BUNDLE), "--checkpoint", str(weights), *INFER_ARGS])
    assert code == 0
    assert victim.read_bytes() == b"precious"
    _assert_confined(out)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c.case_id}.nii.gz" for c in cases)
    after = _snapshot(tmp_path, out)
    assert {k: v for k, v in after.items() if k not in before} == {}  # nothing new outside the output folder
    assert after == before


def _checkpoint(folder: Path) -> Path:
    path = folder / "weights.pt"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint({"network": res_unet(4, 3, channels=(4, 8), strides=(2,)).state_dict()}, path)
    return path


def test_prep_brats_case_ids_from_hostile_names_stay_inside_the_output_folder(tmp_path: Path) -> None:
    from medseg3d.preparation.brats import PrepOptions, prep_brats

    raw = tmp_path / "raw"
    folders = write_brats_tree(raw, cases=len(HOSTILE_NAMES), edition="2021", shape=(24, 20, 16), seed=0)
    for folder, name in zip(folders, HOSTILE_NAMES, strict=True):
        target = folder.parent / f"{name}_dir"
        for path in folder.iterdir():
            path.rename(folder / path.name.replace(folder.name, name))
        folder.rename(target)
    out = tmp_path / "prepared"
    before = _snapshot(tmp_path, out)
    result = prep_brats(raw, out, PrepOptions(edition="2021", folds=2))
    assert not result.rejected, result.rejected
    assert len(result.rows) == len(HOSTILE_NAMES)
    _assert_confined(out)
    for row in result.rows:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", row["case_id"]), row["case_id"]
    assert _snapshot(tmp_path, out) == before


# ------------------------------------------------------------------------------------------------------ expressions


# What MONAI's config parser would act on: "$" runs Python, "@" resolves a config id, "%" loads another file.
def _payloads(marker_dir: Path) -> dict[str, str]:
    return {
        "expression": f"$__import__('pathlib').Path({str(marker_dir / 'PWNED_expression')!r}).touch()",
        "reference": "@network_def",
        "macro": "%configs/train.yaml#network_def",
        "import": "$import os",
    }


def _poison(dataset: Path, payloads: dict[str, str]) -> None:
    path = dataset / "dataset.json"
    content = json.loads(path.read_text())
    content["name"] = payloads["expression"].replace("PWNED_expression", "PWNED_name")
    content["description"] = payloads["reference"]
    entry = content["training"][0]
    entry["image"], entry["label"], entry["case_id"] = payloads["expression"], payloads["reference"], payloads["macro"]
    content["training"][1]["case_id"] = payloads["import"]
    path.write_text(json.dumps(content, indent=2))


def test_dataset_json_strings_are_never_evaluated(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    """Expressions as image/label paths, case IDs and metadata: a missing file, reported, never run."""
    from medseg3d.data.dataset_json import fold_datalists

    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_prepared, dataset)
    payloads = _payloads(tmp_path)
    _poison(dataset, payloads)
    with pytest.raises(InputError, match="missing") as info:
        fold_datalists(dataset, 0)
    assert payloads["expression"] in str(info.value)
    run = tmp_path / "run"
    args = ["train", "--bundle", str(BUNDLE), *TRAIN_ARGS, "--dataset_dir", str(dataset), "--output_dir", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "listed as image" in err and payloads["expression"] in err, err
    assert list(tmp_path.glob("PWNED*")) == []


@pytest.mark.slow
def test_training_on_files_named_like_expressions_evaluates_none(
    tiny_prepared: Path, tmp_path: Path, monkeypatch
) -> None:
    """The files exist under expression-like names (and case IDs are expressions): training runs on them as plain
    paths and strings. Run in ``tmp_path``, so a relative ``touch`` would land there."""
    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_prepared, dataset)
    content = json.loads((dataset / "dataset.json").read_text())
    names = ["$__import__('os').system('touch PWNED_{}')", "@network_def_{}", "%configs#x_{}"]
    for number, entry in enumerate(content["training"]):
        for key in ("image", "label"):
            name = names[number % len(names)].format(f"{key}{number}")
            renamed = Path(entry[key]).parent / f"{name}.nii.gz"
            (dataset / entry[key]).rename(dataset / renamed)
            entry[key] = renamed.as_posix()
        entry["case_id"] = names[number % len(names)].format(f"case{number}")
    (dataset / "dataset.json").write_text(json.dumps(content, indent=2))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--bundle", str(BUNDLE), *TRAIN_ARGS, "--dataset_dir", "dataset", "--output_dir", "run"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["trainer"]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.rglob("PWNED*")) == []


def test_infer_paths_named_like_expressions_are_plain_paths(tiny_prepared: Path, tmp_path: Path, monkeypatch) -> None:
    """INPUT, OUTPUT and --checkpoint become bundle config values: a folder named ``$...`` once ran as Python."""
    monkeypatch.chdir(tmp_path)
    inputs = Path("$__import__('os').system('touch PWNED_input')")
    inputs.mkdir()
    shutil.copy(sorted((tiny_prepared / "imagesTr").glob("*.nii.gz"))[0], inputs / "case.nii.gz")
    checkpoint = Path("$__import__('os').system('touch PWNED_checkpoint')")
    shutil.copy(_checkpoint(tmp_path / "weights"), checkpoint)
    out = Path("@network")
    flags = ["--bundle", str(BUNDLE), "--checkpoint", str(checkpoint), *INFER_ARGS]
    assert main(["infer", str(inputs), str(out), *flags]) == 0
    assert (tmp_path / "@network" / "case.nii.gz").is_file()
    assert sorted(p.name for p in tmp_path.glob("PWNED*")) == []
    assert main(["infer", str(inputs), "%out", *flags]) == 0
    assert (tmp_path / "%out" / "case.nii.gz").is_file()


@pytest.mark.slow
def test_train_resume_of_a_run_folder_named_like_an_expression_evaluates_nothing(
    tiny_prepared: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", "--bundle", str(BUNDLE), *TRAIN_ARGS, "--dataset_dir", str(tiny_prepared), "--output_dir", "run"]
    assert main(args) == 0
    run = Path("$__import__('os').system('touch PWNED_resume')")
    Path("run").rename(run)
    try:
        assert main(["train", "--resume", str(run), "--max_epochs", "2"]) == 0
    finally:
        assert sorted(p.name for p in tmp_path.glob("PWNED*")) == []
