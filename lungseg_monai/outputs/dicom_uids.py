"""Deterministic UIDs of the DICOM objects made from one source image, so that results are idempotent.

A PACS files an object under its SOP Instance UID: sending the same UID again replaces (or is
refused as a duplicate of) the object already stored, it never makes a second one. The results of
one source image by one model therefore always get the same UIDs, whichever run or node makes
them: each is a hash (pydicom's :func:`~pydicom.uid.generate_uid` with entropy sources) of

- series: the source's StudyInstanceUID and SeriesInstanceUID, the model identity, the settings
  and the kind of result (``seg``, ``sr``, ``sc``), so that all SEGs of one source series by one
  model with one set of settings are one series;
- instances: the source's SOPInstanceUID, the model identity, the settings and the kind.

The settings are everything besides the weights that changes a result's content: threshold,
post-processing, precision, the QC calibration (:meth:`LungSegmenter.settings`) and whether a
rejected mask gets a SEG. Another model, other settings or another source give other UIDs, so a
PACS never keeps an object under a UID that names different content. The UIDs are under pydicom's
root (``1.2.826.0.1.3680043.8.498.``), which pydicom offers for UIDs derived this way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

__all__ = ["RESULT_KINDS", "ResultUIDs", "derived_uid", "settings_digest"]

# Keeps our hashes apart from anyone else's hash of the same strings under the same root.
_NAMESPACE = "lungseg_monai result UID v1"
RESULT_KINDS = ("seg", "sr", "sc")
_SOURCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_SETTINGS_DIGEST_CHARS = 16


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short hash of result settings (key order and tuples vs lists do not matter)."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_SETTINGS_DIGEST_CHARS]


def derived_uid(*parts: str) -> str:
    """A valid UID (at most 64 characters) that depends only on ``parts``, in order.

    Each part is length-prefixed before hashing, so ``("ab", "c")`` and ``("a", "bc")`` differ.

    Raises:
        ValueError: no parts were given.

    Example:
        >>> uid = derived_uid("1.2.3", "LungUNet-resnet34-abc", "seg")
        >>> uid == derived_uid("1.2.3", "LungUNet-resnet34-abc", "seg"), len(uid) <= 64
        (True, True)
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part to derive a UID from, got none")
    entropy = [_NAMESPACE, *(f"{len(str(part))}:{part}" for part in parts)]
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=entropy))


@dataclass(frozen=True)
class ResultUIDs:
    """Series and SOP Instance UIDs of the SEG, SR and SC made from one source image by one model."""

    seg_series_uid: str
    seg_sop_uid: str
    sr_series_uid: str
    sr_sop_uid: str
    sc_series_uid: str
    sc_sop_uid: str

    @classmethod
    def for_source(cls, source: Dataset, identity: str, settings: Mapping[str, Any] | None = None) -> ResultUIDs:
        """The UIDs of the results of ``source`` by the model ``identity`` (see the module docstring).

        Args:
            source: the source image's dataset (its Study, Series and SOP Instance UIDs are read).
            identity: the model's identity (:attr:`lungseg_monai.inference.LungSegmenter.identity`).
            settings: what else decides the results' content (:meth:`LungSegmenter.settings`
                plus ``write_rejected``); other settings give other UIDs.

        Raises:
            ValueError: the source lacks one of the three UIDs, or the identity is empty.

        Example:
            >>> ds = Dataset(); ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
            >>> uids = ResultUIDs.for_source(ds, "LungUNet-resnet34-abc")
            >>> uids == ResultUIDs.for_source(ds, "LungUNet-resnet34-abc"), uids.seg_sop_uid != uids.sr_sop_uid
            (True, True)
        """
        missing = [keyword for keyword in _SOURCE_KEYWORDS if not str(source.get(keyword, "") or "").strip()]
        if missing:
            raise ValueError(
                f"the source DICOM has no {', '.join(missing)}; result UIDs are derived from the source's "
                "study, series and SOP instance UIDs"
            )
        if not identity:
            raise ValueError("the model identity is empty; result UIDs need it to tell models apart")
        study, series, instance = (str(source.get(keyword)).strip() for keyword in _SOURCE_KEYWORDS)
        if settings:
            identity = f"{identity}/{settings_digest(settings)}"
        uids = {}
        for kind in RESULT_KINDS:
            uids[f"{kind}_series_uid"] = derived_uid("series", study, series, identity, kind)
            uids[f"{kind}_sop_uid"] = derived_uid("instance", instance, identity, kind)
        return cls(**uids)
