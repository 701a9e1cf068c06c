"""Segment many files: find them, run the model in batches, write every output, report what happened.

Reading and decoding (thread pool) overlaps the network (main thread, batches), which overlaps
resizing, post-processing and writing (second thread pool). Every output is written atomically,
an output is kept unless ``overwrite`` only when the manifest says it was made from the same input
content, model and settings (:mod:`lungseg_monai.inference.manifest`), and a file that fails is
reported with its reason while the others go on.

Layout of ``output_dir``::

    masks/NAME.png        lung mask, 0/255, the input's rows x columns and orientation
    overlays/NAME.png     lung contour (red) over the radiograph
    nifti/NAME.nii.gz     mask 0/1 with the input's geometry (x = columns, y = rows)
    dicomseg/NAME.dcm     DICOM SEG referencing the source (DICOM inputs only; none for a
                          mask quality control rejects or an input refused before the network,
                          unless ``write_rejected``: an earlier run's SEG of that name is then
                          removed, never kept or sent under today's verdict); its series and SOP
                          instance UIDs derive from the source's, the model identity and the
                          settings (:class:`~lungseg_monai.outputs.dicom_uids.ResultUIDs`), so
                          reruns give the same UIDs and other settings other UIDs
    dicomsr/NAME.dcm      DICOM SR (TID 1500) of the lung areas and the quality verdict, referencing
                          the source and the SEG when there is one (DICOM inputs only; a rejected
                          mask gets one too: it carries the verdict)
    dicomsc/NAME.dcm      DICOM Secondary Capture of the overlay, for viewers without SEG support
                          (DICOM inputs only); SR and SC UIDs are deterministic like the SEG's
    measurements.csv      one row per NAME: total, right and left lung area (px, cm²) and the
                          quality verdict (qc_status, qc_score, qc_reasons)
    manifest.json         per NAME: its input (resolved path, size, mtime, SHA-256), model identity,
                          settings, the outputs made from them and their quality verdict; names,
                          reruns and the verdicts of kept outputs follow it

Every mask gets a quality verdict (:mod:`lungseg_monai.qc`): ``pass``, ``review`` or ``reject``
(``unavailable`` when the model's QC calibration is missing or not for these weights), counted in
the run's summary. The summary holds the verdict of every input of the run, kept ones included
(read back from the manifest), so a rerun's report and ``--fail-on`` exit code equal a fresh run's.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from tqdm import tqdm

from lungseg_monai.inference.discovery import (
    Discovery,
    InferenceInput,
    SkippedInput,
    discover_inputs,
    read_dicom_header,
)
from lungseg_monai.inference.manifest import MANIFEST_FILE, InputState, OutputManifest
from lungseg_monai.inference.options import (
    DEFAULT_FORMATS,
    DEFAULT_PRECISION,
    DEFAULT_WORKERS,
    FORMATS,
)
from lungseg_monai.inference.predictor import LungSegmenter, QCForward
from lungseg_monai.inference.transforms import CleanLungMask, mask_to_uint8_2d
from lungseg_monai.io import Radiograph, RadiographReadError, read_radiograph
from lungseg_monai.outputs import overlay_contours, save_overlay, save_png
from lungseg_monai.outputs.dicom_uids import ResultUIDs
from lungseg_monai.outputs.measurements import measure_radiograph, read_measurements, write_measurements
from lungseg_monai.outputs.nifti import NIFTI_SUFFIX, save_nifti_mask
from lungseg_monai.qc.quality import (
    QC_REJECT,
    QC_REVIEW,
    QC_STATUSES,
    QC_UNAVAILABLE,
    QCResult,
    UncalibratedModelError,
)
from lungseg_monai.qc.input import ImplausibleInputError, ensure_plausible

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "MANIFEST_FILE",
    "MEASUREMENTS_FILE",
    "InferenceSummary",
    "output_path",
    "parse_formats",
    "segment_files",
]

logger = logging.getLogger(__name__)

# Per-file outputs: format -> (subfolder, suffix).
_LAYOUT = {
    "mask": ("masks", ".png"),
    "overlay": ("overlays", ".png"),
    "nifti": ("nifti", NIFTI_SUFFIX),
    "dicomseg": ("dicomseg", ".dcm"),
    "dicomsr": ("dicomsr", ".dcm"),
    "dicomsc": ("dicomsc", ".dcm"),
}
# Per-file outputs that only DICOM inputs get.
_DICOM_FORMATS = ("dicomseg", "dicomsr", "dicomsc")
MEASUREMENTS_FILE = "measurements.csv"
# Masks to review or rejected listed one by one in the run's report; the rest are in measurements.csv.
MAX_QC_LINES = 20


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"mask,overlay"`` (or a list) -> validated formats in canonical order.

    Raises:
        ValueError: an unknown format (the message lists the valid ones).
    """
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = sorted(set(names) - set(FORMATS))
    if unknown or not names:
        raise ValueError(f"unknown output format(s) {unknown or names!r}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def output_path(output_dir: str | os.PathLike, fmt: str, name: str) -> Path:
    """Where the ``fmt`` output of input ``name`` goes (``output_dir/masks/NAME.png`` ...)."""
    folder, suffix = _LAYOUT[fmt]
    return Path(output_dir) / folder / f"{name}{suffix}"


@dataclass
class InferenceSummary:
    """What a :func:`segment_files` run did.

    Attributes:
        output_dir: where the outputs are.
        segmented: inputs segmented in this run (some of their outputs were written).
        up_to_date: inputs whose outputs all existed already (kept; ``overwrite`` redoes them).
        rejected: files read but refused before the network (too small, blank, too elongated
            to be a radiograph: :func:`lungseg_monai.qc.input.check_pixels`), with the reason.
        skipped: files deliberately not segmented (non-image DICOM objects, lateral views ...).
        failed: files that could not be segmented or written, with the reason.
        written: every file written.
        qc: the quality verdict of every input of this run that was read, by output name
            (``reject`` for those refused before the network); for inputs whose outputs were
            kept, the verdict they were made with (from the manifest).
    """

    output_dir: Path
    segmented: list[InferenceInput] = field(default_factory=list)
    up_to_date: list[InferenceInput] = field(default_factory=list)
    rejected: list[SkippedInput] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    failed: list[SkippedInput] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    qc: dict[str, QCResult] = field(default_factory=dict)

    def qc_counts(self) -> dict[str, int]:
        """How many masks of this run got each QC status (``pass``, ``review``, ``reject``, ``unavailable``)."""
        counts = dict.fromkeys(QC_STATUSES, 0)
        for result in self.qc.values():
            counts[result.status] += 1
        return counts

    def qc_failed(self, fail_on: str | None, allow_uncalibrated: bool = False) -> list[str]:
        """Names whose verdict is ``fail_on`` (``review`` or ``reject``) or worse; [] when ``fail_on`` is None.

        ``unavailable`` (no usable QC calibration) fails either, unless ``allow_uncalibrated``: a
        gate that cannot check a mask does not pass it.
        """
        if fail_on is None:
            return []
        return sorted(
            name
            for name, result in self.qc.items()
            if result.at_least(fail_on) or (result.status == QC_UNAVAILABLE and not allow_uncalibrated)
        )

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    @property
    def found_nothing(self) -> bool:
        """True when the inputs held no file at all to segment, skip or report."""
        return not (self.segmented or self.up_to_date or self.rejected or self.skipped or self.failed)

    @property
    def segmented_nothing(self) -> bool:
        """True when inputs were found but none has a mask (all rejected, skipped or failed)."""
        return not (self.segmented or self.up_to_date or self.found_nothing)

    def report(self) -> str:
        """A few lines for people: counts, then each failure, rejection and skip with its reason."""
        lines = [
            (
                f"{len(self.segmented)} segmented, {len(self.rejected)} rejected, {len(self.up_to_date)} already done, "
                f"{len(self.skipped)} skipped, {len(self.failed)} failed; outputs in '{self.output_dir}'"
            )
        ]
        if self.qc:
            counts = self.qc_counts()
            lines.append(
                "quality control: "
                + ", ".join(f"{counts[s]} {s}" for s in QC_STATUSES if counts[s] or s != QC_UNAVAILABLE)
                + (f" ({len(self.rejected)} refused before the network)" if self.rejected else "")
            )
        by_name = {item.name: item for item in self.segmented}
        flagged = [(n, r) for n, r in sorted(self.qc.items()) if r.status in (QC_REVIEW, QC_REJECT) and n in by_name]
        for name, result in flagged[:MAX_QC_LINES]:
            lines.append(f"QC {result.status} '{by_name[name].path}': {result.reasons_text()}")
        if len(flagged) > MAX_QC_LINES:
            lines.append(
                f"... and {len(flagged) - MAX_QC_LINES} more masks to review or rejected: see qc_status in "
                f"'{self.output_dir / MEASUREMENTS_FILE}'"
            )
        if self.segmented_nothing:
            lines.append("nothing was segmented: every input was rejected, skipped or failed (reasons below)")
        lines += [f"FAILED '{s.path}': {s.reason}" for s in self.failed]
        lines += [f"rejected '{s.path}': {s.reason}" for s in self.rejected]
        lines += [f"skipped '{s.path}': {s.reason}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _Job:
    item: InferenceInput
    targets: dict[str, Path]  # per-file outputs still to write
    measure: bool  # a measurements row is needed
    seg_kept: Path | None = None  # the SEG a new SR references when the SEG itself is kept
    produced: list[str] = field(default_factory=list)  # the formats done (a withheld SEG too, without a file)


@dataclass(frozen=True)
class _Options:
    """Run-wide settings the writing threads need.

    Attributes:
        settings: what decides the outputs' content (:meth:`LungSegmenter.result_settings`): the
            manifest's reuse rule and the DICOM results' UIDs.
        output_dir: where the outputs go.
    """

    settings: dict[str, Any]
    output_dir: Path

    @property
    def write_rejected(self) -> bool:
        """Write the DICOM SEG of a mask quality control rejects (part of :attr:`settings`)."""
        return bool(self.settings["write_rejected"])


def _outputs(job: _Job) -> list[str]:
    """The formats a job writes, measurements included."""
    return [*job.targets, *(["measurements"] if job.measure else [])]


def _seg_withheld(status: str, write_rejected: bool) -> bool:
    """True when a mask with this QC status gets no DICOM SEG."""
    return status == QC_REJECT and not write_rejected


def _withhold_seg(job: _Job, options: _Options, reason: str) -> None:
    """No SEG for this job's input: remove one an earlier run left under its name (another model's, other
    settings', or a ``write_rejected`` run's), whatever formats this run writes, so that it is never kept,
    listed or sent under this verdict."""
    target = output_path(options.output_dir, "dicomseg", job.item.name)
    if target.exists():
        target.unlink()
        logger.warning("'%s': removed the DICOM SEG of an earlier run '%s' (%s)", job.item.path, target, reason)


def _plan(
    found: Discovery,
    output_dir: Path,
    formats: Sequence[str],
    overwrite: bool,
    rows: dict[str, Any],
    manifest: OutputManifest,
    states: dict[InferenceInput, InputState | None],
    settings: dict[str, Any],
) -> tuple[list[_Job], list[InferenceInput], list[InferenceInput]]:
    """Outputs still to write per input, the inputs whose outputs are all kept, and those no asked-for output
    applies to (DICOM formats only, for a non-DICOM input). An existing output is kept only when the
    manifest says it was made from this input's content with this model and these settings; anything
    else is redone. A SEG withheld for these settings counts as done without a file."""
    jobs, done, inapplicable = [], [], []
    for item in found.inputs:
        targets = {
            fmt: output_path(output_dir, fmt, item.name)
            for fmt in formats
            if fmt in _LAYOUT and (fmt not in _DICOM_FORMATS or item.is_dicom)
        }
        if not targets and "measurements" not in formats:
            inapplicable.append(item)
            continue
        valid = set() if overwrite else manifest.valid_outputs(item.name, states[item], settings["model"], settings)
        verdict = manifest.verdict(item.name) if valid else None
        withheld = verdict is not None and _seg_withheld(str(verdict.get("qc_status")), settings["write_rejected"])
        kept = {
            fmt: path
            for fmt, path in targets.items()
            if fmt in valid and (path.exists() or (fmt == "dicomseg" and withheld))
        }
        targets = {fmt: path for fmt, path in targets.items() if fmt not in kept}
        measure = "measurements" in formats and ("measurements" not in valid or item.name not in rows)
        if targets or measure:
            jobs.append(_Job(item, targets, measure, None if withheld else kept.get("dicomseg")))
        else:
            done.append(item)
    return jobs, done, inapplicable


def _save(summary: InferenceSummary, path: Path, save: Callable[[], bool]) -> bool:
    """Run ``save`` (True when it wrote ``path``); a failure is reported in ``summary``, not raised."""
    try:
        wrote = save()
    except OSError as e:
        summary.failed.append(SkippedInput(path, f"cannot be written ({e})"))
        logger.error("'%s': cannot be written (%s)", path, e)
        return False
    if wrote and path not in summary.written:
        summary.written.append(path)
    return True


def _load(segmenter: LungSegmenter, item: InferenceInput) -> tuple[Radiograph, torch.Tensor]:
    """Read and prepare one input; :class:`ImplausibleInputError` when its pixels cannot be a radiograph."""
    radiograph = read_radiograph(item.path)
    ensure_plausible(radiograph.pixels, item.path)
    return radiograph, segmenter.prepare(radiograph)


def _write_outputs(
    segmenter: LungSegmenter,
    job: _Job,
    radiograph: Radiograph,
    network_output: QCForward,
    options: _Options,
) -> tuple[list[Path], list[str], dict[str, Any] | None, QCResult]:
    """Mask and quality verdict from the network's output, then every output the job needs.

    Returns (files written, formats done, CSV row or None, QC verdict); a withheld SEG is done
    (decided: none for this verdict and these settings) without a file.
    """
    mask = segmenter.to_mask(network_output.probabilities[0], radiograph.shape)
    qc = segmenter.assess(network_output)
    if _seg_withheld(qc.status, options.write_rejected):
        _withhold_seg(job, options, "quality control rejects the mask")
    row = measure_radiograph(mask, radiograph, job.item.name) if job.measure or "dicomsr" in job.targets else None
    if row is not None:
        row.update(qc.as_row())
    dicom_wanted = any(fmt in _DICOM_FORMATS for fmt in job.targets)
    # The reader's own header reader (force=True): files without preamble and file meta (ACR-NEMA
    # style, old archives) were read for the mask and must get their DICOM results too.
    source = read_dicom_header(job.item.path) if dicom_wanted else None
    seg = job.seg_kept
    written, produced = [], []
    for fmt, target in job.targets.items():
        if fmt == "dicomseg" and _seg_withheld(qc.status, options.write_rejected):
            logger.warning("'%s': no DICOM SEG, QC rejects the mask (%s)", job.item.path, qc.reasons_text())
            produced.append(fmt)
            continue
        if fmt == "mask":
            save_png(mask_to_uint8_2d(mask), target)
        elif fmt == "overlay":
            save_overlay(radiograph.pixels, mask, target)
        elif fmt == "nifti":
            save_nifti_mask(mask, target, radiograph.geometry)
        elif source is not None:
            identity = segmenter.identity
            _write_dicom(fmt, target, job.item.path, source, identity, options, mask, radiograph, qc, row, seg)
            if fmt == "dicomseg":
                seg = target  # the SR of this job references it
        written.append(target)
        produced.append(fmt)
    return written, produced, row if job.measure else None, qc


def _write_dicom(
    fmt: str,
    target: Path,
    source_path: Path,
    source: pydicom.Dataset,
    identity: str,
    options: _Options,
    mask: np.ndarray,
    radiograph: Radiograph,
    qc: QCResult,
    row: dict[str, Any] | None,
    seg: Path | None,
) -> None:
    """Write the ``dicomseg``, ``dicomsr`` or ``dicomsc`` result of a DICOM input.

    Its UIDs derive from the source's, the model identity and the settings (:class:`ResultUIDs`):
    the same in every run with these settings, so resending a result to a PACS never makes a
    second object, and other settings never reuse a UID for other content. The SR references
    ``seg`` when there is one. highdicom is imported here, only when DICOM results are asked for.
    """
    uids = ResultUIDs.for_source(source, identity, options.settings)
    if fmt == "dicomseg":
        from lungseg_monai.outputs.dicom_seg import qc_content_description, save_lung_seg

        description = qc_content_description(qc)
        save_lung_seg(
            mask, source_path, target, uids.seg_series_uid, identity, description, sop_instance_uid=uids.seg_sop_uid
        )
    elif fmt == "dicomsr":
        from lungseg_monai.outputs.dicom_sr import save_lung_sr

        save_lung_sr(source, target, seg, row or {}, qc, identity, uids.sr_series_uid, uids.sr_sop_uid)
    elif fmt == "dicomsc":
        from lungseg_monai.outputs.dicom_sc import save_overlay_sc

        overlay = overlay_contours(radiograph.pixels, mask)
        save_overlay_sc(source, target, overlay, identity, uids.sc_series_uid, uids.sc_sop_uid)
    else:
        raise ValueError(f"unknown DICOM output format {fmt!r}; expected one of {', '.join(_DICOM_FORMATS)}")


def _reason(error: BaseException) -> str:
    if isinstance(error, RadiographReadError):
        return error.reason
    return f"{type(error).__name__}: {error}"


class _Pipeline:
    """Read (thread pool) -> network (this thread, in batches) -> mask and write (thread pool).

    At most ``2 * batch_size`` files are being read ahead and ``2 * batch_size`` being written,
    which bounds the memory held by decoded radiographs.
    """

    def __init__(
        self,
        segmenter: LungSegmenter,
        summary: InferenceSummary,
        rows: dict[str, Any],
        options: _Options,
        batch_size: int,
        workers: int,
        progress: bool,
        total: int,
    ) -> None:
        self.segmenter, self.summary, self.rows, self.options = segmenter, summary, rows, options
        self.batch_size = batch_size
        self.readers = ThreadPoolExecutor(workers, thread_name_prefix="lungseg-read")
        self.writers = ThreadPoolExecutor(workers, thread_name_prefix="lungseg-write")
        self.reads: collections.deque[tuple[_Job, Future]] = collections.deque()
        self.writes: collections.deque[tuple[_Job, Future]] = collections.deque()
        self.bar = tqdm(total=total, unit="image", desc="lungseg infer", disable=not progress)

    def run(self, jobs: Sequence[_Job]) -> None:
        queue = iter(jobs)
        self._read_ahead(queue)
        batch: list[tuple[_Job, Radiograph, torch.Tensor]] = []
        while self.reads:
            job, future = self.reads.popleft()
            self._read_ahead(queue)
            try:
                radiograph, tensor = future.result()
            except ImplausibleInputError as e:  # read, but not a radiograph: refused, not failed
                self._reject(job, e)
            except Exception as e:  # noqa: BLE001 - unreadable file: report it, go on with the others
                self._fail(job, e)
            else:
                batch.append((job, radiograph, tensor))
            if batch and (len(batch) == self.batch_size or not self.reads):
                self._run_batch(batch)
                batch = []
        self._drain(keep=0)

    def close(self) -> None:
        """Stop the threads (queued work is dropped after an interruption) and the progress bar."""
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.writers.shutdown(wait=True, cancel_futures=True)
        self.bar.close()

    def _read_ahead(self, queue: Iterator[_Job]) -> None:
        while len(self.reads) < 2 * self.batch_size:
            job = next(queue, None)
            if job is None:
                return
            self.reads.append((job, self.readers.submit(_load, self.segmenter, job.item)))

    def _run_batch(self, batch: list[tuple[_Job, Radiograph, torch.Tensor]]) -> None:
        try:
            network_output = self.segmenter.forward_qc(torch.stack([tensor for _, _, tensor in batch]))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: those files fail, the run goes on
            for job, _, _ in batch:
                self._fail(job, e)
            return
        for index, (job, radiograph, _) in enumerate(batch):
            future = self.writers.submit(
                _write_outputs, self.segmenter, job, radiograph, network_output.item(index), self.options
            )
            self.writes.append((job, future))
        self._drain(keep=2 * self.batch_size)

    def _drain(self, keep: int) -> None:
        """Collect finished writes, oldest first, waiting while more than ``keep`` are outstanding."""
        while self.writes and (len(self.writes) > keep or self.writes[0][1].done()):
            job, future = self.writes.popleft()
            try:
                written, job.produced, row, qc = future.result()
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
                self._fail(job, e)
                continue
            self.summary.written.extend(written)
            self.summary.qc[job.item.name] = qc
            if row is not None:
                self.rows[job.item.name] = row
            self.summary.segmented.append(job.item)
            self.bar.update(1)

    def _reject(self, job: _Job, error: ImplausibleInputError) -> None:
        self.summary.rejected.append(SkippedInput(job.item.path, error.reason))
        _withhold_seg(job, self.options, f"the input is refused: {error.reason}")
        verdict = QCResult.refused(error.reason)
        self.summary.qc[job.item.name] = verdict
        if job.measure:
            self.rows[job.item.name] = {"name": job.item.name, "input": str(job.item.path), **verdict.as_row()}
        logger.debug("rejected '%s': %s", job.item.path, error.reason)  # listed again in summary.report()
        self.bar.update(1)

    def _fail(self, job: _Job, error: BaseException) -> None:
        self.summary.failed.append(SkippedInput(job.item.path, _reason(error)))
        logger.error("'%s': %s", job.item.path, _reason(error))
        self.bar.update(1)


def segment_files(
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    model: str | os.PathLike | LungSegmenter | None,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    overwrite: bool = False,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    workers: int = DEFAULT_WORKERS,
    postprocess: CleanLungMask | bool | None = True,
    progress: bool = True,
    write_rejected: bool = False,
    check_headers: bool = True,
    precision: str = DEFAULT_PRECISION,
    allow_uncalibrated: bool = True,
) -> InferenceSummary:
    """Segment radiographs in files, folders and DICOM studies and write the outputs.

    Args:
        inputs: files, folders (recursive) or DICOM study folders.
        output_dir: where outputs go (see the module docstring for the layout).
        model: ``models/model.pt``, an exported ``model.ts``, a shipped model's name (None: the default,
            ``vgg16``), or a ready :class:`LungSegmenter`.
        formats: any of :data:`FORMATS` (``"mask,overlay"`` or a list); ``dicomseg``, ``dicomsr``
            and ``dicomsc`` apply to DICOM inputs only.
        overwrite: rewrite outputs that exist (default: keep those the manifest says were made from
            the same input content, model and settings, and skip that work).
        batch_size: images per network call (default: :meth:`LungSegmenter.auto_batch_size`, by
            the model's input size: 1 at 512 px, 4 at 256, 8 at 128 on a CPU; 4 on a GPU).
        device: e.g. ``"cpu"``, ``"cuda:0"`` (default: CUDA when available); ignored when
            ``model`` is a LungSegmenter.
        workers: threads for reading and for writing (each).
        postprocess: see :class:`LungSegmenter`; ignored when ``model`` is a LungSegmenter.
        progress: show a progress bar.
        write_rejected: also write DICOM SEGs of masks that quality control rejects.
        check_headers: skip DICOM images whose header names another body part or modality
            (False: segment them; the pixel checks still apply to every input).
        precision: one of :data:`~lungseg_monai.inference.options.PRECISIONS` (see
            :func:`~lungseg_monai.inference.precision.resolve_precision`); ignored when ``model``
            is a LungSegmenter.
        allow_uncalibrated: False: refuse a model whose quality control is unavailable
            (:attr:`LungSegmenter.qc_unavailable_reason`) before segmenting anything.

    Returns:
        An :class:`InferenceSummary`; ``summary.ok`` is False when any file failed (rejected
        and skipped files do not count as failures).

    Raises:
        UncalibratedModelError: ``allow_uncalibrated`` is False and the model's QC is unavailable.

    Example:
        >>> s = segment_files(["study/"], "out", "bundles/lung_cxr_segmentation/models/model.pt")  # doctest: +SKIP
        >>> s.ok, len(s.segmented)
        (True, 3)
    """
    formats = parse_formats(formats)
    if (batch_size is not None and batch_size < 1) or workers < 1:
        raise ValueError(f"batch_size and workers must be at least 1, got {batch_size} and {workers}")
    output_dir = Path(output_dir)
    segmenter = (
        model
        if isinstance(model, LungSegmenter)
        else LungSegmenter.from_model(model, device, postprocess=postprocess, precision=precision)
    )
    if not allow_uncalibrated and segmenter.qc is None:
        raise UncalibratedModelError(segmenter.qc_unavailable_reason or "the model has no QC calibration")
    manifest = OutputManifest.load(output_dir)
    # Never segment our own outputs, even when OUT_DIR is (inside) an input folder.
    excluded = [output_dir, *(output_dir / folder for folder, _ in _LAYOUT.values())]
    found = discover_inputs(inputs, exclude=excluded, names=manifest.names(), check_headers=check_headers)
    summary = InferenceSummary(output_dir, skipped=list(found.skipped), failed=list(found.failed))
    for s in found.failed:
        logger.error("'%s': %s", s.path, s.reason)
    for s in found.skipped:
        logger.debug("skipped '%s': %s", s.path, s.reason)  # listed again in summary.report()
    groups = found.series()
    if groups:
        logger.info(
            "%d DICOM image(s) in %d study(ies), %d series; %d other image(s)",
            sum(len(v) for g in groups.values() for v in g.values()),
            len(groups),
            sum(len(g) for g in groups.values()),
            sum(not i.is_dicom for i in found.inputs),
        )
    measurements_file = output_dir / MEASUREMENTS_FILE
    rows = read_measurements(measurements_file)
    rows_before = dict(rows)
    with ThreadPoolExecutor(workers, thread_name_prefix="lungseg-hash") as pool:
        states = dict(zip(found.inputs, pool.map(manifest.state, [item.path for item in found.inputs])))
    identity, settings = segmenter.identity, segmenter.result_settings(bool(write_rejected))
    jobs, summary.up_to_date, inapplicable = _plan(
        found, output_dir, formats, overwrite, rows, manifest, states, settings
    )
    summary.skipped += [
        SkippedInput(item.path, f"none of the formats asked for ({', '.join(formats)}) applies to a non-DICOM input")
        for item in inapplicable
    ]
    if batch_size is None:
        batch_size = segmenter.auto_batch_size()
    for item in summary.up_to_date:  # kept: its verdict is the one recorded; refresh the stat of touched inputs
        summary.qc[item.name] = QCResult.from_row(manifest.verdict(item.name) or {})
        if states[item] is not None:
            manifest.record(item.name, states[item], identity, settings, ())
    for job in jobs:  # about to be rewritten: not vouched for until written (a killed run redoes them)
        manifest.forget(job.item.name, _outputs(job))
    _save(summary, manifest.path, manifest.save)
    if summary.up_to_date:
        logger.info(
            "%d input(s) already have all outputs in '%s'; kept (--overwrite redoes them)",
            len(summary.up_to_date),
            output_dir,
        )
    options = _Options(settings, output_dir)
    pipeline = _Pipeline(segmenter, summary, rows, options, batch_size, workers, progress, len(jobs))
    try:
        pipeline.run(jobs)
    finally:
        pipeline.close()
        succeeded = set(summary.segmented)
        for job in jobs:
            if job.item in succeeded and states[job.item] is not None:
                produced = [*job.produced, *(["measurements"] if job.measure else [])]
                verdict = summary.qc[job.item.name].as_row()
                manifest.record(job.item.name, states[job.item], identity, settings, produced, verdict)
        for name in [n for n in rows if manifest.stale(n, "measurements")]:
            del rows[name]  # made from an input or settings the name's outputs no longer come from
        if rows != rows_before and not _save(
            summary, measurements_file, lambda: bool(write_measurements(rows.values(), measurements_file))
        ):
            for job in jobs:
                if job.measure:
                    manifest.forget(job.item.name, ["measurements"])
        _save(summary, manifest.path, manifest.save)
    return summary
