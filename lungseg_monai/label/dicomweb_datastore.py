"""A MONAI Label datastore on a PACS through DICOMweb: chest radiographs in, DICOM SEG labels out.

``lungseg label --studies http://HOST:PORT/dicom-web`` serves the single-frame CR, DX and
secondary-capture chest radiographs of a DICOMweb server (Orthanc, dcm4chee, a cloud archive):

- **Listing** (QIDO-RS, then WADO-RS metadata of series not seen before): every instance is
  classified like ``lungseg infer`` classifies files (:func:`~lungseg_monai.inference.discovery.classify_dicom`
  on its header): objects without an image (SR, SEG, KO ...), lateral views and images whose header
  names another modality or body part are not listed. An image's id is its SOP Instance UID. The
  listing is refreshed at most every :data:`LISTING_MAX_AGE_S` seconds (headers are classified once).
- **Images** are retrieved with WADO-RS in their stored transfer syntax (a JPEG 2000 film stays
  JPEG 2000; the project's readers decode it) into ``<cache>/images/STUDY/SERIES/SOP.dcm`` when first
  needed. The cache is only a cache: the PACS is the source of truth, nothing is fetched at start-up,
  and deleting the cache loses nothing.
- **Labels**: ``PUT /datastore/label`` (tag ``final``) checks the mask against its image and stores
  it in the PACS with STOW-RS as a DICOM SEG written by :func:`~lungseg_monai.outputs.dicom_seg.make_lung_seg`
  (segment algorithm type MANUAL, referencing the source image, series "Lung label (manual)"). With
  ``overlay=True`` each saved label is also stored as a Secondary Capture of its contour over the film
  (series "Lung label overlay (manual)"): OHIF 3.6 and most PACS viewers cannot overlay a SEG on a
  CR/DX film that has no image plane.
- **Which SEG is an image's label**: any lung SEG in the PACS referencing the image, a person's or a
  model's (``lungseg node``, ``lungseg infer --stow-to``). Provenance first, then recency: by the lung
  segment's Segment Algorithm Type, MANUAL wins over SEMIAUTOMATIC, which wins over AUTOMATIC (or a
  missing or unknown type), whatever their dates; among SEGs of the same type the latest by Content
  Date and Content Time (ties: the larger SOP Instance UID). So a model's SEG stored after a
  radiologist's correction never replaces it. That label is what the review page, ``GET
  /datastore/label`` and ``/datastore`` give, with its ``SegmentAlgorithmType`` and
  ``ContentDescription`` in the label info (a model's mask is never presented as a person's); it is
  read back with highdicom into ``<cache>/labels/SEG_SOP.png`` (0/1).
- **Training labels** (``datalist``, and the labelled images of ``get_labeled_images`` that MONAI
  Label's training and next-sample strategies use) are the MANUAL and SEMIAUTOMATIC SEGs only, by
  the same rule: an image whose SEGs are all AUTOMATIC is unlabelled for training, so the model is
  never fine-tuned on its own masks. With ``train_on_automatic=True`` (``lungseg label
  --train-on-automatic``) such an image is trained on its latest AUTOMATIC SEG when **quality
  control passed it**: one of ours (Manufacturer ``lungseg_monai``) whose Content Description is
  exactly the pass's (:func:`~lungseg_monai.outputs.dicom_seg.qc_content_description`; not "QC
  review: ...", "QC reject: ..." or "QC unavailable: ..."). Another vendor's SEG is never vouched
  for, and when the latest model SEG was not passed, no older one is used instead. The label info
  says ``UsedForTraining``.

A PACS that cannot be reached, or refuses a request, gives :class:`~lungseg_monai.label.errors.PacsError`
(HTTP 502 with the server's URL and the reason) and the app keeps serving: an image already in the
cache can still be segmented, and ``status`` (``/info``) reports the last listing with the error.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lungseg_monai.inference.discovery import classify_dicom
from lungseg_monai.io import NON_IMAGE_MODALITIES, read_radiograph
from lungseg_monai.label.datastore import read_label
from lungseg_monai.label.errors import HTTP_NOT_FOUND, BadRequestError, ImageNotFoundError, PacsError
from lungseg_monai.outputs import atomic_path, save_png
from lungseg_monai.outputs.dicom_sc import make_overlay_sc
from lungseg_monai.outputs.dicom_header import MANUFACTURER
from lungseg_monai.outputs.dicom_seg import CONTENT_DESCRIPTION, lung_segment_number, make_lung_seg, read_lung_seg_mask
from lungseg_monai.outputs.dicom_uids import derived_uid
from lungseg_monai.outputs.overlay import overlay_contours
from lungseg_monai.dicomweb import (
    DicomwebError,
    InstanceRef,
    check_url,
    retrieve_instances,
    retrieve_metadata,
    search_instances,
    stow,
)

__all__ = ["DicomwebDatastore", "LISTING_MAX_AGE_S", "PROVENANCE_RANK", "QC_VERDICT_PREFIX", "SegLabel"]

logger = logging.getLogger(__name__)

# A listing younger than this is reused (one request's several datastore calls make one QIDO-RS search).
LISTING_MAX_AGE_S = 2.0
# The series of a person's labels of one source series (derived, so all corrections of it share one).
MANUAL_LABEL_KIND = "manual lung label"
# The series of their overlays (``overlay=True``).
MANUAL_OVERLAY_KIND = "manual lung label overlay"
MANUAL_OVERLAY_SERIES_DESCRIPTION = "Lung label overlay (manual)"
MANUAL_OVERLAY_SERIES_NUMBER = 1004
# Segment Algorithm Types by how much a person made the mask: a higher rank always wins (AUTOMATIC,
# a missing or an unknown type: 0). Such labels are training labels.
PROVENANCE_RANK = {"MANUAL": 2, "SEMIAUTOMATIC": 1}
# How a SEG's Content Description starts when quality control did not pass its mask
# (:func:`~lungseg_monai.outputs.dicom_seg.qc_content_description`: "QC review: ...", "QC reject: ...",
# "QC unavailable: ...").
QC_VERDICT_PREFIX = "QC "
_FINAL = DefaultLabelTag.FINAL.value


@dataclass(frozen=True)
class SegLabel:
    """A lung SEG in the PACS and the image it labels.

    Attributes:
        ref: where the SEG is.
        source_sop_uid: the SOP Instance UID of the image it references.
        content_datetime: Content Date + Content Time (``YYYYMMDDHHMMSS.ffffff``; "" when absent).
        algorithm_type: the lung segment's Segment Algorithm Type (``MANUAL``, ``AUTOMATIC`` ...;
            upper case, "" when absent).
        content_description: the SEG's Content Description ("QC reject: ..." for a mask quality
            control rejected).
        manufacturer: the SEG's Manufacturer (``lungseg_monai`` for ours).
    """

    ref: InstanceRef
    source_sop_uid: str
    content_datetime: str
    algorithm_type: str
    content_description: str = ""
    manufacturer: str = ""

    @property
    def by_person(self) -> bool:
        """True for a MANUAL or SEMIAUTOMATIC segment: a person drew or corrected it."""
        return self.algorithm_type in PROVENANCE_RANK

    @property
    def qc_passed(self) -> bool:
        """True only for one of our own SEGs whose quality control passed: made by ``lungseg_monai`` and
        described exactly as a pass is (another vendor's SEG, or a verdict of review, reject or
        unavailable, is not vouched for)."""
        return self.manufacturer == MANUFACTURER and self.content_description == CONTENT_DESCRIPTION

    def trainable(self, train_on_automatic: bool) -> bool:
        """Whether it may be a training label: a person's, or with ``train_on_automatic`` a model's that QC passed
        (the datastore also requires it to be the image's latest model SEG)."""
        return self.by_person or (train_on_automatic and self.qc_passed)

    @property
    def order(self) -> tuple[int, str, str]:
        """Sort key, the larger wins: provenance (MANUAL, SEMIAUTOMATIC, other), content date/time, SOP UID."""
        return PROVENANCE_RANK.get(self.algorithm_type, 0), self.content_datetime, self.ref.sop_uid

    def info(self) -> dict[str, str]:
        return {
            "SOPInstanceUID": self.ref.sop_uid,
            "SeriesInstanceUID": self.ref.series_uid,
            "StudyInstanceUID": self.ref.study_uid,
            "ContentDateTime": self.content_datetime,
            "SegmentAlgorithmType": self.algorithm_type,
            "ContentDescription": self.content_description,
        }


def _keep_best(labels: dict[str, SegLabel], label: SegLabel) -> None:
    """Make ``label`` its image's entry of ``labels`` unless the entry there wins (:attr:`SegLabel.order`)."""
    current = labels.get(label.source_sop_uid)
    if current is None or label.order > current.order:
        labels[label.source_sop_uid] = label


def _content_datetime(header: pydicom.Dataset) -> str:
    date = str(header.get("ContentDate", "") or "").strip()
    clock = str(header.get("ContentTime", "") or "").strip()
    whole, _, fraction = clock.partition(".")
    return f"{date}{whole.ljust(6, '0')}.{fraction.ljust(6, '0')}" if date else ""


def _referenced_sops(header: pydicom.Dataset) -> list[str]:
    """SOP Instance UIDs a SEG references (Common Instance Reference module)."""
    return [
        str(instance.ReferencedSOPInstanceUID)
        for series in header.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedInstanceSequence", [])
        if "ReferencedSOPInstanceUID" in instance
    ]


def _seg_labels(ref: InstanceRef, header: pydicom.Dataset) -> list[SegLabel]:
    """The labels a SEG header gives (one per referenced image), or [] when it has no lung segment."""
    number = lung_segment_number(header)
    if number is None:
        return []
    segment = next(s for s in header.SegmentSequence if int(s.SegmentNumber) == number)
    algorithm_type = str(segment.get("SegmentAlgorithmType", "") or "").strip().upper()
    description = str(header.get("ContentDescription", "") or "").strip()
    manufacturer = str(header.get("Manufacturer", "") or "").strip()
    when = _content_datetime(header)
    return [SegLabel(ref, sop, when, algorithm_type, description, manufacturer) for sop in _referenced_sops(header)]


class DicomwebDatastore(Datastore):
    """Chest radiographs of a DICOMweb server, labels stored back to it as DICOM SEG.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        cache_dir: the local cache (images, SEGs, label PNGs); created on first use.
        session: a :class:`requests.Session` with the server's authentication or certificates.
        check_headers: list only images whose header does not name another modality, SOP class or
            body part (as ``lungseg infer`` does); False lists every frontal image.
        overlay: with each saved label, also store a Secondary Capture of its contour over the film
            (series "Lung label overlay (manual)"), for viewers that cannot overlay a SEG on a
            radiograph.
        train_on_automatic: also train on AUTOMATIC SEGs that quality control passed, for images
            without a person's label (see the module doc); default: only MANUAL and SEMIAUTOMATIC.

    Raises:
        ValueError: ``url`` is not an http(s) URL.

    Example:
        >>> store = DicomwebDatastore("http://127.0.0.1:8042/dicom-web", "cache")  # doctest: +SKIP
        >>> store.list_images()[:1], store.get_image_uri(store.list_images()[0])
        (['1.2.826.0.1.3680043.8.498.1'], 'cache/images/1.2.3/1.2.3.4/1.2.826.0.1.3680043.8.498.1.dcm')
    """

    def __init__(
        self,
        url: str,
        cache_dir: str | os.PathLike,
        session: requests.Session | None = None,
        check_headers: bool = True,
        overlay: bool = False,
        train_on_automatic: bool = False,
    ) -> None:
        self.url = check_url(url)
        self.overlay = overlay
        self.train_on_automatic = train_on_automatic
        self.cache = Path(cache_dir)
        self.session = session
        self.check_headers = check_headers
        self._name = self.url
        self._description = f"Chest radiographs on the DICOMweb server {self.url}"
        self._lock = threading.RLock()
        self._listed_at = float("-inf")
        self._images: dict[str, InstanceRef] = {}  # chest radiographs of the last listing, by SOP UID
        self._labels: dict[str, SegLabel] = {}  # each image's label (module doc), by image SOP UID
        self._training: dict[str, SegLabel] = {}  # each image's training label, by image SOP UID
        self._classified: dict[str, str | None] = {}  # SOP UID -> why it is not listed (None: it is)
        self._seg_headers: dict[str, list[SegLabel]] = {}  # SEG SOP UID -> its labels
        self._image_info: dict[str, dict[str, Any]] = {}  # what clients stored (active-learning strategy)
        self._label_info: dict[str, dict[str, Any]] = {}
        self._last_error = ""

    # --- listing ---------------------------------------------------------------------------------

    def _pacs(self, action: str, error: DicomwebError) -> PacsError:
        self._last_error = str(error)
        logger.error("%s: %s", action, error)
        return PacsError(f"{action}: {error}")

    def _headers(self, refs: Sequence[InstanceRef]) -> dict[str, pydicom.Dataset]:
        """WADO-RS metadata of ``refs``, by SOP Instance UID: a request per series, else per instance.

        A series the server cannot give whole (Orthanc: 404 when two patients' studies share the
        series UID) or whose answer lacks some of ``refs`` is asked for instance by instance.
        """
        headers: dict[str, pydicom.Dataset] = {}
        for study, series in sorted({(r.study_uid, r.series_uid) for r in refs}):
            try:
                found = retrieve_metadata(self.url, study, series, session=self.session)
            except DicomwebError as e:
                if e.status != HTTP_NOT_FOUND:
                    raise
                found = []
            headers.update((str(h.get("SOPInstanceUID", "")), h) for h in found)
        for ref in refs:
            if ref.sop_uid not in headers:
                for header in retrieve_metadata(self.url, ref.study_uid, ref.series_uid, ref.sop_uid, self.session):
                    headers[ref.sop_uid] = header
        return headers

    def _refresh(self, force: bool = False) -> None:
        """List the PACS again (QIDO-RS; metadata of new instances only) unless the listing is recent.

        Raises:
            PacsError: the server cannot be reached or refuses the search.
        """
        with self._lock:
            if not force and time.monotonic() - self._listed_at < LISTING_MAX_AGE_S:
                return
            try:
                refs = search_instances(self.url, session=self.session)
                segs = [r for r in refs if r.modality.upper() == "SEG" and r.sop_uid not in self._seg_headers]
                new = [
                    r
                    for r in refs
                    if r.modality.upper() not in NON_IMAGE_MODALITIES and r.sop_uid not in self._classified
                ]
                seg_headers = self._headers(segs) if segs else {}
                image_headers = self._headers(new) if new else {}
            except DicomwebError as e:
                raise self._pacs("cannot list the chest radiographs of the PACS", e) from e
            for ref in segs:
                header = seg_headers.get(ref.sop_uid)
                self._seg_headers[ref.sop_uid] = _seg_labels(ref, header) if header is not None else []
            for ref in new:
                header = image_headers.get(ref.sop_uid)
                reason = classify_dicom(header, self.check_headers) if header is not None else "no metadata"
                self._classified[ref.sop_uid] = reason
                if reason is not None:
                    logger.info("not listed: instance %s (%s)", ref.sop_uid, reason)
            listed = {r.sop_uid for r in refs}
            self._images = {
                r.sop_uid: r
                for r in refs
                if r.modality.upper() not in NON_IMAGE_MODALITIES and self._classified.get(r.sop_uid, "") is None
            }
            labels: dict[str, SegLabel] = {}
            training: dict[str, SegLabel] = {}
            for seg_sop, seg_labels in self._seg_headers.items():
                if seg_sop not in listed:  # deleted from the PACS
                    continue
                for label in seg_labels:
                    if label.source_sop_uid in self._images:
                        _keep_best(labels, label)
                        if label.by_person:
                            _keep_best(training, label)
            if self.train_on_automatic:  # only the image's latest model SEG, and only when QC passed it
                for image, label in labels.items():
                    if image not in training and label.trainable(True):
                        training[image] = label
            self._labels = labels
            self._training = training
            self._listed_at = time.monotonic()
            self._last_error = ""
            logger.debug(
                "DICOMweb '%s': %d chest radiograph(s), %d labelled, %d with a training label",
                self.url,
                len(self._images),
                len(labels),
                len(training),
            )

    def _image_ref(self, image_id: str) -> InstanceRef:
        """The listed image ``image_id``; an unknown id makes the listing refresh once.

        Raises:
            ImageNotFoundError: not a chest radiograph of the PACS.
            PacsError: the PACS cannot be listed.
        """
        ref = self._images.get(image_id)
        if ref is None:
            self._refresh(force=True)
            ref = self._images.get(image_id)
        if ref is None:
            reason = self._classified.get(image_id)
            if reason:  # in the PACS, but not a chest radiograph to label
                raise BadRequestError(f"image '{image_id}' is in the PACS but not listed: {reason}")
            raise ImageNotFoundError(image_id)
        return ref

    def _retrieve(self, ref: InstanceRef, folder: Path, what: str) -> Path:
        try:
            files = retrieve_instances(self.url, [ref], folder, self.session)
        except DicomwebError as e:
            raise self._pacs(f"cannot retrieve {what} {ref.sop_uid}", e) from e
        if ref in files.failed:
            raise PacsError(f"cannot retrieve {what} {ref.sop_uid}: {files.failed[ref]}")
        return files[0]

    # --- Datastore: images -----------------------------------------------------------------------

    def name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str) -> None:
        self._description = description

    def list_images(self) -> list[str]:
        self._refresh()
        return sorted(self._images)

    def get_image_uri(self, image_id: str) -> str:
        """The cached copy of the image (retrieved with WADO-RS, stored transfer syntax, on first use)."""
        return str(self._retrieve(self._image_ref(image_id), self.cache / "images", "image"))

    def get_image(self, image_id: str, params: Any = None) -> Any:
        return io.BytesIO(Path(self.get_image_uri(image_id)).read_bytes())

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        ref = self._image_ref(image_id)
        info = {
            "SOPInstanceUID": ref.sop_uid,
            "SeriesInstanceUID": ref.series_uid,
            "StudyInstanceUID": ref.study_uid,
            "Modality": ref.modality,
        }
        return {**info, **self._image_info.get(image_id, {})}

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._image_ref(image_id)
        with self._lock:
            self._image_info.setdefault(image_id, {}).update(info)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise BadRequestError(
            f"images are not added through MONAI Label when the datastore is the PACS {self.url}; "
            "store them in the PACS (STOW-RS, C-STORE or its upload page)"
        )

    def remove_image(self, image_id: str) -> None:
        raise BadRequestError(f"images are not removed through MONAI Label; delete '{image_id}' in the PACS {self.url}")

    def refresh(self) -> None:
        self._refresh(force=True)

    # --- Datastore: labels -----------------------------------------------------------------------

    def get_labeled_images(self, label_tag: str | None = None, labels: Sequence[str] | None = None) -> list[str]:
        """Images with a training label (module doc): an image with only a model's SEG is not one of them."""
        self._refresh()
        return sorted(self._training) if label_tag in (None, _FINAL) else []

    def get_unlabeled_images(self, label_tag: str | None = None, labels: Sequence[str] | None = None) -> list[str]:
        """Images without a training label, including those with only a model's SEG (a person should review it)."""
        self._refresh()
        labelled = set(self.get_labeled_images(label_tag, labels))
        return sorted(set(self._images) - labelled)

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        """``{"final": image_id}`` when the image has a label to show (a model's SEG too), else ``{}``."""
        self._refresh()
        return {_FINAL: image_id} if image_id in self._labels else {}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return self.get_labels_by_image_id(image_id).get(tag, "")

    def seg_label(self, image_id: str) -> SegLabel | None:
        """The image's label: its lung SEG by provenance, then recency (see the module doc); None without one."""
        self._refresh()
        return self._labels.get(image_id)

    def training_label(self, image_id: str) -> SegLabel | None:
        """The lung SEG the image is trained on (see the module doc), or None when it is not a training image."""
        self._refresh()
        return self._training.get(image_id)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The 0/1 PNG of the image's label (retrieved, read with highdicom on first use); "" without one."""
        label = self.seg_label(label_id) if label_tag == _FINAL else None
        return "" if label is None else self._label_png(label)

    def _label_png(self, label: SegLabel) -> str:
        """The 0/1 PNG of one lung SEG over its image, retrieved and read with highdicom on first use."""
        png = self.cache / "labels" / f"{label.ref.sop_uid}.png"
        if not png.is_file():
            seg_path = self._retrieve(label.ref, self.cache / "segs", "SEG")
            try:
                mask = read_lung_seg_mask(pydicom.dcmread(seg_path), label.source_sop_uid)
            except ValueError as e:
                raise PacsError(f"SEG {label.ref.sop_uid} of image '{label.source_sop_uid}' cannot be read: {e}") from e
            save_png(mask, png)
        return str(png)

    def _describe(self, image_id: str, label: SegLabel | None) -> dict[str, Any]:
        """The label info of ``label``, the image's label: its SEG, provenance and whether training uses it."""
        if label is None:
            return {}
        return {**label.info(), "UsedForTraining": self._training.get(image_id) == label}

    def get_label(self, label_id: str, label_tag: str, params: Any = None) -> Any:
        uri = self.get_label_uri(label_id, label_tag)
        return io.BytesIO(Path(uri).read_bytes()) if uri else None

    def saved_label_info(self, image_id: str) -> dict[str, Any]:
        """The info of the label :meth:`save_label` just stored, without asking the PACS again."""
        with self._lock:
            return {**self._label_info.get(image_id, {}), **self._describe(image_id, self._labels.get(image_id))}

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        """The image's label: its SEG's UIDs, ``SegmentAlgorithmType``, ``ContentDescription``, ``UsedForTraining``.

        What clients stored (``update_label_info``) comes with it but never overrides what the SEG says.
        """
        label = self.seg_label(label_id) if label_tag == _FINAL else None
        return {**self._label_info.get(label_id, {}), **self._describe(label_id, label)}

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._label_info.setdefault(label_id, {}).update(info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label as a MANUAL lung SEG in the PACS (STOW-RS); it becomes the image's label (the latest MANUAL).

        Returns:
            the label id (the image id, as MONAI Label's local datastore gives).

        Raises:
            ImageNotFoundError: no listed image has this id.
            BadRequestError: a tag other than ``final``; the label is unreadable or of another size.
            PacsError: the PACS cannot be reached or refuses the SEG.
        """
        if (label_tag or _FINAL) != _FINAL:
            raise BadRequestError(
                f"label tag '{label_tag}' is not stored: labels go to the PACS as DICOM SEG with tag '{_FINAL}' only"
            )
        ref = self._image_ref(image_id)
        image_path = Path(self.get_image_uri(image_id))
        mask = read_label(image_id, image_path, label_filename)
        source = pydicom.dcmread(image_path, stop_before_pixels=True)
        seg = make_lung_seg(
            mask,
            source,
            series_instance_uid=derived_uid(ref.study_uid, ref.series_uid, MANUAL_LABEL_KIND),
            algorithm_version=None,
            source_size_bytes=image_path.stat().st_size,
            algorithm_type="MANUAL",
        )
        seg_ref = InstanceRef(ref.study_uid, str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID), "SEG")
        seg_path = self.cache / "segs" / seg_ref.study_uid / seg_ref.series_uid / f"{seg_ref.sop_uid}.dcm"
        seg_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(seg_path) as tmp:
            seg.save_as(str(tmp))
        try:
            result = stow(self.url, [seg_path], self.session)
        except DicomwebError as e:
            seg_path.unlink(missing_ok=True)
            raise self._pacs(f"label for image '{image_id}' was not saved", e) from e
        if not result.ok:
            seg_path.unlink(missing_ok=True)
            raise PacsError(f"label for image '{image_id}' was not saved: {next(iter(result.failed.values()))}")
        save_png(mask, self.cache / "labels" / f"{seg_ref.sop_uid}.png")
        labels = _seg_labels(seg_ref, seg)
        with self._lock:
            self._seg_headers[seg_ref.sop_uid] = labels
            _keep_best(self._labels, labels[0])
            _keep_best(self._training, labels[0])  # MANUAL: always a training label
            self._listed_at = float("-inf")  # the next listing sees the SEG in the PACS
            if label_info:
                self._label_info.setdefault(image_id, {}).update(label_info)
        logger.info("label of image %s stored in '%s' as SEG %s", image_id, self.url, seg_ref.sop_uid)
        if self.overlay:
            self._store_overlay(ref, image_path, source, mask, seg_ref.sop_uid)
        return image_id

    def _store_overlay(
        self, ref: InstanceRef, image_path: Path, source: pydicom.Dataset, mask: Any, seg_sop_uid: str
    ) -> None:
        """STOW-RS the saved label's contour over its film as a Secondary Capture (after its SEG).

        The label is saved either way: an overlay the PACS does not take is logged and reported in
        the label's info (``overlay_error``), not raised.
        """
        sc_path = None
        try:
            pixels = read_radiograph(image_path).pixels
            sc = make_overlay_sc(
                source,
                overlay_contours(pixels, mask),
                identity="",
                series_instance_uid=derived_uid(ref.study_uid, ref.series_uid, MANUAL_OVERLAY_KIND),
                sop_instance_uid=derived_uid(seg_sop_uid, MANUAL_OVERLAY_KIND),
                series_description=MANUAL_OVERLAY_SERIES_DESCRIPTION,
                series_number=MANUAL_OVERLAY_SERIES_NUMBER,
                derivation_description=f"Lung contour (red) of the label saved as DICOM SEG {seg_sop_uid}, drawn "
                "over the radiograph",
            )
            sc_path = self.cache / "overlays" / f"{sc.SOPInstanceUID}.dcm"
            sc_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(sc_path) as tmp:
                sc.save_as(str(tmp))
            result = stow(self.url, [sc_path], self.session)
            error = "" if result.ok else next(iter(result.failed.values()))
        except Exception as e:  # noqa: BLE001 - the SEG is stored: nothing here may turn the save into a failure
            error = f"{type(e).__name__}: {e}"
        finally:
            if sc_path is not None:
                sc_path.unlink(missing_ok=True)
        with self._lock:
            info = self._label_info.setdefault(ref.sop_uid, {})
            for key in ("overlay_error", "overlay_sop_instance_uid", "overlay_series_instance_uid"):
                info.pop(key, None)
            if error:
                info["overlay_error"] = error
            else:
                info["overlay_sop_instance_uid"] = str(sc.SOPInstanceUID)
                info["overlay_series_instance_uid"] = str(sc.SeriesInstanceUID)
        if error:
            logger.warning("overlay of the label of image %s was not stored in '%s': %s", ref.sop_uid, self.url, error)
        else:
            logger.info(
                "overlay of the label of image %s stored in '%s' as SC %s", ref.sop_uid, self.url, sc.SOPInstanceUID
            )

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise BadRequestError(
            f"labels are not removed through MONAI Label; delete the SEG of '{label_id}' in the PACS {self.url}"
        )

    # --- Datastore: training and status ----------------------------------------------------------

    def datalist(self) -> list[dict[str, Any]]:
        """Image/label file pairs of every image with a training label (module doc), retrieved into the cache.

        A model's (AUTOMATIC) SEG is not among them unless ``train_on_automatic``, and then only one
        that quality control passed. An image or SEG that cannot be read is left out with a warning;
        an unreachable PACS raises.
        """
        self._refresh(force=True)
        items = []
        for image_id, label in sorted(self._training.items()):
            try:
                items.append({"image": self.get_image_uri(image_id), "label": self._label_png(label)})
            except PacsError as e:
                if self._last_error:  # the server itself failed: the other items would fail too
                    raise
                logger.warning("fine-tuning leaves out image %s: %s", image_id, e.detail)
        return items

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        raise BadRequestError(f"no dataset archive: the images and labels are in the PACS {self.url}")

    def status(self) -> dict[str, Any]:
        """Counts of the listing; the last one known (with ``pacs_error``) while the PACS is unreachable.

        ``completed`` counts the images with a training label; ``automatic_only`` those whose label
        is a model's SEG (shown, not a person's).
        """
        try:
            self._refresh()
        except PacsError as e:
            error = e.detail
        else:
            error = ""
        status: dict[str, Any] = {
            "total": len(self._images),
            "completed": len(self._training),
            "label_tags": {_FINAL: len(self._training)} if self._training else {},
            "automatic_only": sum(not label.by_person for label in self._labels.values()),
            "train_on_automatic": self.train_on_automatic,
            "url": self.url,
        }
        if error:
            status["pacs_error"] = error
        return status

    def json(self) -> dict[str, Any]:
        self._refresh()
        objects = {}
        for image_id in sorted(self._images):
            label = self._labels.get(image_id)
            objects[image_id] = {
                "image": {"ext": ".dcm", "info": self.get_image_info(image_id)},
                "labels": {_FINAL: {"ext": ".png", "info": self._describe(image_id, label)}} if label else {},
            }
        return {"name": self._name, "description": self._description, "url": self.url, "objects": objects}
