"""An exported model folder (``medseg3d export``) read back into the predictor and batch runner ``medseg3d infer``
runs, without the bundle's configs.

The folder holds the network files (``network.onnx``; ``network.int8.xml``/``.bin`` when calibrated; one of each
per member of an ensemble) and ``model.json``, which says everything else the bundle's inference config said: the
preprocessing and the sliding window as ``_target_`` + plain arguments, the predictor's settings (output mode,
postprocessing rules, slab and chunk sizes, classes) and the runner's label conventions (label names and values
written, segment table, input channel order), plus where the weights came from (the checkpoints' SHA-256).

``model.json`` is data, not code (docs/security.md): no ``$`` expression or ``@`` reference is evaluated, and a
``_target_`` must be one of medseg3d's transforms or inferers (or MONAI's ``Compose``), called with plain JSON
arguments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from pydoc import locate
from typing import Any

from monai.transforms import Compose

from medseg3d.core.errors import InputError
from medseg3d.inference.predictor import Predictor
from medseg3d.inference.runner import BatchRunner
from medseg3d.networks.exported import ExportedNetwork

MODEL_FILE = "model.json"
MODEL_FORMAT = "medseg3d-model"
MODEL_VERSION = 1
PRECISIONS = ("float32", "int8")
# what a model.json may build: medseg3d's transforms and inferers (computations on arrays, no file or process
# access), and MONAI's Compose of them; anything else in the package (writers, the runner) is refused
TARGET_PACKAGES = ("medseg3d.transforms.", "medseg3d.inferers.")
COMPOSE_TARGETS = ("Compose", "monai.transforms.Compose")


def allowed_target(target: object) -> bool:
    """Whether ``model.json`` may name ``target`` as a ``_target_``.

    >>> allowed_target("medseg3d.transforms.brats.brats_preprocessing"), allowed_target("medseg3d.core.io.write_text")
    (True, False)
    """
    return isinstance(target, str) and (target.startswith(TARGET_PACKAGES) or target in COMPOSE_TARGETS)


def read_model(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/model.json``, checked: its format and version, and that every network file it names exists.

    Raises:
        InputError: naming the file: missing, not JSON, another format or a newer version, a missing network.
    """
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise InputError(path, "not an exported model folder: no model.json (write one with medseg3d export)")
    try:
        model = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot be read as JSON: {exc}") from exc
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise InputError(path, f"expected an object with format {MODEL_FORMAT!r}")
    if model.get("version") != MODEL_VERSION:
        raise InputError(path, f"version {model.get('version')!r}: this medseg3d reads version {MODEL_VERSION}")
    for key in ("network", "preprocessing", "inferer", "predictor", "runner"):
        if not isinstance(model.get(key), dict):
            raise InputError(path, f"missing the {key!r} section")
    for precision in PRECISIONS:
        for name in model["network"].get(precision) or []:
            if not (Path(folder) / name).is_file():
                raise InputError(Path(folder) / name, f"named by {MODEL_FILE} ({precision}) but missing")
    return model


def instantiate(config: Any, where: str = "model.json") -> Any:
    """Build ``config``: a mapping with ``_target_`` is that callable called with its other entries (built in
    turn); lists and mappings are built element-wise; anything else is returned as is, never evaluated.

    >>> instantiate({"_target_": "medseg3d.transforms.decode.background_logits", "output_mode": "labels",
    ...              "channels": 3})
    [10.0, -10.0, -10.0]
    """
    if isinstance(config, list):
        return [instantiate(item, where) for item in config]
    if not isinstance(config, Mapping):
        return config
    if "_target_" not in config:
        return {key: instantiate(value, f"{where}#{key}") for key, value in config.items()}
    target = config["_target_"]
    if not allowed_target(target):
        raise ValueError(
            f"{where}: _target_ {target!r} is not allowed (only medseg3d's transforms and inferers, and Compose)"
        )
    kwargs = {key: instantiate(value, f"{where}#{key}") for key, value in config.items() if key != "_target_"}
    if target in COMPOSE_TARGETS:
        transforms = kwargs.pop("transforms", [])
        return Compose(transforms if isinstance(transforms, list) else [transforms], **kwargs)
    factory = locate(target)
    if factory is None:
        raise ValueError(f"{where}: _target_ {target!r} not found in this medseg3d")
    return factory(**kwargs)


def network_files(folder: str | os.PathLike, model: Mapping[str, Any], precision: str) -> list[Path]:
    """The network files of ``precision`` (one per ensemble member).

    Raises:
        InputError: the folder has none of that precision (int8 needs an export with calibration cases).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    names = model["network"].get(precision) or []
    if not names:
        raise InputError(
            Path(folder) / MODEL_FILE,
            f"no {precision} network in this model (int8: export with --calibration CASES)",
        )
    return [Path(folder) / name for name in names]


def build_runner(
    folder: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    precision: str = "float32",
    backend: str | None = None,
    **flags: Any,
) -> BatchRunner:
    """The ``BatchRunner`` of the model in ``folder`` over ``input_dir``, its ``precision`` network run by
    ``backend``; ``flags`` as ``runner_from_model`` takes them (the flags of ``medseg3d infer``).

    An ensemble's members each run the sliding window (and TTA), and their probabilities are averaged before
    decoding, as with checkpoints (``Predictor``'s members).
    """
    model = read_model(folder)
    networks = [ExportedNetwork(path, backend) for path in network_files(folder, model, precision)]
    return runner_from_model(model, networks, input_dir, output_dir, **flags)


def runner_from_model(
    model: Mapping[str, Any],
    networks: Sequence[Any],
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overlap: float | None = None,
    tta: bool = False,
    preview: bool = False,
    resume: bool = False,
    output_format: Sequence[str] | None = None,
    save_probabilities: bool = False,
    shard: str | None = None,
    progress: bool = True,
    postprocess: Mapping[Any, Any] | None = None,
) -> BatchRunner:
    """The ``BatchRunner`` that ``model`` (a ``model.json``'s content) describes, with ``networks`` (one, or an
    ensemble's members) as its network: ``medseg3d infer --model``, and the calibration run of ``medseg3d export``,
    which records the windows this very runner feeds its network."""
    inferer_config = dict(model["inferer"])
    inferer_config["tta"] = bool(tta)
    if overlap is not None:
        inferer_config["overlap"] = float(overlap)
    settings = dict(model["predictor"])
    if postprocess is not None:
        settings["postprocess"] = postprocess
    predictor = Predictor(
        networks[0],
        instantiate(inferer_config, "model.json#inferer"),
        instantiate(model["preprocessing"], "model.json#preprocessing"),
        keep_probabilities=save_probabilities,
        **settings,
    )
    if len(networks) > 1:
        predictor.use_networks(networks)
    runner = dict(model["runner"])
    if output_format:
        runner["output_formats"] = list(output_format)
    return BatchRunner(
        predictor,
        input_dir,
        output_dir,
        resume=resume,
        preview=preview,
        progress=progress,
        save_probabilities=save_probabilities,
        shard=shard,
        **runner,
    )
