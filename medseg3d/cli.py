"""The ``medseg3d`` command. Each subcommand imports its heavy modules when it runs, so ``--help`` is instant;
the measured cost of each is written beside it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from medseg3d import __version__
from medseg3d.core.bundles import BUNDLES_ENV, find_bundle
from medseg3d.core.errors import check_output_folder
from medseg3d.core.overrides import parse_overrides

EDITION_CHOICES = ("2019", "2020", "2021", "2023")
BUNDLE_HELP = f"the bundle folder (holds configs/), or a bundle's name in ${BUNDLES_ENV} (the container's bundles)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def cmd_synth_brats(args: argparse.Namespace) -> int:
    # lazy: numpy, nibabel (0.5 s; `--help` takes 0.04 s)
    from medseg3d.data.synth_brats import write_brats_tree

    folders = write_brats_tree(
        args.out,
        cases=args.cases,
        edition=args.edition,
        shape=tuple(args.shape),
        seed=args.seed,
        validation_cases=args.validation_cases,
        scanner=args.scanner,
    )
    print(f"wrote {len(folders)} BraTS {args.edition} case folders under {args.out}")
    return 0


def cmd_synth_ct(args: argparse.Namespace) -> int:
    # lazy: numpy, SimpleITK (0.3 s; `--help` takes 0.04 s)
    from medseg3d.data.synth_ct import write_ct_cases

    shape = tuple(args.shape) if args.shape else None
    paths = write_ct_cases(
        args.out, cases=args.cases, dicom=args.dicom, seed=args.seed, shape=shape, scanner=args.scanner
    )
    kind = "DICOM series" if args.dicom else "NIfTI files"
    print(f"wrote {len(paths)} CT cases ({kind}) with aorta labels under {args.out}")
    return 0


def cmd_datalist(args: argparse.Namespace) -> int:
    # lazy: nibabel, SimpleITK (0.4 s; `--help` takes 0.04 s)
    from medseg3d.data.pairs import DatalistError, build_datalist

    names = [name.strip() for name in args.labels.split(",")] if args.labels is not None else None
    try:
        result = build_datalist(
            args.root, out=args.out, folds=args.folds, seed=args.seed, label_names=names, classes=args.classes
        )
    except DatalistError as exc:  # nothing written; still say what was rejected before the error line
        for rejection in exc.rejected:
            print(f"rejected {rejection}")
        raise
    print(result.summary())
    for warning in result.warnings:
        print(f"warning: {warning}")
    for rejection in result.rejected:
        print(f"rejected {rejection}")
    return 1 if result.rejected else 0


def _dataset_id(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 999:
        raise argparse.ArgumentTypeError(f"expected an nnU-Net dataset ID from 1 to 999, got {text}")
    return value


def cmd_nnunet_export(args: argparse.Namespace) -> int:
    # lazy: numpy, nibabel, SimpleITK (0.4 s; `--help` takes 0.04 s)
    from medseg3d.data.nnunet import export_nnunet

    _check_output(args.out)
    result = export_nnunet(
        args.prepared, args.out, args.id, name=args.name, output_mode=args.output_mode, overwrite=args.overwrite
    )
    print(result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # lazy: torch, MONAI, ONNX (7 s; `--help` takes 0.04 s)
    from medseg3d.bundle.export import describe, export_model

    _check_output(args.out.parent)
    folder = export_model(
        args.bundle,
        args.checkpoint if len(args.checkpoint) > 1 else args.checkpoint[0],
        args.out,
        overrides=parse_overrides(args.overrides),
        calibration=args.calibration,
        calibration_windows=args.calibration_windows,
        overwrite=args.overwrite,
    )
    print(f"exported {describe(folder)} to {folder}")
    return 0


def _check_output(path: object) -> None:
    """``InputError`` before any work when an output folder given on the command line cannot be written."""

    if isinstance(path, str | Path) and not str(path).startswith(("$", "@", "%")):
        check_output_folder(path)


def cmd_train(args: argparse.Namespace) -> int:
    # lazy: torch and MONAI (6 s; `--help` takes 0.04 s), for both lines
    from medseg3d.bundle.crossval import train_folds
    from medseg3d.bundle.workflow import find_run, resume_workflow, run_bundle, run_workflow

    overrides = parse_overrides(args.overrides)
    if args.tracking is not None:
        overrides["experiment_tracking"] = args.tracking
    if args.resume is None:
        if args.bundle is None:
            raise ValueError("give --bundle DIR (a new run) or --resume [RUN_DIR] (continue one)")
        _check_output(overrides.get("output_dir", "runs"))
        if args.folds is not None:
            train_folds(args.bundle, args.folds, overrides, overrides.get("output_dir"))
        else:
            run_bundle(args.bundle, "train", overrides)
        return 0
    if args.resume is True:
        runs_root = Path("runs")
        if args.bundle is not None and (runs_root / args.bundle.resolve().name).is_dir():
            runs_root = runs_root / args.bundle.resolve().name
        run_dir = find_run(None, runs_root)  # the newest run with a last.pt, checked
    else:
        run_dir = Path(args.resume)
    for cv_dir in (run_dir, run_dir.parent):
        if (cv_dir / "cv.json").is_file():  # a cross-validation run, or one of its folds
            train_folds(None, "all", overrides, resume_dir=cv_dir)
            return 0
    run_workflow(resume_workflow(find_run(run_dir), overrides))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    # lazy: torch and MONAI (6 s; `--help` takes 0.04 s)
    from medseg3d.bundle.infer import infer_folder

    _check_output(args.output)
    if (args.bundle is None) == (args.model is None):
        raise ValueError("give --bundle BUNDLE (with its weights) or --model FOLDER (medseg3d export), one of them")
    if args.model is not None and args.checkpoint:
        raise ValueError("--checkpoint goes with --bundle; an exported --model holds its own network")
    if args.model is None and (args.backend is not None or args.precision != "float32"):
        raise ValueError("--backend and --precision go with --model FOLDER (an exported model)")
    return infer_folder(
        args.bundle,
        args.input,
        args.output,
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        checkpoint=args.checkpoint,
        device=args.device,
        overlap=args.overlap,
        tta=args.tta,
        preview=args.preview,
        resume=args.resume,
        overrides=args.overrides,
        output_format=args.output_format,
        save_probabilities=args.save_probabilities,
        shard=args.shard,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.class_field is not None and args.classes is None:
        raise ValueError("--class-field names a column of --classes FILE; give --classes too")
    # lazy: torch and MONAI (6 s; `--help` takes 0.04 s)
    from medseg3d.evaluation import run_evaluation

    return run_evaluation(
        args.pred, args.gt, task=args.task, out=args.out, classes=args.classes, class_field=args.class_field
    )


def cmd_demo(args: argparse.Namespace) -> int:
    # lazy: torch and MONAI (5 s; `--help` takes 0.04 s)
    from medseg3d.demo import run_demo

    return run_demo(Path(args.out), cases=args.cases, shape=tuple(args.shape), seed=args.seed, epochs=args.epochs)


def _version() -> str:
    """medseg3d's version and those of torch and MONAI, read from their metadata (importing torch takes 2 s)."""
    found = []
    for package in ("torch", "monai"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return f"medseg3d {__version__} ({', '.join(found)})"


class _VersionAction(argparse.Action):
    """``--version``: the versions are read only when asked for (their metadata takes half of building the parser,
    which every command does)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print medseg3d's, torch's and MONAI's versions")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())  # on stdout, as argparse's own version action prints
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg3d", description="3D and 2.5D medical image segmentation on MONAI.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write synthetic phantoms with known labels")
    kinds = synth.add_subparsers(dest="kind", required=True, metavar="KIND")
    brats = kinds.add_parser("brats", help="a raw BraTS tree in one edition's exact layout")
    brats.add_argument("out", type=Path, help="folder to write the raw tree into")
    brats.add_argument("--cases", type=_positive, default=4, help="training cases, with segmentation (4)")
    brats.add_argument("--validation-cases", type=int, default=0, help="validation-style cases without seg (0)")
    brats.add_argument("--edition", choices=EDITION_CHOICES, default="2021", help="layout and labels (2021)")
    brats.add_argument("--shape", type=_positive, nargs=3, default=[240, 240, 155], metavar=("X", "Y", "Z"))
    brats.add_argument("--seed", type=int, default=0, help="same seed, same bytes (0)")
    brats.add_argument(
        "--scanner",
        choices=("default", "shifted"),
        default="default",
        help="intensities as the training phantoms' scanner draws them, or as another one does (other contrasts, "
        "a stronger bias field, more noise: docs/training.md) (default)",
    )
    brats.set_defaults(func=cmd_synth_brats)

    ct = kinds.add_parser("ct", help="CT phantoms in Hounsfield units with an aorta label")
    ct.add_argument("out", type=Path, help="folder to write imagesTr/ and labelsTr/ into")
    ct.add_argument("--cases", type=_positive, default=2, help="number of cases (2)")
    ct.add_argument("--dicom", action="store_true", help="write each image as a DICOM series folder")
    ct.add_argument("--shape", type=_positive, nargs=3, default=None, metavar=("X", "Y", "Z"))
    ct.add_argument("--seed", type=int, default=0, help="same seed, same bytes (0)")
    ct.add_argument(
        "--scanner",
        choices=("default", "shifted"),
        default="default",
        help="intensities as the training phantoms' scanner draws them, or as another scanner and protocol do "
        "(another aorta contrast, organ enhancement, twice the noise: docs/training.md) (default)",
    )
    ct.set_defaults(func=cmd_synth_ct)

    datalist = commands.add_parser(
        "datalist",
        help="list a folder of image/label pairs as a training dataset.json with folds",
        description="Find the image/label pairs under ROOT (imagesTr/ + labelsTr/, or <id>_ct + <id>_seg files and "
        "DICOM series folders), check each (readable, label on the image's grid, label values non-negative "
        "integers) and write OUT/dataset.json with cross-validation folds (docs/data.md); --classes CSV adds "
        "per-case class columns. ROOT may be an nnU-Net v2 raw dataset (DatasetNNN_Name/ with its dataset.json): "
        "each case's channel files, its labels and regions, imagesTs/ and the folds of splits_final.json are "
        "listed, the files referenced where they are; give --out (docs/nnunet.md). A bad pair is reported and left "
        "out; the exit code is then 1. Exit code 2: nothing usable, a bad --classes CSV, or bad arguments.",
    )
    datalist.add_argument("root", type=Path, help="folder of image/label pairs, or an nnU-Net v2 dataset folder")
    datalist.add_argument("--out", type=Path, default=None, help="folder of the dataset.json (ROOT)")
    datalist.add_argument(
        "--folds",
        type=_positive,
        default=None,
        help="cross-validation folds (5; an nnU-Net dataset with splits_final.json: its folds)",
    )
    datalist.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (0)")
    datalist.add_argument(
        "--labels",
        default=None,
        metavar="NAME[,NAME...]",
        help="names of the label values 1, 2, ... in value order (label_1, label_2, ...; an nnU-Net dataset: its "
        "names)",
    )
    datalist.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="CSV",
        help="per-case classes: a CSV case_id,<field>[,<field>...]; each field becomes a column of every case "
        "(null where unknown), for `medseg3d train --classify <field>`; folds balanced over the first field",
    )
    datalist.set_defaults(func=cmd_datalist)

    export = commands.add_parser(
        "nnunet-export",
        help="write a prepared BraTS dataset as an nnU-Net v2 raw dataset, with its folds as splits_final.json",
        description="Write the prepared BraTS dataset PREPARED (prep_brats OUT) as OUT/Dataset<ID>_<NAME>/: "
        "imagesTr/<case>_0000..0003.nii.gz (t1, t1ce, t2, flair, the prepared voxels and geometry), "
        "labelsTr/<case>.nii.gz (the prepared labels), imagesTs/ for its test cases, dataset.json and "
        "splits_final.json (its folds), so that nnUNetv2_plan_and_preprocess -d ID and nnU-Net's training run on the "
        "same cases and folds (docs/nnunet.md). Exit code 2: a bad dataset, an existing target without --overwrite.",
    )
    export.add_argument("prepared", type=Path, help="the prepared dataset (holds dataset.json)")
    export.add_argument("out", type=Path, help="folder to write Dataset<ID>_<NAME>/ into (nnU-Net's nnUNet_raw)")
    export.add_argument("--id", type=_dataset_id, required=True, help="nnU-Net dataset ID, 1 to 999")
    export.add_argument("--name", default="BraTSPrepared", help="letters, digits, _ and - (BraTSPrepared)")
    export.add_argument(
        "--output-mode",
        choices=("regions", "labels"),
        default="regions",
        help="what nnU-Net trains: the regions WT, TC, ET (sigmoids, as the BraTS bundles) or the labels NCR, ED, ET "
        "(softmax) (regions)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing Dataset<ID>_<NAME>/")
    export.set_defaults(func=cmd_nnunet_export)

    # allow_abbrev=False: bundle overrides pass through unparsed, so `--fold 1` (the bundle's validation fold)
    # must not be taken for an abbreviation of --folds, nor `--check` for --checkpoint
    train = commands.add_parser(
        "train",
        allow_abbrev=False,
        help="train a bundle; extra --KEY VALUE pairs are MONAI bundle overrides",
        description="Train a bundle. Every extra --KEY VALUE pair overrides a config id (nested ids with #), "
        "as on `python -m monai.bundle run`; an unknown key or a value of the wrong type is an error.",
    )
    train.add_argument("--bundle", type=find_bundle, help=f"{BUNDLE_HELP}; not needed with --resume", metavar="BUNDLE")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped run exactly, with the configuration it ran with (default: the newest run "
        "under ./runs); extra --KEY VALUE pairs still apply (e.g. --max_epochs)",
    )
    train.add_argument(
        "--folds",
        default=None,
        metavar="all|K[,K...]",
        help="train each fold in turn (all, or a list like 0,2) and write cv_summary.csv (mean +- std)",
    )
    train.add_argument(
        "--tracking",
        choices=("mlflow",),
        default=None,
        help="also track the run in MLflow (config, metrics per epoch, files; store: runs/<bundle>/mlruns.db)",
    )
    train.set_defaults(func=cmd_train)

    infer = commands.add_parser(
        "infer",
        allow_abbrev=False,
        help="label maps for a folder of scans, in each scan's own geometry, and summary.csv",
        description="Run a trained bundle over every case in INPUT (NIfTI/NRRD/MHA files, DICOM series folders, "
        "BraTS case folders) and write OUTPUT/<case_id>.nii.gz plus OUTPUT/summary.csv. A case that fails is "
        "recorded with its reason and the others still run; the exit code is 1 when any failed. Extra "
        "--KEY VALUE pairs override the bundle's inference config.",
    )
    infer.add_argument("input", type=Path, help="folder of cases (or one case)")
    infer.add_argument("output", type=Path, help="folder for the label maps, summary.csv and previews/")
    infer.add_argument("--bundle", type=find_bundle, help=f"{BUNDLE_HELP}; or --model", metavar="BUNDLE")
    infer.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="an exported model folder (medseg3d export) instead of --bundle and --checkpoint: runs without the "
        "bundle's configs, on OpenVINO or ONNX Runtime",
    )
    infer.add_argument(
        "--backend",
        choices=("openvino", "onnxruntime"),
        default=None,
        help="with --model: the runtime (default: openvino when installed, else onnxruntime)",
    )
    infer.add_argument(
        "--precision",
        choices=("float32", "int8"),
        default="float32",
        help="with --model: the float32 network, or its int8 one (exported with --calibration; openvino) (float32)",
    )
    infer.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        default=None,
        help="weights: a run's checkpoints/best.pt or a bare state dict (default: the bundle's models/model.pt, "
        "else best.pt of the newest run under ./runs/<bundle name>); several, a run folder or a cross-validation "
        "run folder: an ensemble (probabilities averaged)",
    )
    infer.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="only shard I of N of the cases, by a hash of the case id (a SLURM array task: "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); the last shard to finish writes summary.csv",
    )
    infer.add_argument(
        "--save_probabilities",
        action="store_true",
        help="also write OUTPUT/<case_id>.probabilities.npz (float16, the scan's grid)",
    )
    infer.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    infer.add_argument("--overlap", type=float, default=None, help="sliding-window overlap, 0 <= F < 1 (0.5)")
    infer.add_argument("--tta", action="store_true", help="average over mirrored copies (8x the time in 3D)")
    infer.add_argument("--preview", action="store_true", help="previews/<case_id>.png with the labels overlaid")
    infer.add_argument("--resume", action="store_true", help="skip the cases whose label map already exists")
    infer.add_argument(
        "--output_format",
        nargs="+",
        choices=("nifti", "seg.nrrd", "dicom-seg"),
        default=None,
        metavar="FORMAT",
        help="nifti (default), seg.nrrd (3D Slicer segmentation), dicom-seg (DICOM SEG), one or several",
    )
    infer.set_defaults(func=cmd_infer)

    export = commands.add_parser(
        "export",
        allow_abbrev=False,
        help="a bundle and its weights as a model folder that `medseg3d infer --model` runs (ONNX, OpenVINO int8)",
        description="Write OUT/: network.onnx (float32, dynamic batch and window), with --calibration also "
        "network.int8.xml/.bin (OpenVINO IR, int8, calibrated on windows of those cases), and model.json: the "
        "preprocessing, sliding window, postprocessing, label conventions, input channel order and the "
        "checkpoints' SHA-256, so that `medseg3d infer --model OUT` needs no bundle (docs/export.md). Extra "
        "--KEY VALUE pairs override the bundle's inference config before it is written.",
    )
    export.add_argument("--bundle", type=find_bundle, required=True, help=BUNDLE_HELP, metavar="BUNDLE")
    export.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="weights: a checkpoint, several, a run folder or a cross-validation folder (an ensemble, with the "
        "postprocessing its cross-validation chose)",
    )
    export.add_argument("--out", type=Path, required=True, help="the model folder to write")
    export.add_argument(
        "--calibration", type=Path, default=None, metavar="CASES", help="cases to calibrate the int8 network on"
    )
    export.add_argument(
        "--calibration-windows", type=_positive, default=16, help="windows spread over those cases (16)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    export.set_defaults(func=cmd_export)

    evaluate = commands.add_parser(
        "evaluate",
        help="score label maps against ground truth: Dice, HD95, lesion-wise, detection counts",
        description="Score every prediction in PRED against its ground truth in GT (paired by case ID) and write "
        "report.csv and summary.json (docs/evaluation.md). With --classes, also score the case classes a multitask "
        "`medseg3d infer` wrote into PRED/summary.csv: accuracy, balanced accuracy, AUC, confusion matrix. Exit code "
        "1 when a case failed or has no prediction.",
    )
    evaluate.add_argument("pred", type=Path, help="folder of predicted label maps (or one file)")
    evaluate.add_argument("gt", type=Path, help="folder of ground-truth label maps or a raw BraTS tree (or one file)")
    evaluate.add_argument(
        "--task", choices=("brats", "labels"), default="brats", help="BraTS regions WT/TC/ET, or every label value"
    )
    evaluate.add_argument(
        "--out", type=Path, default=None, help="folder for report.csv and summary.json (PRED/evaluation)"
    )
    evaluate.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="FILE",
        help="also score the case classes a multitask `medseg3d infer` wrote (PRED/summary.csv) against the "
        "true ones: a CSV case_id,<field> or a dataset.json (or its folder)",
    )
    evaluate.add_argument(
        "--class-field",
        default=None,
        metavar="NAME",
        help="the column of --classes that holds the true class (a CSV with one column besides case_id: that "
        "one; a dataset.json: grade)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    demo = commands.add_parser("demo", help="the whole pipeline end to end on synthetic data")
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (demo_out)")
    demo.add_argument("--cases", type=_positive, default=8, help="synthetic training cases (8)")
    demo.add_argument("--shape", type=_positive, nargs=3, default=[120, 120, 78], metavar=("X", "Y", "Z"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=_positive, default=40, help="training epochs (40: a few minutes on 2 CPU cores)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg3d`` console script."""
    parser = build_parser()
    # Only `train` and `infer` take free --KEY VALUE pairs (bundle overrides, checked against the config
    # later); anywhere else an unknown flag is an error, never silently ignored.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "infer", "export"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # InputError included: a clear one-line message, no traceback
        print(f"medseg3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written (its name is in the message)
        print(f"medseg3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # training stopped by SIGINT/SIGTERM: 128 + signal, the resume hint printed
        return exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
