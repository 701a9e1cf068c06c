"""``lungseg infer``: segment the lungs on radiograph files, folders, DICOM studies and a PACS (DICOMweb).

With ``--dicomweb URL`` the instances a QIDO-RS query selects (``--study``, ``--series``,
``--modality``, ``--date``, ``--query``) are retrieved to ``OUT_DIR/dicomweb/STUDY/SERIES/SOP.dcm``
(kept there as a cache) and segmented like local files, beside any local INPUT. With
``--stow-to URL`` the DICOM results of this run's DICOM inputs are stored on that server (STOW-RS).
The DICOMweb client (:mod:`lungseg_monai.dicomweb`) is imported only when asked for.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import re
from collections.abc import Sequence
from pathlib import Path
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
    from lungseg_monai.inference.cluster import ClusterOptions
    from lungseg_monai.inference.discovery import SkippedInput
    from lungseg_monai.inference.runner import InferenceSummary
    from lungseg_monai.inference.transforms import CleanLungMask

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
# --fail-on: some mask's quality verdict is as bad as asked for (2 is argparse's usage error).
EXIT_QC = 3
# --stow-to: some DICOM result could not be stored on the DICOMweb server (they are all on disk).
EXIT_STOW = 4
FAIL_ON_CHOICES = ("review", "reject")
# Where --dicomweb puts the instances it retrieves, inside OUT_DIR (a cache: reruns do not fetch them again).
DICOMWEB_CACHE = "dicomweb"
# Result folders whose NAME.dcm files --stow-to sends (dicomsr and dicomsc when those formats exist).
STOW_FOLDERS = ("dicomseg", "dicomsr", "dicomsc")
_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


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
            "summary. With --dicomweb, the instances a query selects are retrieved from a PACS into "
            f"OUT_DIR/{DICOMWEB_CACHE}/ and segmented too; --stow-to stores the DICOM results on a PACS. Exit code 1 "
            "if any file failed (or could not be retrieved), 3 with --fail-on when a verdict is that bad, 4 when a "
            "result could not be stored with --stow-to."
        ),
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="file, folder or DICOM study folder (optional with --dicomweb)"
    )
    parser.add_argument("-o", "--output-dir", required=True, metavar="OUT_DIR", help="where outputs go")
    parser.add_argument(
        "--from-list",
        action="append",
        default=[],
        metavar="LIST",
        help="also segment the files a list names: a text file (one path per line) or a CSV (column path, file, "
        "image or filename, else the first); relative paths are relative to the list (repeatable)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a shipped model (vgg16, resnet50; see `lungseg models`), the bundle's models/model.pt (model.json "
        "beside it) or an exported model.ts (default: the shipped vgg16)",
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
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per network call (default: by the model's input size on a CPU, 1 at 512 px, 4 at 256, 8 at "
        f"128, the fastest measured for a ResNet50-UNet in bf16 on 2 cores; {DEFAULT_BATCH_SIZE} on a GPU)",
    )
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
        help="exit with code 3 when a mask's quality verdict is this or worse (for pipelines), or 'unavailable' "
        "(the model has no usable QC calibration) unless --allow-uncalibrated; all outputs are still written. "
        "Outputs kept from an earlier run count with the verdict they were made with",
    )
    parser.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="let masks whose QC verdict is 'unavailable' (a model without a QC calibration fitted on its weights) "
        "pass --fail-on and be sent by --stow-to (default: --fail-on fails them, --stow-to refuses such a model)",
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
    pacs = parser.add_argument_group(
        "PACS (DICOMweb)",
        "URL is the server's DICOMweb root, e.g. http://pacs:8042/dicom-web. --dicomweb needs at least one of "
        "--study, --series, --modality, --date and --query (it never pulls a whole PACS); they combine (AND).",
    )
    pacs.add_argument(
        "--dicomweb",
        metavar="URL",
        help=f"also segment the instances a QIDO-RS query on this server selects (retrieved to OUT_DIR/"
        f"{DICOMWEB_CACHE}/, kept for reruns)",
    )
    pacs.add_argument("--study", metavar="UID", help="StudyInstanceUID to pull")
    pacs.add_argument("--series", metavar="UID", help="SeriesInstanceUID to pull")
    pacs.add_argument("--modality", metavar="LIST", help="modalities to pull, e.g. CR,DX")
    pacs.add_argument(
        "--date", metavar="FROM-TO", help="study dates to pull: YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD"
    )
    pacs.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEYWORD=VALUE",
        help="another QIDO-RS matching key, e.g. AccessionNumber=A123 or BodyPartExamined=CHEST (repeatable)",
    )
    pacs.add_argument(
        "--stow-to",
        metavar="URL",
        help="store the DICOM results (SEG; SR, SC when written) of this run's DICOM inputs on this server with "
        "STOW-RS (needs dicomseg in --formats); one it already holds is not duplicated",
    )
    scale = parser.add_argument_group(
        "scale-out (Ray; needs the 'ray' extra)",
        "The films are segmented and their outputs written by a pool of Ray actors, each holding the model once; "
        "this process plans, records and reports as without --ray. OUT_DIR and the model file must be on a file "
        "system every node sees. A film that fails is reported and the run goes on; a dead worker's films are "
        "redone; a rerun after a crash does only the rest.",
    )
    scale.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: no ADDRESS (or 'local') starts Ray on this machine for the run; 'auto' joins the cluster "
        "of this machine (after `ray start`); ray://HOST:10001 connects with Ray Client",
    )
    scale.add_argument(
        "--actors",
        type=int,
        default=None,
        help="model copies at work at once (default: one per GPU of the cluster, or its CPUs / --cpus-per-actor)",
    )
    scale.add_argument(
        "--cpus-per-actor", type=int, default=1, help="CPUs (torch threads) per actor on CPU nodes (default: 1)"
    )
    scale.add_argument(
        "--films-per-task",
        type=int,
        default=None,
        help="films per Ray task; a dead worker's task is redone whole (default: 32)",
    )
    parser.set_defaults(func=run)
    return parser


# What --ray ADDRESS may be; anything else after --ray is the first INPUT (`--ray images/ -o out`).
_RAY_ADDRESS = re.compile(r"local|auto|[a-z]+://\S+|[\w.\-]+:\d+")


def _cluster(args: argparse.Namespace) -> ClusterOptions | None:
    """The Ray options of ``--ray``, or None without it.

    Raises:
        ValueError: an option out of range.
    """
    from lungseg_monai.inference.cluster import FILMS_PER_TASK, LOCAL, ClusterOptions

    if args.ray is None:
        if args.actors is not None or args.films_per_task is not None:
            raise ValueError("--actors and --films-per-task need --ray")
        return None
    if not _RAY_ADDRESS.fullmatch(args.ray):
        args.inputs.insert(0, args.ray)
        args.ray = LOCAL
    return ClusterOptions(args.ray, args.actors, args.cpus_per_actor, args.films_per_task or FILMS_PER_TASK)


def _postprocess(args: argparse.Namespace) -> CleanLungMask | None:
    from lungseg_monai.inference.transforms import CleanLungMask

    if args.no_postprocess:
        return None
    return CleanLungMask(
        num_components=DEFAULT_NUM_COMPONENTS if args.keep_components is None else args.keep_components,
        min_size_fraction=DEFAULT_MIN_SIZE_FRACTION if args.min_size_fraction is None else args.min_size_fraction,
        fill_holes=not args.no_fill_holes,
    )


def _study_dates(text: str) -> str:
    """``--date`` -> a QIDO-RS StudyDate range; ValueError saying the accepted forms."""
    match = _DATE.match(text.strip())
    first, dash, last = match.groups() if match else (None, None, None)
    if not match or not (first or last) or (first and last and not dash):
        raise ValueError(
            f"--date {text!r} is not a date or range; use YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD"
        )
    for day in filter(None, (first, last)):
        try:
            datetime.datetime.strptime(day, "%Y%m%d")
        except ValueError:
            raise ValueError(f"--date {text!r}: {day} is not a calendar date (YYYYMMDD)") from None
    if first and last and first > last:
        raise ValueError(f"--date {text!r} ends before it starts; give FROM-TO with FROM first")
    return text.strip()


def _pacs_query(args: argparse.Namespace) -> list[dict[str, str]]:
    """The QIDO-RS filters ``--modality``, ``--date`` and ``--query`` ask for: one dict per modality.

    Raises:
        ValueError: a malformed value, or a key given twice.
    """
    filters: dict[str, str] = {}
    for item in args.query:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--query {item!r} is not KEYWORD=VALUE (e.g. AccessionNumber=A123)")
        if key.strip() in filters:
            raise ValueError(f"--query gives {key.strip()} twice; give each key once")
        filters[key.strip()] = value.strip()
    for key, flag in (("Modality", "--modality"), ("StudyDate", "--date")):
        if key in filters and getattr(args, flag[2:]):
            raise ValueError(f"{key} is given by both {flag} and --query; give it once")
    if args.date:
        filters["StudyDate"] = _study_dates(args.date)
    if not args.modality:
        return [filters]
    modalities = [m.strip().upper() for m in args.modality.split(",") if m.strip()]
    bad = [m for m in modalities if not _MODALITY.match(m)]
    if bad or not modalities:
        raise ValueError(f"--modality {args.modality!r} is not a list of DICOM modalities (e.g. CR,DX)")
    # One search per modality: servers differ on multi-valued matching.
    return [filters | {"Modality": m} for m in dict.fromkeys(modalities)]


def _check_sources(args: argparse.Namespace, formats: tuple[str, ...]) -> None:
    """ValueError when the inputs and PACS options do not make a run."""
    selectors = [f"--{n}" for n in ("study", "series", "modality", "date", "query") if getattr(args, n)]
    if selectors and not args.dicomweb:
        raise ValueError(f"{', '.join(selectors)} select(s) instances on a PACS: give the server with --dicomweb URL")
    if not args.inputs and not args.dicomweb and not args.from_list:
        raise ValueError(
            "nothing to segment: give INPUT files or folders, --from-list LIST, or --dicomweb URL with --study UID"
        )
    if args.dicomweb and not selectors:
        raise ValueError(
            f"--dicomweb {args.dicomweb} without --study, --series, --modality, --date or --query would pull the "
            "whole PACS; say which instances to segment"
        )
    if args.stow_to and "dicomseg" not in formats:
        raise ValueError(f"--stow-to stores DICOM SEGs: add dicomseg to --formats (got {','.join(formats)})")
    if args.dicomweb or args.stow_to:
        from lungseg_monai.dicomweb import check_url

        for flag, url in (("--dicomweb", args.dicomweb), ("--stow-to", args.stow_to)):
            if url:
                try:
                    check_url(url)
                except ValueError as e:
                    raise ValueError(f"{flag}: {e}") from None


def _pull(args: argparse.Namespace, queries: list[dict[str, str]]) -> tuple[list[Path], list[SkippedInput]]:
    """Search and retrieve what ``--dicomweb`` selects: (files, instances that could not be retrieved).

    Raises:
        DicomwebError: the server cannot be reached or refuses the search.
    """
    from lungseg_monai.inference.discovery import SkippedInput
    from lungseg_monai.io import NON_IMAGE_MODALITIES
    from lungseg_monai.dicomweb import retrieve_instances, search_instances

    found = {}
    for filters in queries:
        for ref in search_instances(args.dicomweb, study=args.study, series=args.series, filters=filters):
            found.setdefault(ref.sop_uid, ref)
    # Reports, SEGs (ours from earlier runs too) and other objects without an image are not fetched.
    refs = [r for r in found.values() if r.modality.upper() not in NON_IMAGE_MODALITIES]
    logger.info(
        "DICOMweb '%s': %d instance(s) match, %d of them without an image (not retrieved)",
        args.dicomweb,
        len(found),
        len(found) - len(refs),
    )
    cache = Path(args.output_dir) / DICOMWEB_CACHE
    files = retrieve_instances(args.dicomweb, refs, cache)
    # Reported under the path the instance would have had in the cache; the reason names the server.
    failed = [
        SkippedInput(cache / ref.study_uid / ref.series_uid / f"{ref.sop_uid}.dcm", reason)
        for ref, reason in files.failed.items()
    ]
    return list(files), failed


def _results_to_store(summary: InferenceSummary, formats: Sequence[str]) -> list[Path]:
    """This run's DICOM results: NAME.dcm in the :data:`STOW_FOLDERS` asked for in ``formats``, for each DICOM input
    segmented or kept, when the output manifest vouches for that file (written or kept for this input's content,
    this model and these settings). Never an earlier run's file made with another model or settings, and never a
    SEG quality control withheld (none is on disk)."""
    from lungseg_monai.inference.manifest import OutputManifest

    manifest = OutputManifest.load(summary.output_dir)
    paths = []
    for item in [*summary.segmented, *summary.up_to_date]:
        entry = manifest.entries.get(item.name)
        if not item.is_dicom or entry is None:
            continue
        for folder in STOW_FOLDERS:
            path = summary.output_dir / folder / f"{item.name}.dcm"
            if folder in formats and folder in entry.outputs and path.is_file():
                paths.append(path)
    return paths


def _push(url: str, summary: InferenceSummary, formats: Sequence[str]) -> bool:
    """STOW-RS this run's DICOM results to ``url``; False (reasons logged) when any was not stored."""
    from lungseg_monai.dicomweb import DicomwebError, stow

    paths = _results_to_store(summary, formats)
    if not paths:
        logger.warning("--stow-to: no DICOM results to store (no DICOM input has a SEG in this run)")
        return True
    try:
        result = stow(url, paths)
    except DicomwebError as e:
        logger.error("--stow-to: none of %d DICOM result(s) stored: %s", len(paths), e)
        return False
    logger.info("--stow-to: %d DICOM result(s) stored on '%s', %d failed", len(result.stored), url, len(result.failed))
    for path, reason in result.failed.items():
        logger.error("--stow-to: '%s' not stored: %s", path, reason)
    return result.ok


