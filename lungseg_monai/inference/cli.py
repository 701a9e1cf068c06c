"""``lungseg infer``: segment the lungs on radiograph files, folders and DICOM studies."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from tqdm.contrib.logging import logging_redirect_tqdm

from lungseg_monai.inference.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FORMATS,
    DEFAULT_MIN_SIZE_FRACTION,
    DEFAULT_NUM_COMPONENTS,
    DEFAULT_PRECISION,
    DEFAULT_WORKERS,
    FORMATS,
    PRECISIONS,
)

if TYPE_CHECKING:
    from lungseg_monai.inference.transforms import CleanLungMask

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
# --fail-on: some mask's quality verdict is as bad as asked for (2 is argparse's usage error).
EXIT_QC = 3
FAIL_ON_CHOICES = ("review", "reject")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``infer`` and its arguments; ``func`` runs it and returns the exit code."""
    parser = subparsers.add_parser(
        "infer",
        help="segment the lungs on PNG/JPEG/DICOM radiographs, folders and DICOM studies",
        description=(
            "Segment the lungs on chest radiographs. INPUT is a file, a folder (searched recursively) or a DICOM "
            "study folder. Writes OUT_DIR/masks/NAME.png (0/255, the input's size), overlays/NAME.png, "
            "nifti/NAME.nii.gz, dicomseg/NAME.dcm (DICOM inputs) and measurements.csv, and on request "
            "dicomsr/NAME.dcm (DICOM SR of the lung areas and the verdict) and dicomsc/NAME.dcm (secondary "
            "capture of the overlay, DICOM inputs); NAME is the "
            "SOPInstanceUID for DICOM, else the file name. Images too small, blank or elongated to be a radiograph "
            "are rejected, DICOMs whose header names another body part or modality skipped; each is listed with "
            "its reason. Every mask gets a quality verdict (pass, review, reject) in measurements.csv and the "
            "summary. Exit code 1 if any file failed, 3 with --fail-on when a verdict is that bad."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder or DICOM study folder")
    parser.add_argument("-o", "--output-dir", required=True, metavar="OUT_DIR", help="where outputs go")
    parser.add_argument(
        "--model", required=True, help="the bundle's models/model.pt (model.json beside it) or an exported model.ts"
    )
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help=f"comma-separated outputs among {','.join(FORMATS)} (default: %(default)s; dicomseg, dicomsr and "
        "dicomsc for DICOM inputs)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite outputs that exist (default: keep those OUT_DIR/manifest.json says were made from the same "
        "input content, model and settings)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per network call")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="network arithmetic: auto = bf16 autocast + channels-last on CPUs with bf16 instructions "
        "(AVX512-BF16/AMX), fp16 AMP on CUDA, fp32 elsewhere; probabilities are thresholded in fp32 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="threads for reading and for writing (each)"
    )
    parser.add_argument(
        "--no-postprocess",
        action="store_true",
        help="write the raw thresholded prediction (default: keep the two largest regions, drop specks, fill holes)",
    )
    parser.add_argument(
        "--keep-components", type=int, default=None, metavar="N", help="largest regions kept (default: 2)"
    )
    parser.add_argument(
        "--min-size-fraction",
        type=float,
        default=None,
        metavar="F",
        help="drop regions smaller than this fraction of the image (default: 0.005)",
    )
    parser.add_argument("--no-fill-holes", action="store_true", help="do not fill holes in the lungs")
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON_CHOICES,
        default=None,
        help="exit with code 3 when a mask's quality verdict is this or worse (for pipelines); all outputs are "
        "still written",
    )
    parser.add_argument(
        "--write-rejected-seg",
        action="store_true",
        help="write DICOM SEGs for masks that quality control rejects (default: none)",
    )
    parser.add_argument(
        "--no-header-check",
        action="store_true",
        help=(
            "segment DICOMs whose header names another body part or modality, for sites whose headers are wrong "
            "(the checks on the pixels still apply)"
        ),
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, without_training_modules=True)
    return parser


def _postprocess(args: argparse.Namespace) -> CleanLungMask | None:
    from lungseg_monai.inference.transforms import CleanLungMask

    if args.no_postprocess:
        return None
    return CleanLungMask(
        num_components=DEFAULT_NUM_COMPONENTS if args.keep_components is None else args.keep_components,
        min_size_fraction=DEFAULT_MIN_SIZE_FRACTION if args.min_size_fraction is None else args.min_size_fraction,
        fill_holes=not args.no_fill_holes,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``lungseg infer`` from parsed arguments; returns the exit code (1 if any file failed)."""
    from lungseg_monai.io.checkpoint import CheckpointError
    from lungseg_monai.inference.runner import parse_formats, segment_files

    try:
        formats = parse_formats(args.formats)
        postprocess = _postprocess(args)
    except ValueError as e:
        logger.error("%s", e)
        return EXIT_FAILED
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # highdicom logs each attribute module it copies at INFO; keep the run's log readable.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    with logging_redirect_tqdm():
        try:
            summary = segment_files(
                args.inputs,
                args.output_dir,
                args.model,
                formats=formats,
                overwrite=args.overwrite,
                batch_size=args.batch_size,
                device=args.device,
                precision=args.precision,
                workers=args.workers,
                postprocess=postprocess,
                progress=not args.no_progress,
                write_rejected=args.write_rejected_seg,
                check_headers=not args.no_header_check,
            )
        except (CheckpointError, ValueError) as e:
            logger.error("%s", e)
            return EXIT_FAILED
    if summary.found_nothing:
        logger.error("no radiographs found in %s", ", ".join(f"'{p}'" for p in args.inputs))
        return EXIT_FAILED
    for line in summary.report().splitlines():
        if line.startswith("FAILED"):
            logger.error(line)
        elif line.startswith(("rejected", "nothing", "QC ")):
            logger.warning(line)
        else:
            logger.info(line)
    if not summary.ok:
        return EXIT_FAILED
    flagged = summary.qc_failed(args.fail_on)
    if flagged:
        logger.error("%d mask(s) with a quality verdict of %s or worse (--fail-on)", len(flagged), args.fail_on)
        return EXIT_QC
    return EXIT_OK
