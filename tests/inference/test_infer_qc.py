"""Quality control through ``lungseg infer``: verdict columns, summary, --fail-on, SEGs of reviewed and
rejected masks, and the calibration written at the end of training.

The session's small bundle is trained for 2 epochs only, so its real verdicts are all alike. To test
each path, copies of it get hand-set calibrations: an OOD limit of 0 (every image rejected), or
wide shape ranges and a constant score model (every mask passed, or every mask to review).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import DICOM_JPEG_SIIM, SAMPLE_DATA, require_shared

from lungseg_monai.cli import main
from lungseg_monai.qc.mask import SHAPE_FEATURES

PNG = SAMPLE_DATA / "images" / "1052b0fe.png"
WIDE = [-1e9, 1e9]


def _bundle_with(segmenting_bundle: Path, tmp: Path, change: dict | None) -> Path:
    """A copy of the small model whose QC calibration is changed by ``change`` (None: removed)."""
    (tmp / "models").mkdir(parents=True)
    shutil.copy(segmenting_bundle / "models" / "model.pt", tmp / "models" / "model.pt")
    card = json.loads((segmenting_bundle / "models" / "model.json").read_text())
    if change is None:
        card.pop("qc")
    else:
        card["qc"].update(change)
    (tmp / "models" / "model.json").write_text(json.dumps(card))
    return tmp / "models" / "model.pt"


def _constant_score(value: float) -> dict:
    return {
        "ranges": {name: WIDE for name in SHAPE_FEATURES},
        "ood_threshold": 1e9,
        "score_model": {"features": ["soft_dice"], "mean": [0.0], "scale": [1.0], "weights": [0.0], "intercept": value},
    }


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "measurements.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _infer(model: Path, out: Path, *extra: str) -> int:
    args = ["infer", str(DICOM_JPEG_SIIM), str(PNG), "-o", str(out), "--model", str(model), "--no-progress"]
    return main([*args, "--batch-size", "2", *extra])


def test_calibration_is_written_at_the_end_of_training(trained_bundle: Path) -> None:
    card = json.loads((trained_bundle / "models" / "model.json").read_text())
    split = json.loads((trained_bundle / "models" / "datalist_split.json").read_text())
    qc = card["qc"]
    assert qc["validation"]["n_training"] == len(split["training"])
    assert qc["validation"]["n_validation"] == len(split["validation"])
    assert len(qc["features"]["mean"]) == 2048  # ResNet50 bottleneck channels
    assert qc["ood_threshold"] > qc["validation"]["ood_distance_max"] > 0
    assert set(qc["ranges"]) >= {"lung_fraction", "side_ratio", "solidity"}
    assert qc["score_model"]["features"] == ["soft_dice", "tta_dice", "uncertain_share", "ood_distance", "n_out_of_range"]


def test_rejected_masks_get_reasons_no_seg_and_fail_on_reject(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_shared()
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", {"ood_threshold": 0.0})
    caplog.set_level("INFO", logger="lungseg_monai")
    assert _infer(model, tmp_path / "out") == 0  # verdicts alone do not fail a run
    rows = _rows(tmp_path / "out")
    siim = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    assert {r["qc_status"] for r in rows.values()} == {"reject"}
    assert rows[siim]["qc_reasons"].startswith("image unlike the training radiographs (OOD distance")
    assert float(rows[siim]["qc_score"]) >= 0
    assert not (tmp_path / "out" / "dicomseg" / f"{siim}.dcm").exists()
    assert (tmp_path / "out" / "masks" / f"{siim}.png").is_file()  # the mask is kept for review
    assert "quality control: 0 pass, 0 review, 2 reject" in caplog.text
    assert _infer(model, tmp_path / "out2", "--fail-on", "reject") == 3
    assert _infer(model, tmp_path / "out3", "--write-rejected-seg") == 0
    seg = pydicom.dcmread(tmp_path / "out3" / "dicomseg" / f"{siim}.dcm")
    assert seg.ContentDescription.startswith("QC reject: image unlike the training radiographs")


def test_review_is_said_in_the_seg_and_fails_only_with_fail_on_review(segmenting_bundle: Path, tmp_path: Path) -> None:
    require_shared()
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", _constant_score(0.85))
    assert _infer(model, tmp_path / "out", "--fail-on", "reject") == 0
    siim = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    row = _rows(tmp_path / "out")[siim]
    assert row["qc_status"] == "review" and row["qc_score"] == "0.85"
    assert "estimated Dice 0.85 < 0.90" in row["qc_reasons"]
    seg = pydicom.dcmread(tmp_path / "out" / "dicomseg" / f"{siim}.dcm")
    assert seg.ContentDescription.startswith("QC review: ") and len(seg.ContentDescription) <= 64
    assert _infer(model, tmp_path / "out2", "--fail-on", "review") == 3


def test_a_model_without_calibration_segments_with_qc_unavailable(segmenting_bundle: Path, tmp_path: Path) -> None:
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", None)
    out = tmp_path / "out"
    assert main(["infer", str(PNG), "-o", str(out), "--model", str(model), "--no-progress", "--fail-on", "review"]) == 0
    row = _rows(out)["1052b0fe"]
    assert row["qc_status"] == "unavailable" and row["qc_score"] == ""
    assert "no QC calibration" in row["qc_reasons"]
