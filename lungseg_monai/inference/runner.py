"""Segment many files: find them, run the model in batches, write every output, report what happened.

Reading and decoding (thread pool) overlaps the network (main thread, batches), which overlaps
resizing, post-processing and writing (second thread pool). Every output is written atomically,
outputs newer than their input and the model are kept unless ``overwrite``, and a file that fails
is reported with its reason while the others go on.

Layout of ``output_dir``::

    masks/NAME.png        lung mask, 0/255, the input's rows x columns and orientation
    overlays/NAME.png     lung contour (red) over the radiograph
    nifti/NAME.nii.gz     mask 0/1 with the pixel spacing (x = columns, y = rows)
    dicomseg/NAME.dcm     DICOM SEG referencing the source (DICOM inputs only)
    measurements.csv      one row per NAME: total, right and left lung area (px, cm²)
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydicom.uid import generate_uid
from tqdm import tqdm

from lungseg_monai import __version__
from lungseg_monai.inference.discovery import Discovery, InferenceInput, SkippedInput, discover_inputs
from lungseg_monai.inference.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FORMATS,
    DEFAULT_PRECISION,
    DEFAULT_WORKERS,
    FORMATS,
)
from lungseg_monai.inference.predictor import LungSegmenter
from lungseg_monai.inference.transforms import CleanLungMask, mask_to_uint8_2d
from lungseg_monai.io import Radiograph, RadiographReadError, read_radiograph
from lungseg_monai.outputs import save_overlay, save_png
from lungseg_monai.outputs.measurements import measure_lungs, read_measurements, write_measurements
from lungseg_monai.outputs.nifti import NIFTI_SUFFIX, save_nifti_mask

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
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
}
MEASUREMENTS_FILE = "measurements.csv"


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
        skipped: files deliberately not segmented (non-image DICOM objects, lateral views ...).
        failed: files that could not be segmented or written, with the reason.
        written: every file written.
    """

    output_dir: Path
    segmented: list[InferenceInput] = field(default_factory=list)
    up_to_date: list[InferenceInput] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    failed: list[SkippedInput] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    @property
    def found_nothing(self) -> bool:
        """True when the inputs held no file at all to segment, skip or report."""
        return not (self.segmented or self.up_to_date or self.skipped or self.failed)

    def report(self) -> str:
        """A few lines for people: counts, then each failure and skip with its reason."""
        lines = [
            (
                f"{len(self.segmented)} segmented, {len(self.up_to_date)} already done, "
                f"{len(self.skipped)} skipped, {len(self.failed)} failed; outputs in '{self.output_dir}'"
            )
        ]
        lines += [f"FAILED '{s.path}': {s.reason}" for s in self.failed]
        lines += [f"skipped '{s.path}': {s.reason}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _Job:
    item: InferenceInput
    targets: dict[str, Path]  # per-file outputs still to write
    measure: bool  # a measurements row is needed


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _plan(
    found: Discovery,
    output_dir: Path,
    formats: Sequence[str],
    overwrite: bool,
    rows: dict[str, Any],
    model_mtime: float | None = None,
) -> tuple[list[_Job], list[InferenceInput]]:
    """Outputs still to write per input. Like make, an existing output is kept only when it is newer
    than its input and the model: a replaced image or a retrained model is segmented again."""
    jobs, done = [], []
    rows_mtime = _mtime(output_dir / MEASUREMENTS_FILE) or -1.0
    for item in found.inputs:
        targets = {
            fmt: output_path(output_dir, fmt, item.name)
            for fmt in formats
            if fmt in _LAYOUT and (fmt != "dicomseg" or item.is_dicom)
        }
        changed = max(filter(None, (_mtime(Path(item.path)), model_mtime)), default=0.0)
        if not overwrite:
            targets = {fmt: path for fmt, path in targets.items() if (_mtime(path) or -1.0) < changed}
        measure = "measurements" in formats and (overwrite or item.name not in rows or rows_mtime < changed)
        if targets or measure:
            jobs.append(_Job(item, targets, measure))
        else:
            done.append(item)
    return jobs, done


def _load(segmenter: LungSegmenter, item: InferenceInput) -> tuple[Radiograph, torch.Tensor]:
    radiograph = read_radiograph(item.path)
    return radiograph, segmenter.prepare(radiograph)


def _write_outputs(
    segmenter: LungSegmenter,
    job: _Job,
    radiograph: Radiograph,
    probability: torch.Tensor,
    seg_series: dict[str, str],
) -> tuple[list[Path], dict[str, Any] | None]:
    """Mask from the probability, then every output the job needs. Returns (files written, CSV row)."""
    mask = segmenter.to_mask(probability, radiograph.shape)
    written = []
    for fmt, target in job.targets.items():
        if fmt == "mask":
            save_png(mask_to_uint8_2d(mask), target)
        elif fmt == "overlay":
            save_overlay(radiograph.pixels, mask, target)
        elif fmt == "nifti":
            save_nifti_mask(mask, target, radiograph.spacing)
        elif fmt == "dicomseg":
            # Imported here: highdicom is only needed when DICOM SEGs are asked for.
            from lungseg_monai.outputs.dicom_seg import save_lung_seg

            save_lung_seg(mask, job.item.path, target, seg_series[job.item.series_uid], __version__)
        written.append(target)
    row = measure_lungs(mask, radiograph.spacing, job.item.name, str(job.item.path)) if job.measure else None
    return written, row


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
        seg_series: dict[str, str],
        batch_size: int,
        workers: int,
        progress: bool,
        total: int,
    ) -> None:
        self.segmenter, self.summary, self.rows, self.seg_series = segmenter, summary, rows, seg_series
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
            probabilities = self.segmenter.forward(torch.stack([tensor for _, _, tensor in batch]))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: those files fail, the run goes on
            for job, _, _ in batch:
                self._fail(job, e)
            return
        for (job, radiograph, _), probability in zip(batch, probabilities):
            future = self.writers.submit(_write_outputs, self.segmenter, job, radiograph, probability, self.seg_series)
            self.writes.append((job, future))
        self._drain(keep=2 * self.batch_size)

    def _drain(self, keep: int) -> None:
        """Collect finished writes, oldest first, waiting while more than ``keep`` are outstanding."""
        while self.writes and (len(self.writes) > keep or self.writes[0][1].done()):
            job, future = self.writes.popleft()
            try:
                written, row = future.result()
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
                self._fail(job, e)
                continue
            self.summary.written.extend(written)
            if row is not None:
                self.rows[job.item.name] = row
            self.summary.segmented.append(job.item)
            self.bar.update(1)

    def _fail(self, job: _Job, error: BaseException) -> None:
        self.summary.failed.append(SkippedInput(job.item.path, _reason(error)))
        logger.error("'%s': %s", job.item.path, _reason(error))
        self.bar.update(1)


