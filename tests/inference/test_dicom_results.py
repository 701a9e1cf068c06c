"""The DICOM results of ``lungseg infer`` (SEG, SR, SC) from old archive files, and their UIDs under other settings.

Real radiographs (sample_data/dicom, tests/data); the stub segmenter (a one-weight network) makes the masks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import DICOM_FAKE_MONO1, DICOM_JPEG_SIIM
from pydicom.filewriter import dcmwrite
from stub_segmenter import stub_segmenter

from lungseg_monai.inference import LungSegmenter
from lungseg_monai.inference.runner import segment_files
from lungseg_monai.outputs.dicom_sc import SC_SERIES_NUMBER
from lungseg_monai.outputs.dicom_seg import MANUAL_SEG_SERIES_NUMBER, SEG_SERIES_NUMBER
from lungseg_monai.outputs.dicom_sr import SR_SERIES_NUMBER
from lungseg_monai.label.dicomweb_datastore import MANUAL_OVERLAY_SERIES_NUMBER
from lungseg_monai.qc.quality import CALIBRATION_VERSION

DICOM_FORMATS = "mask,dicomseg,dicomsr,dicomsc"


def _acr_nema_copy(source: Path, target: Path) -> Path:
    """``source`` decompressed and written as old archives hold it: no preamble, no file meta, implicit VR."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    old = pydicom.Dataset()  # the same elements, without file meta, the pixels uncompressed
    for element in ds:
        if element.keyword != "PixelData":
            old.add(element)
    old.PixelData = pixels.tobytes()
    old["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    old.is_little_endian, old.is_implicit_VR = True, True
    dcmwrite(str(target), old, write_like_original=True)
    return target


def test_an_acr_nema_file_without_preamble_or_file_meta_gets_every_dicom_result(tmp_path: Path) -> None:
    old = _acr_nema_copy(DICOM_FAKE_MONO1, tmp_path / "old_archive.dcm")
    assert old.read_bytes()[128:132] != b"DICM"
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(old)  # what the runner did before: the file failed whole
    sop = str(pydicom.dcmread(old, force=True).SOPInstanceUID)
    summary = segment_files([old], tmp_path / "out", stub_segmenter(), formats=DICOM_FORMATS, progress=False)
    assert summary.ok, summary.report()
    assert [item.name for item in summary.segmented] == [sop]
    for folder in ("dicomseg", "dicomsr", "dicomsc"):
        result = pydicom.dcmread(tmp_path / "out" / folder / f"{sop}.dcm")
        assert result.StudyInstanceUID == pydicom.dcmread(old, force=True).StudyInstanceUID


def _seg_uids(folder: Path, segmenter: LungSegmenter, out: Path, **options: object) -> tuple[str, str]:
    summary = segment_files([folder], out, segmenter, formats="dicomseg", progress=False, **options)
    assert summary.ok and len(summary.segmented) == 1
    seg = pydicom.dcmread(next((out / "dicomseg").iterdir()))
    return str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID)


def _constant_calibration(segmenter: LungSegmenter) -> dict:
    """A QC calibration for ``segmenter``'s weights that estimates every mask's Dice at 0.97."""
    return {
        "version": CALIBRATION_VERSION,
        "weights_sha256": segmenter.weights_sha256,
        "features": {"mean": [0.0], "components": [[1.0]], "variances": [1.0], "residual_variance": 1.0},
        "ood_threshold": 1e9,
        "ranges": {},
        "score_model": {"features": ["soft_dice"], "mean": [0.0], "scale": [1.0], "weights": [0.0], "intercept": 0.97},
    }


def test_other_threshold_postprocessing_precision_or_calibration_gives_other_uids(tmp_path: Path) -> None:
    """Different content never reuses a UID: only the same model with the same settings gives the same SEG UIDs."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DICOM_JPEG_SIIM, inputs / DICOM_JPEG_SIIM.name)
    stub = stub_segmenter()

    def segmenter(precision: str = "fp32", postprocess: bool = False, **card: object) -> LungSegmenter:
        return LungSegmenter(stub.network, {**stub.card, **card}, postprocess=postprocess, precision=precision)

    reference = _seg_uids(inputs, segmenter(), tmp_path / "ref")
    assert _seg_uids(inputs, segmenter(), tmp_path / "same") == reference
    calibrated = segmenter(qc=_constant_calibration(stub))
    assert calibrated.qc is not None
    others = {
        "threshold": _seg_uids(inputs, segmenter(threshold=0.6), tmp_path / "threshold"),
        "postprocess": _seg_uids(inputs, segmenter(postprocess=True), tmp_path / "postprocess"),
        "precision": _seg_uids(inputs, segmenter(precision="bf16"), tmp_path / "precision"),
        "calibration": _seg_uids(inputs, calibrated, tmp_path / "calibration"),
        "write_rejected": _seg_uids(inputs, segmenter(), tmp_path / "flag", write_rejected=True),
    }
    for what, uids in others.items():
        assert uids[0] != reference[0], what
        assert uids[1] != reference[1], what
    assert len({uids[0] for uids in others.values()}) == len(others)


def test_every_result_series_has_its_own_number() -> None:
    """SEG, SR, overlay SC, a person's label and its overlay: a PACS lists them as distinct series."""
    numbers = [SEG_SERIES_NUMBER, SR_SERIES_NUMBER, SC_SERIES_NUMBER, MANUAL_SEG_SERIES_NUMBER, MANUAL_OVERLAY_SERIES_NUMBER]
    assert len(set(numbers)) == len(numbers)
