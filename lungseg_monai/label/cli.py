"""``lungseg label``: start the MONAI Label server with the lung model on a folder of radiographs or a PACS.

``--studies`` is a folder, or the DICOMweb root of a PACS (``http://127.0.0.1:8042/dicom-web``):
the chest radiographs are then listed and retrieved with DICOMweb and saved labels stored back as
DICOM SEG (see :mod:`lungseg_monai.label.dicomweb_datastore`). There a person's SEG of an image
always wins over a model's, and only people's SEGs are training labels unless
``--train-on-automatic`` (then also the model's SEGs that quality control passed).

It runs ``monailabel start_server`` in this process with the app in :mod:`lungseg_monai.label`.
MONAI Label writes its own files (logs, a copy of the app's ``main.py``) to ``<workdir>/app``
rather than into the installed package.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from lungseg_monai.inference.options import DEFAULT_PRECISION, PRECISIONS

__all__ = ["add_parser", "run", "start_server_args"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
EXIT_BAD_ARGS = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``lungseg label``."""
    parser = subparsers.add_parser(
        "label",
        help="serve the lung model to MONAI Label clients (3D Slicer) for labelling and retraining",
        description=(
            "Start a MONAI Label server on a folder of chest radiographs (PNG, JPEG, DICOM...) or on a PACS "
            "(DICOMweb): /infer proposes lung masks, PUT /datastore/label saves corrected ones (to the PACS as "
            "DICOM SEG), POST /train fine-tunes the model on them. Works offline. Connect 3D Slicer's MONAI Label "
            "module to http://HOST:PORT."
        ),
    )
    parser.add_argument(
        "--studies",
        required=True,
        help="folder of images (labels go to STUDIES/labels), or a PACS's DICOMweb root, e.g. "
        "http://127.0.0.1:8042/dicom-web (labels go to the PACS as DICOM SEG)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="the model to start from: a shipped model (vgg16, resnet50) or a models/model.pt written by the bundle's "
        "training (default: the shipped vgg16; fine-tuned models go to WORKDIR, never over it)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="fine-tuned models, runs, logs and the PACS cache (default: $XDG_STATE_HOME/lungseg/label/NAME-HASH, "
        "~/.local/state when unset; never inside STUDIES)",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: CUDA if available)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="network arithmetic for inference and fine-tuning (see lungseg infer --help; default: %(default)s)",
    )
    parser.add_argument(
        "--train-config", type=Path, default=None, help="bundle configs/train.json used to fine-tune (default: found)"
    )
    parser.add_argument(
        "--overlay",
        action="store_true",
        help="with a PACS: store each saved label also as a Secondary Capture of its contour over the film, "
        "for viewers (OHIF, most PACS viewers) that cannot overlay a SEG on a radiograph",
    )
    parser.add_argument(
        "--train-on-automatic",
        action="store_true",
        help="with a PACS: also fine-tune on the model-made (AUTOMATIC) lung SEGs of images no person has labelled, "
        "e.g. those of lungseg node or lungseg infer --stow-to, if quality control passed them (Content Description "
        "not starting 'QC review:' or 'QC reject:'). Default: only MANUAL and SEMIAUTOMATIC SEGs are training labels, "
        "so the model never trains on its own masks. Either way a person's (MANUAL, then SEMIAUTOMATIC) SEG of an "
        "image wins over a model's, whatever their dates",
    )
    parser.set_defaults(func=run)
    return parser


def start_server_args(args: argparse.Namespace, app_dir: Path, workdir: Path) -> list[str]:
    """The ``monailabel start_server`` arguments for a parsed ``lungseg label`` command line."""
    argv = [
        "start_server",
        "--app", str(app_dir),
        "--studies", str(args.studies),
        "--host", args.host,
        "--port", str(args.port),
        "--conf", "model", str(Path(args.model).resolve()),
        "--conf", "workdir", str(workdir),
    ]  # fmt: skip
    if args.device:
        argv += ["--conf", "device", args.device]
    if args.precision != DEFAULT_PRECISION:
        argv += ["--conf", "precision", args.precision]
    if args.train_config:
        argv += ["--conf", "train_config", str(args.train_config.resolve())]
    if args.overlay:
        argv += ["--conf", "overlay", "true"]
    if args.train_on_automatic:
        argv += ["--conf", "train_on_automatic", "true"]
    return argv


