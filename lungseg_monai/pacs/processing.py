"""Segment spooled instances in batches and write their DICOM results (SEG, SR, optional overlay SC).

The same steps as ``lungseg infer``: the header check (:func:`~lungseg_monai.inference.discovery.classify_dicom`:
frontal chest radiographs only), the pixel plausibility check, :class:`~lungseg_monai.inference.LungSegmenter`
with its post-processing and quality control, and the lung measurements. Per instance:

* a DICOM SEG (none for a mask quality control rejects, unless ``write_rejected_seg``), its
  Content Description saying ``QC review: ...`` / ``QC reject: ...`` when it is not a pass;
* a DICOM SR (TID 1500) with the lung areas and the QC verdict, referencing the image and the SEG;
* with ``overlay``, a Secondary Capture of the lung contour over the film.

All results go in the source's study, in new series, with UIDs derived from the source SOP
Instance UID, the model identity and the settings, as ``lungseg infer``'s
(:class:`~lungseg_monai.outputs.dicom_uids.ResultUIDs`): a redo after a crash, or a study sent
twice, gives the same objects, never a second copy in the PACS.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch

from lungseg_monai.inference.discovery import classify_dicom, read_dicom_header
from lungseg_monai.inference.predictor import LungSegmenter, QCForward
from lungseg_monai.io import Radiograph, RadiographReadError, read_radiograph
from lungseg_monai.outputs.dicom_results import DicomResultTargets, write_dicom_results
from lungseg_monai.outputs.measurements import measure_radiograph
from lungseg_monai.pacs.spool import Spool
from lungseg_monai.qc.input import ImplausibleInputError, ensure_plausible
from lungseg_monai.qc.quality import QCResult

__all__ = ["InstanceProcessor", "Prepared"]

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One spooled instance, read and ready for the network."""

    sop: str
    path: Path
    header: pydicom.Dataset
    radiograph: Radiograph
    tensor: torch.Tensor


def _reason(error: BaseException) -> str:
    return error.reason if isinstance(error, RadiographReadError) else f"{type(error).__name__}: {error}"


class InstanceProcessor:
    """Segment batches of spooled instances and queue their results for every destination.

    Args:
        segmenter: the model.
        spool: where the instances are and the results go.
        destinations: outbox keys of every destination (:attr:`Destination.key`).
        overlay: also make a Secondary Capture overlay.
        write_rejected_seg: also make a SEG when quality control rejects the mask.
        check_headers: skip instances whose header names another body part or modality.
    """

    def __init__(
        self,
        segmenter: LungSegmenter,
        spool: Spool,
        destinations: Sequence[str],
        overlay: bool = False,
        write_rejected_seg: bool = False,
        check_headers: bool = True,
    ) -> None:
        self.segmenter, self.spool, self.destinations = segmenter, spool, list(destinations)
        self.overlay, self.write_rejected_seg, self.check_headers = overlay, write_rejected_seg, check_headers

    def process(self, paths: Sequence[Path]) -> None:
        """Segment ``paths`` as one batch; each ends segmented, skipped or failed.

        ``paths`` are instances the spool claimed (:meth:`Spool.claim`: ``processing/SOP.dcm``).
        When the network fails on a batch of several (e.g. out of memory), each is tried alone, so
        only an instance that fails by itself is failed.
        """
        prepared = [p for p in (self._prepare(path) for path in paths) if p is not None]
        self._segment(prepared)

    def _segment(self, prepared: Sequence[Prepared]) -> None:
        if not prepared:
            return
        try:
            network_output = self.segmenter.forward_qc(torch.stack([p.tensor for p in prepared]))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: these instances fail, the node goes on
            if len(prepared) > 1:
                logger.warning("the network failed on a batch of %d (%s); trying each alone", len(prepared), _reason(e))
                for item in prepared:
                    self._segment([item])
                return
            self._fail(prepared[0].sop, f"the network failed ({_reason(e)})", prepared[0].path)
            return
        for index, item in enumerate(prepared):
            try:
                self._finish(item, network_output.item(index))
            except Exception as e:  # noqa: BLE001 - one bad instance must not stop the others
                self._fail(item.sop, f"its results cannot be made ({_reason(e)})", item.path)

    def _prepare(self, path: Path) -> Prepared | None:
        sop = path.stem
        try:
            header = read_dicom_header(path)
            reason = classify_dicom(header, check_headers=self.check_headers)
            if reason is not None:
                logger.info("instance %s skipped: %s", sop, reason)
                self.spool.skip(sop, "skipped", reason, path)
                return None
            radiograph = read_radiograph(path)
            ensure_plausible(radiograph.pixels, path)
            return Prepared(sop, path, header, radiograph, self.segmenter.prepare(radiograph))
        except ImplausibleInputError as e:
            logger.info("instance %s rejected: %s", sop, e.reason)
            self.spool.skip(sop, "rejected", e.reason, path)
        except Exception as e:  # noqa: BLE001 - a corrupt instance must not stop the node
            self._fail(sop, f"it cannot be read ({_reason(e)})", path)
        return None

    def _fail(self, sop: str, reason: str, path: Path) -> None:
        logger.error("instance %s failed: %s", sop, reason)
        self.spool.fail(sop, reason, path)

    def _finish(self, item: Prepared, network_output: QCForward) -> None:
        mask = self.segmenter.to_mask(network_output.probabilities[0], item.radiograph.shape)
        qc = self.segmenter.assess(network_output)
        files = self.write_results(item, mask, qc)
        self.spool.complete(item.sop, files, self.destinations, path=item.path, qc_status=qc.status)
        logger.info(
            "instance %s segmented: QC %s%s; %d result(s) queued",
            item.sop,
            qc.status,
            f" ({qc.reasons_text()})" if qc.reasons else "",
            len(files),
        )

    def write_results(self, item: Prepared, mask: np.ndarray, qc: QCResult) -> list[Path]:
        """Write the SEG, SR and overlay SC of one instance to ``results/SOP/``, as ``lungseg infer`` writes
        them (:func:`~lungseg_monai.outputs.dicom_results.write_dicom_results`); returns the files."""
        folder = self.spool.results_dir(item.sop)
        targets = DicomResultTargets(folder / "seg.dcm", folder / "sr.dcm", folder / "sc.dcm" if self.overlay else None)
        settings = self.segmenter.result_settings(self.write_rejected_seg)
        measurements = measure_radiograph(mask, item.radiograph, item.sop)
        results = write_dicom_results(
            item.header, item.path, mask, item.radiograph, qc, measurements, self.segmenter.identity, settings,
            targets, durable=True,
        )  # fmt: skip
        return [path for path in results.values() if path is not None]