def run(args: argparse.Namespace) -> int:
    """Run ``lungseg infer`` from parsed arguments; returns the exit code (0, or EXIT_FAILED, EXIT_STOW, EXIT_QC)."""
    from lungseg_monai.io.checkpoint import CheckpointError
    from lungseg_monai.inference.cluster import WorkerSettingsError
    from lungseg_monai.inference.discovery import read_input_list
    from lungseg_monai.inference.runner import parse_formats, segment_files
    from lungseg_monai.qc.quality import QC_UNAVAILABLE

    from lungseg_monai.extras import EXIT_MISSING_EXTRA, missing_extra

    needs = ((args.dicomweb or args.stow_to, "pacs", ("dicomweb_client",)), (args.ray, "ray", ()))
    for wanted, extra, modules in needs:
        problem = missing_extra(extra, *modules) if wanted else None
        if problem:
            logger.error("%s: %s", "--ray" if extra == "ray" else "--dicomweb / --stow-to", problem)
            return EXIT_MISSING_EXTRA
    try:
        formats = parse_formats(args.formats)
        postprocess = _postprocess(args)
        cluster = _cluster(args)
        _check_sources(args, formats)
        # Malformed --modality, --date, --query: refused before the model loads.
        queries = _pacs_query(args) if args.dicomweb else []
    except ValueError as e:
        logger.error("%s", e)
        return EXIT_FAILED
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # highdicom logs each attribute module it copies at INFO, dicomweb-client each request and retrying
        # each failed attempt with its traceback; keep the run's log readable (the final error is logged).
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
        logging.getLogger("retrying").setLevel(logging.ERROR)
    inputs, not_retrieved = list(args.inputs), []
    try:
        for list_file in args.from_list:
            inputs += read_input_list(list_file)
    except ValueError as e:
        logger.error("--from-list: %s", e)
        return EXIT_FAILED
    if args.dicomweb:
        from lungseg_monai.dicomweb import DicomwebError

        try:
            pulled, not_retrieved = _pull(args, queries)
        except (DicomwebError, ValueError) as e:
            logger.error("--dicomweb: %s", e)
            return EXIT_FAILED
        if not pulled and not inputs:
            logger.error(
                "--dicomweb: no image on '%s' to segment (%d could not be retrieved)", args.dicomweb, len(not_retrieved)
            )
            return EXIT_FAILED
        inputs += pulled
    with logging_redirect_tqdm():
        try:
            summary = segment_files(
                inputs,
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
                # Results that go to a PACS must have been checked, unless the user says otherwise.
                allow_uncalibrated=args.allow_uncalibrated or not args.stow_to,
                cluster=cluster,
            )
        except (CheckpointError, ValueError, WorkerSettingsError) as e:
            logger.error("%s", e)
            return EXIT_FAILED
    summary.failed += not_retrieved
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
    stored = _push(args.stow_to, summary, formats) if args.stow_to else True
    if not summary.ok:
        return EXIT_FAILED
    if not stored:
        return EXIT_STOW
    flagged = summary.qc_failed(args.fail_on, args.allow_uncalibrated)
    if flagged:
        unchecked = sum(summary.qc[name].status == QC_UNAVAILABLE for name in flagged)
        logger.error(
            "%d mask(s) with a quality verdict of %s or worse (--fail-on)%s",
            len(flagged),
            args.fail_on,
            f", {unchecked} of them unchecked: QC unavailable ({summary.qc[flagged[0]].reasons_text()}); "
            "--allow-uncalibrated lets those pass"
            if unchecked
            else "",
        )
        return EXIT_QC
    return EXIT_OK
