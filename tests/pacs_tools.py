"""Helpers of the PACS tests: real chest instances with new UIDs, a modality's C-STORE, an in-process node."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1, DICOM_JPEG_SIIM
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

NODE_AET = "LUNGSEG"
PACS_AET = "ORTHANC"


def real_chest_files() -> list[Path]:
    """The three real chest DICOMs (JPEG baseline SC, JPEG 2000 CR MONOCHROME1, JPEG baseline SC)."""
    return [DICOM_JPEG_SIIM, DICOM_J2K_MONO1, DICOM_FAKE_MONO1]


def shrunk(ds: pydicom.Dataset, longest_side: int) -> pydicom.Dataset:
    """The same film, its real pixels resized to ``longest_side`` and stored uncompressed (spacing scaled)."""
    from PIL import Image

    pixels = ds.pixel_array
    scale = longest_side / max(pixels.shape)
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    small = np.asarray(Image.fromarray(pixels.astype(np.float32)).resize(size, Image.BILINEAR))
    small = np.clip(np.round(small), 0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)
    out = copy.deepcopy(ds)
    out.Rows, out.Columns = small.shape
    out.PixelData = small.tobytes()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in out and all(float(v) > 0 for v in out[keyword].value):
            out[keyword].value = [f"{float(v) / scale:.6g}" for v in out[keyword].value]
    out.is_little_endian, out.is_implicit_VR = True, False  # still honoured (deprecated) by pydicom 3
    return out


def chest_instances(
    folder: Path, count: int, sources: Sequence[Path] | None = None, longest_side: int | None = None
) -> list[Path]:
    """``count`` copies of the real chest DICOMs with new study, series and SOP instance UIDs (ten per series).

    ``longest_side``: copies of the real pixels resized to this size and stored uncompressed (many
    instances quickly); default: the files' own pixel data as they are.
    """
    datasets = [pydicom.dcmread(p) for p in (sources or real_chest_files())]
    if longest_side is not None:
        datasets = [shrunk(ds, longest_side) for ds in datasets]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    study, series = generate_uid(), generate_uid()
    for index in range(count):
        ds = datasets[index % len(datasets)]
        if index % 10 == 0:
            study, series = generate_uid(), generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")


def c_store(port: int, paths: Sequence[Path], calling_aet: str = PACS_AET, called_aet: str = NODE_AET) -> list[int]:
    """Send ``paths`` to a node on 127.0.0.1 in one association, as a modality would; returns the statuses."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    datasets = [pydicom.dcmread(p) for p in paths]
    syntaxes: dict[str, set[str]] = {}
    for ds in datasets:
        syntaxes.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, stored in syntaxes.items():
        # One context per transfer syntax, as a modality proposes them: the file goes as it is.
        for syntax in sorted(stored):
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_aet} on port {port} not established")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@contextlib.contextmanager
def running_node(segmenter, **settings) -> Iterator:  # noqa: ANN001 - LungSegmenter / DicomNode, imported lazily
    """A DicomNode in this process on a free port (``port`` 0), stopped on exit."""
    from lungseg_monai.pacs.config import NodeConfig
    from lungseg_monai.pacs.node import DicomNode

    settings = {"port": 0, "model": "in-process", "retry_first_s": 0.2, "retry_max_s": 1.0, **settings}
    node = DicomNode(NodeConfig(**settings), segmenter=segmenter).start()
    try:
        yield node
    finally:
        node.stop()


def c_store_concurrently(port: int, paths: Sequence[Path], associations: int) -> list[int]:
    """Send ``paths`` over ``associations`` concurrent associations (paths dealt round-robin); all statuses."""
    from concurrent.futures import ThreadPoolExecutor

    shares = [list(paths[i::associations]) for i in range(associations)]
    with ThreadPoolExecutor(associations) as pool:
        return [status for statuses in pool.map(lambda share: c_store(port, share), shares) for status in statuses]


def stow_model_seg(
    dicomweb_url: str, film: Path, mask: np.ndarray, qc: object, folder: Path, model: str, date: str = ""
) -> str:
    """Store a model's AUTOMATIC SEG of ``film`` with verdict ``qc`` as ``lungseg infer --stow-to`` does; returns
    its SOP Instance UID. ``date``: its Content Date instead of today's (a SEG made later)."""
    from lungseg_monai.outputs.dicom_seg import qc_content_description, save_lung_seg
    from lungseg_monai.outputs.dicom_uids import ResultUIDs
    from lungseg_monai.dicomweb import stow

    uids = ResultUIDs.for_source(pydicom.dcmread(film, stop_before_pixels=True), model)
    target = folder / f"{uids.seg_sop_uid}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    save_lung_seg(mask, film, target, uids.seg_series_uid, model, qc_content_description(qc), uids.seg_sop_uid)
    if date:
        seg = pydicom.dcmread(target)
        seg.ContentDate = date
        seg.save_as(target)
    assert stow(dicomweb_url, [target]).ok
    return uids.seg_sop_uid
