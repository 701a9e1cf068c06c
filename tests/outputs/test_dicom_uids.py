"""Deterministic result UIDs: the same source and model give the same SEG/SR/SC UIDs, run after run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM
from pydicom.dataset import Dataset
from pydicom.uid import UID
from stub_segmenter import stub_segmenter

from lungseg_monai.inference.runner import segment_files
from lungseg_monai.outputs.dicom_uids import ResultUIDs, derived_uid

IDENTITY = "LungUNet-resnet34-0123456789ab"


def _source(study: str = "1.2.3", series: str = "1.2.3.4", instance: str = "1.2.3.4.5") -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, instance
    return ds


def test_derived_uid_is_valid_deterministic_and_depends_on_every_part() -> None:
    uid = derived_uid("1.2.3", IDENTITY, "seg")
    assert uid == derived_uid("1.2.3", IDENTITY, "seg")
    assert UID(uid).is_valid and len(uid) <= 64
    assert uid != derived_uid("1.2.3", IDENTITY, "sr")
    # Parts are kept apart: moving characters from one part to the next changes the UID.
    assert derived_uid("ab", "c") != derived_uid("a", "bc")


def test_derived_uid_without_parts_is_refused() -> None:
    with pytest.raises(ValueError, match="needs at least one part"):
        derived_uid()


def test_result_uids_equal_across_calls_and_differ_across_identities_and_sources() -> None:
    uids = ResultUIDs.for_source(_source(), IDENTITY)
    assert uids == ResultUIDs.for_source(_source(), IDENTITY)
    values = list(vars(uids).values())
    assert len(set(values)) == 6 and all(UID(v).is_valid and len(v) <= 64 for v in values)
    other_model = ResultUIDs.for_source(_source(), IDENTITY + "x")
    assert not set(values) & set(vars(other_model).values())
    # Another image of the same series: same series UIDs, other instance UIDs.
    sibling = ResultUIDs.for_source(_source(instance="1.2.3.4.6"), IDENTITY)
    assert (sibling.seg_series_uid, sibling.sr_series_uid, sibling.sc_series_uid) == (
        uids.seg_series_uid,
        uids.sr_series_uid,
        uids.sc_series_uid,
    )
    assert sibling.seg_sop_uid != uids.seg_sop_uid and sibling.sr_sop_uid != uids.sr_sop_uid
    # Another series: other series UIDs.
    assert ResultUIDs.for_source(_source(series="1.2.3.9"), IDENTITY).seg_series_uid != uids.seg_series_uid


def test_result_uids_need_the_source_uids_and_an_identity() -> None:
    source = _source()
    del source.SeriesInstanceUID
    with pytest.raises(ValueError) as info:
        ResultUIDs.for_source(source, IDENTITY)
    assert str(info.value) == (
        "the source DICOM has no SeriesInstanceUID; result UIDs are derived from the source's "
        "study, series and SOP instance UIDs"
    )
    with pytest.raises(ValueError, match="model identity is empty"):
        ResultUIDs.for_source(_source(), "")


def test_infer_gives_the_same_seg_uids_on_rerun_and_for_the_node(tmp_path: Path) -> None:
    """Two runs into two folders (a rerun, or the DICOM node) write SEGs with the same UIDs."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for source in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM):
        shutil.copy(source, inputs / source.name)
    segmenter = stub_segmenter()
    seen = []
    for run in ("a", "b"):
        summary = segment_files([inputs], tmp_path / run, segmenter, formats="dicomseg", progress=False)
        assert summary.ok
        seen.append(
            {
                seg.SOPInstanceUID: seg.SeriesInstanceUID
                for seg in (pydicom.dcmread(p) for p in sorted((tmp_path / run / "dicomseg").iterdir()))
            }
        )
    assert seen[0] == seen[1] and len(seen[0]) == 2
    for source in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM):
        header = pydicom.dcmread(source, stop_before_pixels=True)
        uids = ResultUIDs.for_source(header, segmenter.identity, segmenter.result_settings(False))
        assert seen[0][uids.seg_sop_uid] == uids.seg_series_uid
