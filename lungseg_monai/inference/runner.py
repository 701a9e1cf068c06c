"""Segment many files: plan what is left to do, have it done, record and report what happened.

Three steps, in this process: **plan** (find the inputs, hash them, keep the outputs the manifest
vouches for: :mod:`lungseg_monai.inference.manifest`), **execute** the jobs left, here
(:class:`~lungseg_monai.inference.execute.FilmPipeline`: reading, the network and writing overlap) or
on a Ray cluster (:mod:`lungseg_monai.inference.cluster`), and **record** each job's outcome as it
arrives: the summary, ``measurements.csv`` and ``manifest.json``, both saved every few seconds, so a
run killed at any point (this process included) keeps what it finished and a rerun does only the
rest. Every output is written atomically, and a file that fails is reported with its reason while
the others go on.

Layout of ``output_dir`` (:mod:`lungseg_monai.inference.layout`)::

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

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from lungseg_monai.inference.discovery import Discovery, InferenceInput, SkippedInput, discover_inputs
from lungseg_monai.inference.execute import (
    REJECTED,
    SEGMENTED,
    FilmOutcome,
    FilmPipeline,
    Job,
    RunOptions,
)
from lungseg_monai.inference.layout import (
    DICOM_FORMATS,
    LAYOUT,
    MEASUREMENTS_FILE,
    output_path,
    parse_formats,
)
from lungseg_monai.inference.manifest import MANIFEST_FILE, InputState, OutputManifest
from lungseg_monai.inference.options import (
    DEFAULT_FORMATS,
    DEFAULT_PRECISION,
    DEFAULT_WORKERS,
    FORMATS,
)
from lungseg_monai.inference.predictor import LungSegmenter
from lungseg_monai.inference.transforms import CleanLungMask
from lungseg_monai.utils.atomic import remove_leftover_temporaries
from lungseg_monai.outputs.dicom_results import seg_withheld
from lungseg_monai.outputs.measurements import read_measurements, write_measurements
from lungseg_monai.qc.quality import (
    QC_REJECT,
    QC_REVIEW,
    QC_STATUSES,
    QC_UNAVAILABLE,
    QCResult,
    UncalibratedModelError,
)

if TYPE_CHECKING:
    from lungseg_monai.inference.cluster import ClusterOptions

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

# Masks to review or rejected listed one by one in the run's report; the rest are in measurements.csv.
MAX_QC_LINES = 20
# measurements.csv and manifest.json are saved at least this often during a run (seconds), and less often
# when saving them takes long (a big archive): at most a fifth of the run goes to saving.
SAVE_EVERY_S = 10.0
SAVE_SHARE = 0.2


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


def _plan(
    found: Discovery,
    output_dir: Path,
    formats: Sequence[str],
    overwrite: bool,
    rows: dict[str, Any],
    manifest: OutputManifest,
    states: dict[InferenceInput, InputState | None],
    settings: dict[str, Any],
) -> tuple[list[Job], list[InferenceInput], list[InferenceInput]]:
    """Outputs still to write per input, the inputs whose outputs are all kept, and those no asked-for output
    applies to (DICOM formats only, for a non-DICOM input). An existing output is kept only when the
    manifest says it was made from this input's content with this model and these settings; anything
    else is redone. A SEG withheld for these settings counts as done without a file."""
    jobs, done, inapplicable = [], [], []
    for item in found.inputs:
        targets = {
            fmt: output_path(output_dir, fmt, item.name)
            for fmt in formats
            if fmt in LAYOUT and (fmt not in DICOM_FORMATS or item.is_dicom)
        }
        if not targets and "measurements" not in formats:
            inapplicable.append(item)
            continue
        valid = set() if overwrite else manifest.valid_outputs(item.name, states[item], settings["model"], settings)
        verdict = manifest.verdict(item.name) if valid else None
        withheld = verdict is not None and seg_withheld(str(verdict.get("qc_status")), settings["write_rejected"])
        kept = {
            fmt: path
            for fmt, path in targets.items()
            if fmt in valid and (path.exists() or (fmt == "dicomseg" and withheld))
        }
        targets = {fmt: path for fmt, path in targets.items() if fmt not in kept}
        measure = "measurements" in formats and ("measurements" not in valid or item.name not in rows)
        if targets or measure:
            jobs.append(Job(item, targets, measure, None if withheld else kept.get("dicomseg")))
        else:
            done.append(item)
    return jobs, done, inapplicable


def _save(summary: InferenceSummary, path: Path, save: Callable[[], bool]) -> bool:
    """Run ``save`` (True when it wrote ``path``); a failure is reported in ``summary``, not raised."""
    try:
        wrote = save()
    except OSError as e:
        if not any(s.path == path for s in summary.failed):  # a file saved now and then is reported once
            summary.failed.append(SkippedInput(path, f"cannot be written ({e})"))
        logger.error("'%s': cannot be written (%s)", path, e)
        return False
    if wrote and path not in summary.written:
        summary.written.append(path)
    return True


class _Recorder:
    """Record each job's outcome as it arrives: the summary, the measurement rows and the manifest, saved
    every :data:`SAVE_EVERY_S` seconds or so and at the end (:meth:`save`).

    A name's outputs are vouched for in the manifest once its outcome is recorded; ``measurements.csv``
    is written before the manifest that vouches for its rows, so a run killed between the two loses
    nothing it claims.
    """

    def __init__(
        self,
        summary: InferenceSummary,
        manifest: OutputManifest,
        states: dict[InferenceInput, InputState | None],
        settings: dict[str, Any],
        rows: dict[str, Any],
        total: int,
        progress: bool,
    ) -> None:
        self.summary, self.manifest, self.states, self.settings, self.rows = summary, manifest, states, settings, rows
        self.measurements_file = summary.output_dir / MEASUREMENTS_FILE
        self.rows_saved = dict(rows)
        self.recorded: list[Job] = []
        self.save_every = SAVE_EVERY_S
        self.last_save = time.monotonic()
        self.bar = tqdm(total=total, unit="image", desc="lungseg infer", disable=not progress)

    def add(self, job: Job, outcome: FilmOutcome) -> None:
        """Apply one job's outcome; save now and then."""
        name, summary = job.item.name, self.summary
        if outcome.status == SEGMENTED and outcome.qc is not None:
            summary.written.extend(outcome.written)
            summary.qc[name] = outcome.qc
            summary.segmented.append(job.item)
            job.produced = list(outcome.produced)
            if self.states[job.item] is not None:
                produced = [*job.produced, *(["measurements"] if job.measure else [])]
                model = self.settings["model"]
                self.manifest.record(name, self.states[job.item], model, self.settings, produced, outcome.qc.as_row())
                self.recorded.append(job)
        elif outcome.status == REJECTED and outcome.qc is not None:
            summary.rejected.append(SkippedInput(job.item.path, outcome.reason))
            summary.qc[name] = outcome.qc
        else:
            summary.failed.append(SkippedInput(job.item.path, outcome.reason))
        if outcome.row is not None:
            self.rows[name] = outcome.row
        self.bar.update(1)
        if time.monotonic() - self.last_save >= self.save_every:
            self.save()

    def save(self, final: bool = False) -> None:
        """Write ``measurements.csv`` (if its rows changed) and then the manifest, atomically.

        When the CSV cannot be written the manifest is not saved either (it would vouch for rows that are
        not on disk) and the rows wait for the next save; at the ``final`` save, the names whose rows could
        not be written lose their ``measurements`` in the manifest, so a rerun redoes them.
        """
        started = time.monotonic()
        summary, manifest, rows = self.summary, self.manifest, self.rows
        for name in [n for n in rows if manifest.stale(n, "measurements")]:
            del rows[name]  # made from an input or settings the name's outputs no longer come from
        if rows != self.rows_saved:
            target = self.measurements_file
            if _save(summary, target, lambda: bool(write_measurements(rows.values(), target))):
                self.rows_saved = dict(rows)
            elif not final:
                self.last_save = time.monotonic()
                return
            else:
                for job in self.recorded:
                    name = job.item.name
                    if job.measure and self.rows_saved.get(name) != rows.get(name):
                        manifest.forget(name, ["measurements"])
        _save(summary, manifest.path, manifest.save)
        self.last_save = time.monotonic()
        self.save_every = max(SAVE_EVERY_S, (self.last_save - started) / SAVE_SHARE)

    def close(self) -> None:
        self.bar.close()


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
    cluster: ClusterOptions | None = None,
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
        cluster: run the network and the writing on a Ray cluster
            (:class:`~lungseg_monai.inference.cluster.ClusterOptions`); planning and recording stay in
            this process. ``model`` must then be a file or a shipped model's name that every worker
            can read, and ``output_dir`` a folder every worker sees.

    Returns:
        An :class:`InferenceSummary`; ``summary.ok`` is False when any file failed (rejected
        and skipped files do not count as failures).

    Raises:
        ValueError: ``cluster`` with a ready :class:`LungSegmenter` (the workers load the model themselves).
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
    if cluster is not None:
        if isinstance(model, LungSegmenter):
            raise ValueError("a Ray run needs the model as a file or a shipped model's name, not a LungSegmenter")
        # Workers run elsewhere: every path they get is absolute.
        output_dir, inputs = Path(os.path.abspath(output_dir)), [Path(os.path.abspath(p)) for p in inputs]
    segmenter = (
        model
        if isinstance(model, LungSegmenter)
        else LungSegmenter.from_model(model, device, postprocess=postprocess, precision=precision)
    )
    if not allow_uncalibrated and segmenter.qc is None:
        raise UncalibratedModelError(segmenter.qc_unavailable_reason or "the model has no QC calibration")
    manifest = OutputManifest.load(output_dir)
    # Never segment our own outputs, even when OUT_DIR is (inside) an input folder.
    excluded = [output_dir, *(output_dir / folder for folder, _ in LAYOUT.values())]
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
    rows = read_measurements(output_dir / MEASUREMENTS_FILE)
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
        manifest.forget(job.item.name, job.outputs())
    _save(summary, manifest.path, manifest.save)
    if summary.up_to_date:
        logger.info(
            "%d input(s) already have all outputs in '%s'; kept (--overwrite redoes them)",
            len(summary.up_to_date),
            output_dir,
        )
    options = RunOptions(settings, output_dir)
    recorder = _Recorder(summary, manifest, states, settings, rows, len(jobs), progress)
    try:
        if cluster is not None:
            from lungseg_monai.inference.cluster import run_on_cluster

            run_on_cluster(cluster, jobs, model, segmenter, options, batch_size, workers, recorder.add)
        else:
            pipeline = FilmPipeline(segmenter, options, batch_size, workers, recorder.add)
            try:
                pipeline.run(jobs)
            finally:
                pipeline.close()
    finally:
        recorder.close()
        recorder.save(final=True)
        # A run or worker killed mid-write leaves temporary files beside the outputs it was writing.
        try:
            remove_leftover_temporaries(path for job in jobs for path in job.targets.values())
        except OSError as e:
            logger.warning("temporary files of interrupted writes in '%s' not removed: %s", output_dir, e)
    return summary