def segment_files(
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    model: str | os.PathLike | LungSegmenter,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    workers: int = DEFAULT_WORKERS,
    postprocess: CleanLungMask | bool | None = True,
    progress: bool = True,
    precision: str = DEFAULT_PRECISION,
) -> InferenceSummary:
    """Segment radiographs in files, folders and DICOM studies and write the outputs.

    Args:
        inputs: files, folders (recursive) or DICOM study folders.
        output_dir: where outputs go (see the module docstring for the layout).
        model: ``models/model.pt``, an exported ``model.ts``, or a ready :class:`LungSegmenter`.
        formats: any of :data:`FORMATS` (``"mask,overlay"`` or a list); ``dicomseg`` applies to
            DICOM inputs only.
        overwrite: rewrite outputs that exist (default: keep those newer than their input and the
            model, and skip that work).
        batch_size: images per network call.
        device: e.g. ``"cpu"``, ``"cuda:0"`` (default: CUDA when available); ignored when
            ``model`` is a LungSegmenter.
        workers: threads for reading and for writing (each).
        postprocess: see :class:`LungSegmenter`; ignored when ``model`` is a LungSegmenter.
        progress: show a progress bar.
        precision: one of :data:`~lungseg_monai.inference.options.PRECISIONS` (see
            :func:`~lungseg_monai.inference.precision.resolve_precision`); ignored when ``model``
            is a LungSegmenter.

    Returns:
        An :class:`InferenceSummary`; ``summary.ok`` is False when any file failed.

    Example:
        >>> s = segment_files(["study/"], "out", "bundles/lung_cxr_segmentation/models/model.pt")  # doctest: +SKIP
        >>> s.ok, len(s.segmented)
        (True, 3)
    """
    formats = parse_formats(formats)
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be at least 1, got {batch_size} and {workers}")
    output_dir = Path(output_dir)
    segmenter = (
        model
        if isinstance(model, LungSegmenter)
        else LungSegmenter.from_model(model, device, postprocess=postprocess, precision=precision)
    )
    # Never segment our own outputs, even when OUT_DIR is (inside) an input folder.
    found = discover_inputs(inputs, exclude=[output_dir, *(output_dir / folder for folder, _ in _LAYOUT.values())])
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
    rows = read_measurements(measurements_file) if "measurements" in formats else {}
    model_mtime = None if isinstance(model, LungSegmenter) else _mtime(Path(model))
    jobs, summary.up_to_date = _plan(found, output_dir, formats, overwrite, rows, model_mtime)
    if summary.up_to_date:
        logger.info(
            "%d input(s) already have all outputs in '%s'; kept (--overwrite redoes them)",
            len(summary.up_to_date),
            output_dir,
        )
    # One new SEG series per source series in this run.
    seg_series = {series: generate_uid() for series in {j.item.series_uid for j in jobs if j.item.is_dicom}}
    pipeline = _Pipeline(segmenter, summary, rows, seg_series, batch_size, workers, progress, len(jobs))
    try:
        pipeline.run(jobs)
    finally:
        pipeline.close()
        if "measurements" in formats and (rows or measurements_file.exists()):
            try:
                write_measurements(rows.values(), measurements_file)
                summary.written.append(measurements_file)
            except OSError as e:
                summary.failed.append(SkippedInput(measurements_file, f"cannot be written ({e})"))
                logger.error("'%s': cannot be written (%s)", measurements_file, e)
    return summary
