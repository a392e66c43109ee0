"""``medseg3d export``: a bundle and its weights into a self-describing model folder that ``medseg3d infer --model``
runs without the bundle (``medseg3d/inference/model_folder.py`` reads it back; docs/export.md).

The bundle's inference config is resolved here, once: every ``@reference`` and ``$expression`` becomes the plain
value it had, and what is left is data (``model.json``): the preprocessing and sliding window as ``_target_`` +
arguments, the predictor's and runner's settings, the checkpoints' SHA-256, and the network files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg3d import __version__
from medseg3d.bundle.postprocessing import find_postprocessing
from medseg3d.bundle.workflow import make_workflow
from medseg3d.core.errors import InputError
from medseg3d.core.io import config_path, write_json
from medseg3d.inference.model_folder import (
    MODEL_FILE,
    MODEL_FORMAT,
    MODEL_VERSION,
    allowed_target,
    read_model,
    runner_from_model,
)
from medseg3d.inference.predictor import checkpoint_list, load_network_weights
from medseg3d.networks.exported import ExportedNetwork, WindowRecorder, export_onnx, quantize_int8, spread

logger = logging.getLogger(__name__)

# what the command line of `medseg3d infer` decides at run time: not part of the model
RUN_SETTINGS = {
    "predictor": {"network", "inferer", "preprocessing", "device", "checkpoint", "keep_probabilities"},
    "runner": {"predictor", "input_dir", "output_dir", "resume", "preview", "progress", "shard",
               "save_probabilities"},
}  # fmt: skip
EXPORTABLE_INFERER = "medseg3d.inferers.sliding_window.FastSlidingWindowInferer"
CALIBRATION_WINDOWS = 16  # windows spread over the calibration cases' own (NNCF's default subset is 300 samples)


def sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex), read in 1 MiB blocks: ``model.json`` names the exact weights it was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data, or a ValueError naming the config id that holds something else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}#{k}") for k, v in value.items()}
    raise ValueError(f"{where}: a {type(value).__name__} cannot be written to {MODEL_FILE}")


def resolved(parser: Any, config_id: str, skip: set[str] = frozenset()) -> Any:
    """The config at ``config_id`` with its ``_target_`` structure kept and every other value resolved to plain
    data (references followed, expressions evaluated); keys in ``skip`` left out (``_target_`` in ``skip``: the
    object's arguments alone, as for the predictor and runner, which ``model_folder`` builds itself)."""
    raw = parser.get(config_id)
    if isinstance(raw, Mapping):
        out = {}
        for key, value in raw.items():
            if key in skip:
                continue
            out[key] = value if key == "_target_" else resolved(parser, f"{config_id}#{key}")
        target = out.get("_target_")
        if target is not None and not allowed_target(target):
            raise ValueError(
                f"{config_id}: _target_ {target!r} is not one of medseg3d's transforms or inferers: it cannot go "
                f"into {MODEL_FILE}"
            )
        return out
    if isinstance(raw, list) and any(isinstance(item, Mapping) for item in raw):
        return [resolved(parser, f"{config_id}#{i}") for i in range(len(raw))]
    return _plain(parser.get_parsed_content(config_id), config_id)


def _roi(value: Any, dims: int = 3) -> list[int]:
    return [int(value)] * dims if isinstance(value, (int, np.integer)) else [int(v) for v in value]


def export_model(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_windows: int = CALIBRATION_WINDOWS,
    overwrite: bool = False,
) -> Path:
    """Write the model folder ``out_dir`` for ``bundle_dir`` with the weights ``checkpoint`` (one, several, a run
    or a cross-validation folder: an ensemble, with the postprocessing its cross-validation chose).

    Always ``network.onnx`` (float32; checked against PyTorch on a window); with ``calibration`` (a folder of
    cases, as ``medseg3d infer`` takes) also ``network.int8.xml``/``.bin``, calibrated on ``calibration_windows``
    windows the sliding window cut from those cases. The folder is built under a temporary name and renamed.

    Raises:
        InputError: the bundle, a checkpoint or the calibration folder is unusable, or ``out_dir`` exists
            (without ``overwrite``).
        ValueError: the bundle's inferer is not the 3D sliding window (the 2.5D bundle: not exportable yet).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(out, "exists: give another folder, or --overwrite to replace it")
    weights = checkpoint_list(checkpoint)
    if not weights:
        raise InputError(Path(bundle_dir), "export needs weights: pass --checkpoint")
    for path in weights:
        if not path.is_file():
            raise InputError(path, "checkpoint not found")
    settings: dict[str, Any] = {
        "checkpoint": config_path(weights[0]),
        "input_dir": config_path("."),
        "output_dir": config_path("."),
        "device": "$torch.device('cpu')",
        **dict(overrides or {}),
    }
    chosen = find_postprocessing(checkpoint if isinstance(checkpoint, (str, os.PathLike)) else weights)
    if chosen is not None and "postprocess" not in (overrides or {}):
        settings["postprocess"] = chosen[1]
    wf = make_workflow(bundle_dir, "inference", settings)
    parser = wf.parser
    inferer = resolved(parser, "inferer")
    if inferer.get("_target_") != EXPORTABLE_INFERER:
        raise ValueError(
            f"export runs bundles whose inferer is {EXPORTABLE_INFERER} (3D windows); this bundle's is "
            f"{inferer.get('_target_')!r}"
        )
    roi = _roi(inferer["roi_size"])
    in_channels = int(parser.get_parsed_content("in_channels"))
    predictor = resolved(parser, "predictor", {"_target_", *RUN_SETTINGS["predictor"]})
    runner = resolved(parser, "runner", {"_target_", *RUN_SETTINGS["runner"]})
    model: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "bundle": Path(bundle_dir).resolve().name,
        "medseg3d": __version__,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": [{"checkpoint": str(path), "sha256": sha256(path)} for path in weights],
        "input": {"channels": runner.get("channel_names") or in_channels, "in_channels": in_channels,
                  "window": roi},
        "network": {"float32": [], "int8": [], "check": []},
        "preprocessing": resolved(parser, "preprocessing"),
        "inferer": inferer,
        "predictor": predictor,
        "runner": runner,
    }  # fmt: skip

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        network = parser.get_parsed_content("network_def").to("cpu").eval()
        example = torch.zeros(1, in_channels, *roi)
        torch.manual_seed(0)
        probe = torch.randn(1, in_channels, *roi)
        for index, path in enumerate(weights):
            load_network_weights(network, path)
            name = "network.onnx" if len(weights) == 1 else f"network_{index}.onnx"
            export_onnx(network, example, tmp / name)
            with torch.no_grad():
                expected = network(probe)
            got = ExportedNetwork(tmp / name)(probe)
            model["network"]["float32"].append(name)
            model["network"]["check"].append({"file": name, "max_abs_diff": float((got - expected).abs().max())})
        if calibration is not None:
            windows = calibration_windows_of(model, network, calibration, calibration_windows, tmp)
            for index, name in enumerate(model["network"]["float32"]):
                xml = "network.int8.xml" if len(weights) == 1 else f"network_{index}.int8.xml"
                quantize_int8(tmp / name, windows, tmp / xml)
                model["network"]["int8"].append(xml)
            model["network"]["calibration"] = {"folder": str(calibration), "windows": len(windows)}
        write_json(model, tmp / MODEL_FILE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (%s) to %s", Path(bundle_dir).name, ", ".join(model["network"]["float32"]), out)
    return out


def calibration_windows_of(
    model: Mapping[str, Any], network: torch.nn.Module, cases: str | os.PathLike, count: int, scratch: Path
) -> list[np.ndarray]:
    """``count`` windows, spread over all the windows the exported model's runner (``runner_from_model``) feeds
    its network when it segments the cases in ``cases`` (their labels go to a scratch folder, then away). The
    windows are the preprocessed image, whatever the weights of ``network``."""
    if not Path(cases).exists():
        raise InputError(cases, "calibration cases not found (expected a folder of scans, as medseg3d infer takes)")
    recorder = WindowRecorder(network, limit=100_000)
    scratch_out = scratch / ".calibration"
    runner_from_model(model, [recorder], cases, scratch_out, output_format=["nifti"], progress=False).run()
    shutil.rmtree(scratch_out, ignore_errors=True)
    if not recorder.windows:
        raise InputError(cases, "no case there gave a window to calibrate on (no readable case with foreground)")
    return spread(recorder.windows, count)


def describe(folder: str | os.PathLike) -> str:
    """One line on an exported model: bundle, networks, source hashes (for logs and ``--help`` examples)."""
    model = read_model(folder)
    hashes = ", ".join(s["sha256"][:12] for s in model["source"])
    return f"{model['bundle']}: {', '.join(model['network']['float32'] + model['network']['int8'])} (weights {hashes})"
