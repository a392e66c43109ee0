"""``medseg3d infer``: a bundle's ``inference`` workflow over a folder, with the command's flags as overrides."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import set_determinism

from medseg3d.bundle.postprocessing import find_postprocessing
from medseg3d.bundle.workflow import make_workflow, run_workflow
from medseg3d.core.errors import InputError
from medseg3d.core.io import config_path
from medseg3d.core.overrides import parse_overrides
from medseg3d.core.ranks import finalize_distributed, init_distributed, local_device
from medseg3d.data.label_formats import check_formats
from medseg3d.inference.model_folder import build_runner
from medseg3d.inference.runner import SUMMARY, failed_count, parse_shard, seconds_per_case, summary_part

logger = logging.getLogger(__name__)


def default_checkpoint(bundle_dir: str | os.PathLike, runs_root: str | os.PathLike = "runs") -> Path:
    """The weights ``medseg3d infer`` uses without ``--checkpoint``: the bundle's ``models/model.pt`` (MONAI
    model-zoo layout, e.g. after ``ckpt_export``), else ``best.pt`` of the newest run of this bundle under
    ``runs_root/<bundle folder name>``.

    Raises:
        InputError: neither exists.
    """
    bundle = Path(bundle_dir)
    exported = bundle / "models" / "model.pt"
    if exported.is_file():
        return exported
    runs = Path(runs_root) / bundle.resolve().name
    best = sorted(runs.glob("**/checkpoints/best.pt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    raise InputError(
        bundle,
        f"no weights to infer with: no {exported} and no checkpoints/best.pt under {runs}; pass --checkpoint PATH",
    )


def infer_overrides(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike],
    device: str = "auto",
    overlap: float | None = None,
    tta: bool = False,
    preview: bool = False,
    resume: bool = False,
    output_format: Sequence[str] | None = None,
    save_probabilities: bool = False,
    shard: str | None = None,
) -> dict[str, Any]:
    """The inference config overrides that ``medseg3d infer``'s flags stand for.

    >>> infer_overrides("in", "out", "w.pt", device="cpu", overlap=0.25)["device"]
    "$torch.device('cpu')"
    """

    # Paths are data: a folder named "$..." or "@..." must not become a config expression (docs/security.md).
    overrides: dict[str, Any] = {
        "input_dir": config_path(input_dir),
        "output_dir": config_path(output_dir),
        "checkpoint": (
            config_path(checkpoint)
            if isinstance(checkpoint, (str, os.PathLike))
            else [config_path(c) for c in checkpoint]
        ),
        "tta": bool(tta),
        "preview": bool(preview),
        "resume": bool(resume),
    }
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device != "auto":
        overrides["device"] = f"$torch.device({device!r})"
    if output_format:
        overrides["output_format"] = check_formats(output_format)
    if save_probabilities:
        overrides["save_probabilities"] = True
    if shard is not None:
        index, count = parse_shard(shard)
        overrides["shard"] = f"{index}/{count}"
    if overlap is not None:
        overrides["overlap"] = _checked_overlap(overlap)
    return overrides


def _checked_overlap(overlap: float) -> float:
    """``--overlap`` as a float, or a ValueError when it is outside [0, 1)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"--overlap must be in [0, 1), got {overlap}")
    return float(overlap)


