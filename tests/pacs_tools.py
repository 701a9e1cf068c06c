"""Helpers of the PACS tests: real chest instances with new UIDs, a modality's C-STORE, an in-process node."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1, DICOM_JPEG_SIIM, require_shared
from pydicom.uid import generate_uid

NODE_AET = "LUNGSEG"
PACS_AET = "ORTHANC"


def real_chest_files() -> list[Path]:
    """The three real chest DICOMs (JPEG baseline SC, JPEG 2000 CR MONOCHROME1, JPEG baseline SC)."""
    require_shared()
    return [DICOM_JPEG_SIIM, DICOM_J2K_MONO1, DICOM_FAKE_MONO1]


def chest_instances(folder: Path, count: int, sources: Sequence[Path] | None = None) -> list[Path]:
    """``count`` copies of the real chest DICOMs (real pixels) with new study, series and SOP instance UIDs."""
    sources = list(sources or real_chest_files())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    study, series = generate_uid(), generate_uid()
    for index in range(count):
        ds = pydicom.dcmread(sources[index % len(sources)])
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
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling_aet)
    ae.requested_contexts = StoragePresentationContexts
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop_class in {str(ds.SOPClassUID) for ds in datasets} - {c.abstract_syntax for c in ae.requested_contexts}:
        ae.requested_contexts = ae.requested_contexts[:127]
        ae.add_requested_context(sop_class)
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
