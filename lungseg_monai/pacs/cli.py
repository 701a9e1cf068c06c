"""``lungseg node``: run the DICOM node, or print its counts (``--status``)."""

from __future__ import annotations

import argparse
import json
import logging

from lungseg_monai.inference.options import DEFAULT_PRECISION, PRECISIONS
from lungseg_monai.pacs.config import DEFAULT_AET, DEFAULT_MAX_ASSOCIATIONS, DEFAULT_PORT

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``node`` and its arguments; ``func`` runs it and returns the exit code."""
    parser = subparsers.add_parser(
        "node",
        help="a DICOM node: receive radiographs (C-STORE), segment them, send SEG + SR to a PACS",
        description=(
            "Listen for DICOM associations (C-ECHO, C-STORE), segment every frontal chest radiograph received, "
            "and send its DICOM SEG and SR (lung areas, quality verdict) to each --send-to peer (C-STORE) and "
            "--stow-to server (STOW-RS). Every accepted instance is on disk before its success status is "
            "answered, so kill -9 and a restart lose nothing; results wait in the spool's outbox while a "
            "destination is down; a result a destination refuses is retried a few times, then set aside in "
            "the spool's undeliverable/ folder while the others go on. Other objects (CT, MR, lateral views, "
            "non-chest films) are skipped with a reason in the log; an instance that crashed the node three "
            "times goes to failed/. One node per spool (a second one exits with an error). SIGTERM finishes "
            "the current batch and leaves the rest spooled. Options given here override the --config file's."
        ),
    )
    parser.add_argument("--config", default=None, metavar="FILE", help="JSON file with the node's settings")
    parser.add_argument(
        "--model",
        default=None,
        help="a shipped model (vgg16, resnet50), the bundle's models/model.pt or an exported model.ts (default: vgg16)",
    )
    parser.add_argument("--spool", default=None, metavar="DIR", help="the node's spool folder (local disk)")
    parser.add_argument("--aet", default=None, help=f"the node's AE title (default: {DEFAULT_AET})")
    parser.add_argument("--port", type=int, default=None, help=f"port to listen on (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--bind", default=None, help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)"
    )
    parser.add_argument(
        "--send-to",
        action="append",
        default=None,
        metavar="AET@HOST:PORT",
        help="a DICOM peer to C-STORE the results to (repeat for several)",
    )
    parser.add_argument(
        "--stow-to",
        action="append",
        default=None,
        metavar="URL",
        help="a DICOMweb server to STOW-RS the results to, e.g. http://pacs:8042/dicom-web (repeatable)",
    )
    parser.add_argument(
        "--allow-aet",
        dest="allowed_aets",
        action="append",
        default=None,
        metavar="AET",
        help="calling AE titles accepted; others are rejected at association (repeatable; default: any)",
    )
    parser.add_argument(
        "--max-associations",
        type=int,
        default=None,
        help=f"concurrent associations accepted (default: {DEFAULT_MAX_ASSOCIATIONS})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="instances per network call (default: by the model's input size, as lungseg infer: 1 at 512 px on a CPU)",
    )
    parser.add_argument(
        "--overlay",
        action="store_true",
        default=None,
        help="also send a Secondary Capture of the lung contour over the film, for viewers without SEG",
    )
    parser.add_argument(
        "--write-rejected-seg",
        action="store_true",
        default=None,
        help="also send SEGs of masks that quality control rejects (their SR says reject)",
    )
    parser.add_argument(
        "--no-header-check",
        dest="check_headers",
        action="store_false",
        default=None,
        help="segment images whose header names another body part or modality (the pixel checks still apply)",
    )
    parser.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        default=None,
        help="start with a model that has no QC calibration and send results whose QC verdict is 'unavailable' "
        "(default: refuse such a model; calibrate it with the bundle's calibrate_qc)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None, help=f"network arithmetic (default: {DEFAULT_PRECISION})"
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print the spool's counts (received, segmented, sent, failed, waiting) as JSON and exit "
        "(read only: works beside the node running on that spool)",
    )
    parser.set_defaults(func=run)
    return parser


_SETTINGS = (
    "model",
    "spool",
    "aet",
    "port",
    "bind",
    "send_to",
    "stow_to",
    "allowed_aets",
    "max_associations",
    "batch_size",
    "overlay",
    "write_rejected_seg",
    "check_headers",
    "allow_uncalibrated",
    "device",
    "precision",
)


def run(args: argparse.Namespace) -> int:
    """Run ``lungseg node`` from parsed arguments; returns the exit code."""
    from lungseg_monai.pacs.config import load_config

    overrides = {name: getattr(args, name) for name in _SETTINGS}
    if args.status:
        from lungseg_monai.pacs.spool import Spool

        spool = args.spool
        if spool is None and args.config is not None:
            spool = json.loads(open(args.config, encoding="utf-8").read()).get("spool")
        if not spool:
            logger.error("--status needs --spool DIR (or a --config file naming it)")
            return EXIT_FAILED
        try:
            status = Spool(spool, read_only=True).status()  # no lock: a running node keeps its spool
        except FileNotFoundError as e:
            logger.error("%s", e)
            return EXIT_FAILED
        print(json.dumps(status, indent=2))
        return EXIT_OK
    try:
        config = load_config(args.config, overrides)
    except ValueError as e:
        logger.error("%s", e)
        return EXIT_FAILED
    from lungseg_monai.extras import EXIT_MISSING_EXTRA, missing_extra

    problem = missing_extra("pacs")
    if problem:
        logger.error("lungseg node: %s", problem)
        return EXIT_MISSING_EXTRA
    from lungseg_monai.io.checkpoint import CheckpointError
    from lungseg_monai.pacs.node import DicomNode
    from lungseg_monai.pacs.spool import SpoolInUseError

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # highdicom logs each module it copies, pynetdicom each association at INFO.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        DicomNode(config).serve_forever()
    except (CheckpointError, OSError, ValueError, SpoolInUseError) as e:
        logger.error("%s", e)
        return EXIT_FAILED
    return EXIT_OK