def infer_folder(
    bundle_dir: str | os.PathLike | None,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    backend: str | None = None,
    precision: str = "float32",
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    device: str = "auto",
    overlap: float | None = None,
    tta: bool = False,
    preview: bool = False,
    resume: bool = False,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    output_format: Sequence[str] | None = None,
    save_probabilities: bool = False,
    shard: str | None = None,
) -> int:
    """Run the bundle's ``inference`` workflow on ``input_dir`` (or the exported ``model`` folder's network with
    ``backend`` at ``precision``: ``medseg3d/inference/model_folder.py``); print the summary; return the exit
    code (0 when every case is ok or skipped, 1 when any failed).

    Raises:
        InputError: the input folder, the bundle or the checkpoint is unusable (before any case runs).
    """

    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if not Path(input_dir).exists():
        raise InputError(input_dir, "input not found (expected a folder of scans or one scan)")
    extra = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides)
    if model is not None:
        rows = _infer_model(model, input_dir, output_dir, backend, precision, device, overlap, tta, preview,
                            resume, output_format, save_probabilities, shard, extra)  # fmt: skip
        return _report(rows, output_dir, shard, distributed=False)
    if checkpoint is None or (not isinstance(checkpoint, (str, os.PathLike)) and not list(checkpoint)):
        weights: Any = default_checkpoint(bundle_dir)
    elif isinstance(checkpoint, (str, os.PathLike)):
        weights = Path(checkpoint)
    else:
        weights = [Path(c) for c in checkpoint]
        weights = weights[0] if len(weights) == 1 else weights
    settings = {
        **infer_overrides(
            input_dir,
            output_dir,
            weights,
            device,
            overlap,
            tta,
            preview,
            resume,
            output_format,
            save_probabilities,
            shard,
        ),
        **extra,
    }
    chosen = find_postprocessing(weights) if "postprocess" not in extra else None
    if chosen is not None:  # the rules its cross-validation chose replace the bundle's default
        settings["postprocess"] = chosen[1]
        logger.info("postprocessing from %s: %s", chosen[0], chosen[1] or "none")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # under torchrun: each rank takes its share of the cases
        rank_device = local_device(cuda=False if device == "cpu" else None)
        init_distributed(rank_device)
        settings["device"] = f"$torch.device({str(rank_device)!r})"
    try:
        wf = make_workflow(bundle_dir, "inference", settings)
        run_workflow(wf)
        rows = wf.parser.get_parsed_content("runner").rows
    finally:
        if distributed:
            finalize_distributed()
    return _report(rows, output_dir, shard, distributed)


def _infer_model(
    model: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    backend: str | None,
    precision: str,
    device: str,
    overlap: float | None,
    tta: bool,
    preview: bool,
    resume: bool,
    output_format: Sequence[str] | None,
    save_probabilities: bool,
    shard: str | None,
    extra: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The rows of an exported model's run over ``input_dir`` (``infer_folder`` with ``model``)."""
    if device == "cuda":
        raise ValueError("--model runs on the CPU (OpenVINO or ONNX Runtime); use --device cpu or auto")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--model is not run under torchrun; split the cases with --shard I/N instead")
    unknown = sorted(set(extra) - {"progress", "postprocess"})
    if unknown:
        raise ValueError(f"with --model, only --progress and --postprocess may be overridden, got {unknown}")
    runner = build_runner(
        model,
        input_dir,
        output_dir,
        precision=precision,
        backend=backend,
        overlap=None if overlap is None else _checked_overlap(overlap),
        tta=tta,
        preview=preview,
        resume=resume,
        output_format=check_formats(output_format) if output_format else None,
        save_probabilities=save_probabilities,
        shard=None if shard is None else "{}/{}".format(*parse_shard(shard)),
        progress=bool(extra.get("progress", True)),
        postprocess=extra.get("postprocess"),
    )
    set_determinism(seed=0)
    return runner.run()


def _report(rows: list[dict[str, Any]], output_dir: str | os.PathLike, shard: str | None, distributed: bool) -> int:
    """Print the run's summary line and its failures; the exit code (1 when any case failed)."""
    failed = failed_count(rows)
    if not distributed or int(os.environ.get("RANK", "0")) == 0:
        parts = None if shard is None else summary_part(output_dir, parse_shard(shard))
        written = Path(output_dir) / SUMMARY if parts is None or (Path(output_dir) / SUMMARY).is_file() else parts
        counts = {status: sum(1 for r in rows if r["status"] == status) for status in ("ok", "skipped", "failed")}
        print(
            f"{len(rows)} cases: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; "
            f"{seconds_per_case(rows):.1f} s per case; {written}"
        )
        for row in rows:
            if row["status"] == "failed":
                print(f"  failed {row['case_id']}: {row['error']}")
    return 1 if failed else 0
