"""Carry out planned jobs: read each input, run the network in batches, write every output the job asks for.

Where a job runs does not change what it writes: ``lungseg infer`` runs :class:`FilmPipeline` in its
own process, and each Ray actor of ``lungseg infer --ray`` (:mod:`lungseg_monai.inference.cluster`)
runs one on its share of the jobs. Each finished job is reported as a :class:`FilmOutcome` to the
process that plans and records the run (:mod:`lungseg_monai.inference.runner`).
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lungseg_monai.inference.discovery import InferenceInput, read_dicom_header
from lungseg_monai.inference.layout import DICOM_FORMATS, output_path
from lungseg_monai.inference.predictor import LungSegmenter, QCForward
from lungseg_monai.inference.transforms import mask_to_uint8_2d
from lungseg_monai.io import Radiograph, RadiographReadError, read_radiograph
from lungseg_monai.outputs import save_overlay, save_png
from lungseg_monai.outputs.dicom_results import DicomResultTargets, seg_withheld, write_dicom_results
from lungseg_monai.outputs.measurements import measure_radiograph
from lungseg_monai.outputs.nifti import save_nifti_mask
from lungseg_monai.qc.input import ImplausibleInputError, ensure_plausible
from lungseg_monai.qc.quality import QCResult

__all__ = [
    "FAILED",
    "REJECTED",
    "SEGMENTED",
    "FilmOutcome",
    "FilmPipeline",
    "Job",
    "RunOptions",
    "withhold_seg",
]

logger = logging.getLogger(__name__)

# What became of a job (FilmOutcome.status).
SEGMENTED, REJECTED, FAILED = "segmented", "rejected", "failed"


@dataclass
class Job:
    item: InferenceInput
    targets: dict[str, Path]  # per-file outputs still to write
    measure: bool  # a measurements row is needed
    seg_kept: Path | None = None  # the SEG a new SR references when the SEG itself is kept
    produced: list[str] = field(default_factory=list)  # the formats done (a withheld SEG too, without a file)

    def outputs(self) -> list[str]:
        """The formats this job writes, measurements included."""
        return [*self.targets, *(["measurements"] if self.measure else [])]

    def to_json(self) -> str:
        """The job as JSON, to travel to a worker (:meth:`from_json`); no pickling."""
        item = self.item
        return json.dumps(
            {
                "item": [str(item.path), item.name, item.is_dicom, item.study_uid, item.series_uid],
                "targets": {fmt: str(path) for fmt, path in self.targets.items()},
                "measure": self.measure,
                "seg_kept": None if self.seg_kept is None else str(self.seg_kept),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        path, name, is_dicom, study_uid, series_uid = data["item"]
        item = InferenceInput(Path(path), name, bool(is_dicom), study_uid, series_uid)
        targets = {fmt: Path(target) for fmt, target in data["targets"].items()}
        seg_kept = None if data["seg_kept"] is None else Path(data["seg_kept"])
        return cls(item, targets, bool(data["measure"]), seg_kept)


@dataclass(frozen=True)
class RunOptions:
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


@dataclass
class FilmOutcome:
    """What became of one job, sent from where it ran to the process that records the run.

    Attributes:
        name: the job's output name.
        path: its input file.
        status: :data:`SEGMENTED`, :data:`REJECTED` (read, but refused before the network) or :data:`FAILED`.
        reason: why it was rejected or failed ("" when segmented).
        written: the files written.
        produced: the formats done (a withheld SEG too, without a file), measurements not included.
        qc: the quality verdict (rejected: :meth:`QCResult.refused`; failed: None).
        row: its ``measurements.csv`` row, when the job needs one.
    """

    name: str
    path: Path
    status: str
    reason: str = ""
    written: list[Path] = field(default_factory=list)
    produced: list[str] = field(default_factory=list)
    qc: QCResult | None = None
    row: dict[str, Any] | None = None

    def to_json(self) -> str:
        """The outcome as JSON, to travel back from a worker (:meth:`from_json`); no pickling."""
        qc = self.qc
        features = {} if qc is None else {k: float(v) for k, v in qc.features.items()}
        verdict = None if qc is None else [qc.status, qc.score, list(qc.reasons), features]
        return json.dumps(
            {
                "name": self.name,
                "path": str(self.path),
                "status": self.status,
                "reason": self.reason,
                "written": [str(p) for p in self.written],
                "produced": list(self.produced),
                "qc": verdict,
                "row": self.row,
            },
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> FilmOutcome:
        data = json.loads(text)
        qc = None
        if data["qc"] is not None:
            status, score, reasons, features = data["qc"]
            qc = QCResult(status, score, tuple(reasons), features)
        written = [Path(p) for p in data["written"]]
        return cls(data["name"], Path(data["path"]), data["status"], data["reason"], written, data["produced"], qc,
                   data["row"])  # fmt: skip


def withhold_seg(job: Job, options: RunOptions, reason: str) -> None:
    """No SEG for this job's input: remove one an earlier run left under its name (another model's, other
    settings', or a ``write_rejected`` run's), whatever formats this run writes, so that it is never kept,
    listed or sent under this verdict."""
    target = output_path(options.output_dir, "dicomseg", job.item.name)
    if target.exists():
        target.unlink()
        logger.warning("'%s': removed the DICOM SEG of an earlier run '%s' (%s)", job.item.path, target, reason)


def _load(segmenter: LungSegmenter, item: InferenceInput) -> tuple[Radiograph, torch.Tensor]:
    """Read and prepare one input; :class:`ImplausibleInputError` when its pixels cannot be a radiograph."""
    radiograph = read_radiograph(item.path)
    ensure_plausible(radiograph.pixels, item.path)
    return radiograph, segmenter.prepare(radiograph)


def _write_outputs(
    segmenter: LungSegmenter,
    job: Job,
    radiograph: Radiograph,
    network_output: QCForward,
    options: RunOptions,
) -> tuple[list[Path], list[str], dict[str, Any] | None, QCResult]:
    """Mask and quality verdict from the network's output, then every output the job needs.

    Returns (files written, formats done, CSV row or None, QC verdict); a withheld SEG is done
    (decided: none for this verdict and these settings) without a file.
    """
    mask = segmenter.to_mask(network_output.probabilities[0], radiograph.shape)
    qc = segmenter.assess(network_output)
    if seg_withheld(qc.status, options.write_rejected):
        withhold_seg(job, options, "quality control rejects the mask")
    row = measure_radiograph(mask, radiograph, job.item.name) if job.measure or "dicomsr" in job.targets else None
    if row is not None:
        row.update(qc.as_row())
    written, produced = [], []
    for fmt, target in job.targets.items():
        if fmt == "mask":
            save_png(mask_to_uint8_2d(mask), target)
        elif fmt == "overlay":
            save_overlay(radiograph.pixels, mask, target)
        elif fmt == "nifti":
            save_nifti_mask(mask, target, radiograph.geometry)
        else:
            continue
        written.append(target)
        produced.append(fmt)
    if any(fmt in DICOM_FORMATS for fmt in job.targets):
        # The reader's own header reader (force=True): files without preamble and file meta (ACR-NEMA
        # style, old archives) were read for the mask and must get their DICOM results too.
        source = read_dicom_header(job.item.path)
        targets = DicomResultTargets(
            job.targets.get("dicomseg"), job.targets.get("dicomsr"), job.targets.get("dicomsc"), job.seg_kept
        )
        results = write_dicom_results(
            source, job.item.path, mask, radiograph, qc, row or {}, segmenter.identity, options.settings, targets
        )
        for fmt in DICOM_FORMATS:
            if fmt in results:
                produced.append(fmt)  # a withheld SEG too: decided, without a file
                if results[fmt] is not None:
                    written.append(results[fmt])
    return written, produced, row if job.measure else None, qc


def _reason(error: BaseException) -> str:
    if isinstance(error, RadiographReadError):
        return error.reason
    return f"{type(error).__name__}: {error}"


class FilmPipeline:
    """Read (thread pool) -> network (this thread, in batches) -> mask and write (thread pool).

    At most ``2 * batch_size`` files are being read ahead and ``2 * batch_size`` being written,
    which bounds the memory held by decoded radiographs. Each job's :class:`FilmOutcome` goes to
    ``on_done`` (in this thread) as soon as it is known; a file that cannot be read or written is an
    outcome, never an exception.

    Args:
        segmenter: the model.
        options: run-wide settings.
        batch_size: images per network call.
        workers: threads for reading and for writing (each).
        on_done: called with each job and its outcome.
    """

    def __init__(
        self,
        segmenter: LungSegmenter,
        options: RunOptions,
        batch_size: int,
        workers: int,
        on_done: Callable[[Job, FilmOutcome], None],
    ) -> None:
        self.segmenter, self.options, self.on_done = segmenter, options, on_done
        self.batch_size = batch_size
        self.readers = ThreadPoolExecutor(workers, thread_name_prefix="lungseg-read")
        self.writers = ThreadPoolExecutor(workers, thread_name_prefix="lungseg-write")
        self.reads: collections.deque[tuple[Job, Future]] = collections.deque()
        self.writes: collections.deque[tuple[Job, Future]] = collections.deque()

    def run(self, jobs: Sequence[Job]) -> None:
        queue = iter(jobs)
        self._read_ahead(queue)
        batch: list[tuple[Job, Radiograph, torch.Tensor]] = []
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
        """Stop the threads (queued work is dropped after an interruption)."""
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.writers.shutdown(wait=True, cancel_futures=True)

    def _read_ahead(self, queue: Iterator[Job]) -> None:
        while len(self.reads) < 2 * self.batch_size:
            job = next(queue, None)
            if job is None:
                return
            self.reads.append((job, self.readers.submit(_load, self.segmenter, job.item)))

    def _run_batch(self, batch: list[tuple[Job, Radiograph, torch.Tensor]]) -> None:
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
                written, produced, row, qc = future.result()
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
                self._fail(job, e)
                continue
            self.on_done(job, FilmOutcome(job.item.name, job.item.path, SEGMENTED, "", written, produced, qc, row))

    def _reject(self, job: Job, error: ImplausibleInputError) -> None:
        withhold_seg(job, self.options, f"the input is refused: {error.reason}")
        verdict = QCResult.refused(error.reason)
        row = {"name": job.item.name, "input": str(job.item.path), **verdict.as_row()} if job.measure else None
        logger.debug("rejected '%s': %s", job.item.path, error.reason)  # listed again in summary.report()
        self.on_done(job, FilmOutcome(job.item.name, job.item.path, REJECTED, error.reason, qc=verdict, row=row))

    def _fail(self, job: Job, error: BaseException) -> None:
        logger.error("'%s': %s", job.item.path, _reason(error))
        self.on_done(job, FilmOutcome(job.item.name, job.item.path, FAILED, _reason(error)))
