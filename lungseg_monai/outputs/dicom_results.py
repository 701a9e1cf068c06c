"""Write a DICOM source's results, SEG, SR and overlay SC, with their deterministic UIDs and the QC rules.

The one writer ``lungseg infer`` (:mod:`lungseg_monai.inference.execute`) and the DICOM node
(:mod:`lungseg_monai.pacs.processing`) call, so both make the same objects for the same source:

- the UIDs derive from the source's, the model identity and the settings
  (:class:`~lungseg_monai.outputs.dicom_uids.ResultUIDs`): a rerun rewrites the same objects;
- a mask quality control rejects gets no SEG unless ``write_rejected``; a SEG an earlier run left at
  the target is then removed, so it is never kept, listed or sent under this verdict;
- the SR carries the areas and the verdict and references the SEG when there is one (this run's, or
  one kept from an earlier run with the same settings);
- the SC is the overlay, for viewers without SEG support.

highdicom is imported here, only when DICOM results are written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from lungseg_monai.io import Radiograph
from lungseg_monai.outputs.dicom_header import read_source_header
from lungseg_monai.outputs.dicom_uids import ResultUIDs
from lungseg_monai.outputs.overlay import overlay_contours
from lungseg_monai.qc.quality import QC_REJECT, QCResult
from lungseg_monai.utils.atomic import atomic_path

__all__ = ["DicomResultTargets", "seg_withheld", "write_dicom_results"]

logger = logging.getLogger(__name__)


def seg_withheld(status: str, write_rejected: bool) -> bool:
    """True when a mask with this QC status gets no DICOM SEG."""
    return status == QC_REJECT and not write_rejected


@dataclass(frozen=True)
class DicomResultTargets:
    """Where each result goes; None: not asked for.

    Attributes:
        seg: the SEG's file.
        sr: the SR's file.
        sc: the overlay SC's file.
        seg_kept: a SEG an earlier run wrote with these settings, kept: the SR references it.
    """

    seg: Path | None = None
    sr: Path | None = None
    sc: Path | None = None
    seg_kept: Path | None = None


def _save(dataset: pydicom.Dataset, target: Path, durable: bool) -> Path:
    with atomic_path(target, durable=durable) as tmp:
        dataset.save_as(str(tmp))
    return target


def write_dicom_results(
    source: pydicom.Dataset,
    source_path: str | os.PathLike,
    mask: np.ndarray,
    radiograph: Radiograph,
    qc: QCResult,
    measurements: Mapping[str, Any],
    identity: str,
    settings: Mapping[str, Any],
    targets: DicomResultTargets,
    durable: bool = False,
) -> dict[str, Path | None]:
    """Write the SEG, SR and SC ``targets`` asks for; returns ``{"dicomseg"|"dicomsr"|"dicomsc": file or None}``
    (None: a SEG withheld for this verdict, decided without a file).

    Args:
        source: the radiograph's DICOM header.
        source_path: its file (the SEG records its size for highdicom's checks).
        mask: the (rows, columns) 0/1 lung mask.
        radiograph: the decoded radiograph (the overlay is drawn on it).
        qc: the mask's quality verdict.
        measurements: the lung areas (:func:`~lungseg_monai.outputs.measurements.measure_radiograph`).
        identity: the model identity (SEG algorithm version, UIDs).
        settings: what decides the outputs (``write_rejected`` among them): the UIDs derive from it.
        targets: where each result goes.
        durable: fsync each file before it replaces the target (the node: results outlive the spooled source).
    """
    from lungseg_monai.outputs.dicom_sc import make_overlay_sc
    from lungseg_monai.outputs.dicom_seg import make_lung_seg, qc_content_description
    from lungseg_monai.outputs.dicom_sr import make_lung_sr

    uids = ResultUIDs.for_source(source, identity, settings)
    withheld = seg_withheld(qc.status, bool(settings.get("write_rejected")))
    written: dict[str, Path | None] = {}
    seg = None
    if targets.seg is not None:
        if withheld:
            if targets.seg.exists():
                targets.seg.unlink()
                logger.warning("'%s': removed the DICOM SEG of an earlier run '%s' (QC rejects the mask)", source_path,
                               targets.seg)  # fmt: skip
            logger.warning("'%s': no DICOM SEG, QC rejects the mask (%s)", source_path, qc.reasons_text())
            written["dicomseg"] = None
        else:
            seg = make_lung_seg(
                mask,
                source,
                series_instance_uid=uids.seg_series_uid,
                algorithm_version=identity,
                source_size_bytes=Path(source_path).stat().st_size,
                sop_instance_uid=uids.seg_sop_uid,
                content_description=qc_content_description(qc),
            )
            written["dicomseg"] = _save(seg, targets.seg, durable)
    elif targets.seg_kept is not None and not withheld:
        seg = read_source_header(targets.seg_kept, what="SEG")
    if targets.sr is not None:
        sr = make_lung_sr(source, seg, measurements, qc, identity, uids.sr_series_uid, uids.sr_sop_uid)
        written["dicomsr"] = _save(sr, targets.sr, durable)
    if targets.sc is not None:
        overlay = overlay_contours(radiograph.pixels, mask)
        sc = make_overlay_sc(source, overlay, identity, uids.sc_series_uid, uids.sc_sop_uid)
        written["dicomsc"] = _save(sc, targets.sc, durable)
    return written