def _training_style(folder: Path) -> bool:
    """True for a folder with ``images/`` and no radiograph directly in it (the app lists only those)."""
    from lungseg_monai.io import SUPPORTED_SUFFIXES, is_dicom_file

    if not (folder / "images").is_dir():
        return False
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return not any(p.name.lower().endswith(SUPPORTED_SUFFIXES) or is_dicom_file(p) for p in files)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, prepare ``<workdir>/app`` and serve until interrupted."""
    from lungseg_monai.extras import EXIT_MISSING_EXTRA, missing_extra

    problem = missing_extra("label")
    if problem:
        logger.error("lungseg label: %s", problem)
        return EXIT_MISSING_EXTRA
    from lungseg_monai.label import APP_DIR
    from lungseg_monai.label.server import default_workdir, is_dicomweb_url
    from lungseg_monai.io.checkpoint import CheckpointError
    from lungseg_monai.dicomweb import check_url
    from lungseg_monai.pretrained import resolve_model

    if is_dicomweb_url(args.studies):
        try:
            args.studies = check_url(args.studies)
        except ValueError as e:
            logger.error("--studies: %s", e)
            return EXIT_BAD_ARGS
    elif not Path(args.studies).is_dir():
        logger.error(
            "studies folder '%s' does not exist; pass a folder of chest radiographs or a PACS's DICOMweb root "
            "(http://HOST:PORT/dicom-web)",
            args.studies,
        )
        return EXIT_BAD_ARGS
    elif _training_style(Path(args.studies)):
        from lungseg_monai.label.datastore import import_training_masks
        from lungseg_monai.label.errors import BadRequestError

        folder = Path(args.studies)
        try:
            imported, unlabelled = import_training_masks(folder)
        except (BadRequestError, FileNotFoundError, ValueError) as e:
            logger.error("training dataset '%s': its masks cannot be served as labels: %s", folder, e)
            return EXIT_BAD_ARGS
        logger.info(
            "training dataset '%s': serving its images/ with %d mask(s) from masks/ newly saved as final labels "
            "(%d image(s) without a mask)",
            folder,
            imported,
            unlabelled,
        )
        args.studies = str(folder / "images")
    elif args.train_on_automatic:
        logger.warning(
            "--train-on-automatic has no effect on a folder: its labels are all training labels "
            "(it applies to the DICOM SEGs of a PACS)"
        )
    try:
        args.model = resolve_model(args.model).resolve()
    except CheckpointError as e:
        logger.error("--model: %s", e)
        return EXIT_BAD_ARGS
    if not args.model.is_file():
        logger.error("model '%s' does not exist; pass the models/model.pt written by the bundle's training", args.model)
        return EXIT_BAD_ARGS
    if args.train_config is not None and not args.train_config.is_file():
        logger.error("training config '%s' does not exist; pass a bundle's configs/train.json", args.train_config)
        return EXIT_BAD_ARGS
    workdir = (args.workdir or default_workdir(str(args.studies))).resolve()
    if is_dicomweb_url(str(args.studies)):
        logger.info("lungseg label keeps its state (models, runs, the DICOMweb cache) in '%s'", workdir)
    else:
        logger.info(
            "lungseg label keeps its state (models, runs) in '%s'; labels you save go to '%s' and MONAI Label "
            "indexes the folder in '%s' (and '.lock')",
            workdir,
            Path(args.studies) / "labels" / "final",
            Path(args.studies) / "datastore_v2.json",
        )
    app_dir = workdir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(APP_DIR / "main.py", app_dir / "main.py")

    from monailabel.main import Main

    server = Main(loglevel=logging.INFO, actions=("start_server",))
    server.action_start_server(server.args_parser().parse_args(start_server_args(args, app_dir, workdir)))
    return 0
