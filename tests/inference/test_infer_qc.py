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
from conftest import DICOM_JPEG_SIIM, SAMPLE_DATA

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
    assert qc["tta"] is True and qc["tta_method"] == "features"  # the cheap agreement check (issue 22)


def test_rejected_masks_get_reasons_no_seg_and_fail_on_reject(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
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
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", _constant_score(0.85))
    assert _infer(model, tmp_path / "out", "--fail-on", "reject") == 0
    siim = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    row = _rows(tmp_path / "out")[siim]
    assert row["qc_status"] == "review" and row["qc_score"] == "0.85"
    assert "estimated Dice 0.85 < 0.90" in row["qc_reasons"]
    seg = pydicom.dcmread(tmp_path / "out" / "dicomseg" / f"{siim}.dcm")
    assert seg.ContentDescription.startswith("QC review: ") and len(seg.ContentDescription) <= 64
    assert _infer(model, tmp_path / "out2", "--fail-on", "review") == 3


def _infer_png(model: Path, out: Path, *extra: str) -> int:
    return main(["infer", str(PNG), "-o", str(out), "--model", str(model), "--no-progress", *extra])


@pytest.mark.parametrize("fail_on", ["review", "reject"])
def test_a_model_without_calibration_segments_but_fails_fail_on_unless_allowed(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, fail_on: str
) -> None:
    """A gate that cannot check a mask does not pass it: 'unavailable' fails --fail-on review and reject."""
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", None)
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="lungseg_monai")
    assert _infer_png(model, out, "--fail-on", fail_on) == 3
    row = _rows(out)["1052b0fe"]
    assert row["qc_status"] == "unavailable" and row["qc_score"] == ""
    assert "no QC calibration" in row["qc_reasons"]
    assert (out / "masks" / "1052b0fe.png").is_file()  # all outputs are still written
    assert "1 of them unchecked: QC unavailable (the model has no QC calibration" in caplog.text
    assert _infer_png(model, out, "--fail-on", fail_on, "--allow-uncalibrated") == 0
    assert _infer_png(model, out) == 0  # no gate asked for: verdicts alone do not fail a run


def test_a_rerun_gives_the_exit_code_and_counts_of_the_first_run(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Outputs kept from the first run count with the verdict they were made with (from the manifest)."""
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", {"ood_threshold": 0.0})
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="lungseg_monai")
    assert _infer_png(model, out, "--fail-on", "reject") == 3
    caplog.clear()
    assert _infer_png(model, out, "--fail-on", "reject") == 3
    assert "0 segmented, 0 rejected, 1 already done" in caplog.text
    assert "quality control: 0 pass, 0 review, 1 reject" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["names"]["1052b0fe"]["qc"]["qc_status"] == "reject"


def test_stow_to_refuses_a_model_without_calibration_unless_allowed(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Results for a PACS must have been checked: nothing is segmented or sent, and the error says what to do."""
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", None)
    out = tmp_path / "out"
    stow = ["--formats", "mask,dicomseg", "--stow-to", "http://127.0.0.1:9/dicom-web"]
    assert _infer_png(model, out, *stow) == 1
    assert "quality control is unavailable: the model has no QC calibration" in caplog.text
    assert "pass --allow-uncalibrated" in caplog.text
    assert not (out / "masks").exists()


def test_a_calibration_fitted_on_other_weights_is_not_used(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model card beside other weights (or left by a crash between the renames of model.pt and model.json):
    its calibration is another model's, so verdicts are 'unavailable' and say why; gates stop them."""
    import torch

    from lungseg_monai.inference import LungSegmenter

    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", {})
    state = torch.load(model, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.001
    torch.save(state, model)
    segmenter = LungSegmenter.from_model(model, device="cpu")
    assert segmenter.qc is None
    assert "QC calibration was fitted on other weights" in segmenter.qc_unavailable_reason
    assert _infer_png(model, tmp_path / "out", "--fail-on", "reject") == 3
    assert _rows(tmp_path / "out")["1052b0fe"]["qc_reasons"].startswith(
        "the model's QC calibration was fitted on other weights"
    )
    old = _bundle_with(segmenting_bundle, tmp_path / "old", {"version": 1})
    assert "QC calibration is version 1" in LungSegmenter.from_model(old, device="cpu").qc_unavailable_reason


def test_a_recalibration_redoes_the_outputs_and_their_verdicts(segmenting_bundle: Path, tmp_path: Path) -> None:
    """The calibration is part of the output settings: the verdicts of a rerun are the new calibration's."""
    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", _constant_score(0.97))
    out = tmp_path / "out"
    assert _infer_png(model, out, "--fail-on", "review") == 0
    assert _rows(out)["1052b0fe"]["qc_status"] == "pass"
    card = json.loads(model.with_suffix(".json").read_text())
    card["qc"]["score_model"]["intercept"] = 0.85
    model.with_suffix(".json").write_text(json.dumps(card))
    assert _infer_png(model, out, "--fail-on", "review") == 3
    assert _rows(out)["1052b0fe"]["qc_status"] == "review"


def test_a_withheld_seg_is_removed_never_kept_or_sent(segmenting_bundle: Path, tmp_path: Path) -> None:
    """An earlier run's SEG (another model's, or a --write-rejected-seg run's) is removed when today's verdict
    withholds it, the SR references none, and --stow-to sends none."""
    from lungseg_monai.inference.cli import _results_to_store
    from lungseg_monai.inference.runner import segment_files

    siim = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    out = tmp_path / "out"
    seg = out / "dicomseg" / f"{siim}.dcm"
    passing = _bundle_with(segmenting_bundle, tmp_path / "pass", _constant_score(0.97))
    rejecting = _bundle_with(segmenting_bundle, tmp_path / "reject", {"ood_threshold": 0.0})
    formats = ["mask", "dicomseg", "dicomsr"]
    for model, write_rejected, seg_expected in [
        (passing, False, True),  # a pass: its SEG is written
        (rejecting, False, False),  # another calibration rejects: the pass's SEG goes
        (rejecting, True, True),  # asked for: the rejected mask's SEG
        (rejecting, False, False),  # the same model without the flag: that SEG goes too
    ]:
        summary = segment_files(
            [DICOM_JPEG_SIIM], out, model, formats=formats, progress=False, write_rejected=write_rejected
        )
        assert summary.ok and [i.name for i in summary.segmented] == [siim]
        assert seg.exists() == seg_expected
        outputs = json.loads((out / "manifest.json").read_text())["names"][siim]["outputs"]
        assert "dicomseg" in outputs  # done for these settings: written, or decided none (withheld)
        assert (seg in _results_to_store(summary, formats)) == seg_expected
        sr = pydicom.dcmread(out / "dicomsr" / f"{siim}.dcm")
        referenced = [
            ref.ReferencedSOPInstanceUID
            for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ]
        assert (len(referenced) == 2) == seg_expected  # the image, and the SEG when there is one


def test_reruns_keep_a_withheld_seg_withheld_and_send_only_what_this_run_vouches_for(
    segmenting_bundle: Path, tmp_path: Path
) -> None:
    """A rejected film is not redone on a rerun (its SEG is decided: none); a SEG of an earlier pass is removed
    even when this run writes no SEG; --stow-to sends only this run's formats made with this run's settings."""
    from lungseg_monai.inference.cli import _results_to_store
    from lungseg_monai.inference.runner import segment_files

    siim = str(pydicom.dcmread(DICOM_JPEG_SIIM, stop_before_pixels=True).SOPInstanceUID)
    out = tmp_path / "out"
    passing = _bundle_with(segmenting_bundle, tmp_path / "pass", _constant_score(0.97))
    rejecting = _bundle_with(segmenting_bundle, tmp_path / "reject", {"ood_threshold": 0.0})

    def run(model: Path, formats: list[str]):  # noqa: ANN202
        summary = segment_files([DICOM_JPEG_SIIM, PNG], out, model, formats=formats, progress=False)
        assert summary.ok
        return summary

    first = run(passing, ["mask", "dicomseg", "dicomsr"])
    assert (out / "dicomseg" / f"{siim}.dcm").is_file() and len(_results_to_store(first, ["dicomseg", "dicomsr"])) == 2
    second = run(rejecting, ["mask"])  # no SEG asked for: the pass's SEG still goes
    assert not (out / "dicomseg" / f"{siim}.dcm").exists()
    assert _results_to_store(second, ["dicomseg", "dicomsr"]) == []  # the SR on disk is the first model's
    third = run(rejecting, ["mask", "dicomseg"])
    assert [i.name for i in third.segmented] == [siim]
    fourth = run(rejecting, ["mask", "dicomseg"])  # nothing changed: nothing redone, the verdict read back
    assert fourth.segmented == [] and {i.name for i in fourth.up_to_date} == {siim, "1052b0fe"}
    assert fourth.qc[siim].status == "reject" and _results_to_store(fourth, ["dicomseg"]) == []
    dicom_only = segment_files([PNG], tmp_path / "out2", rejecting, formats="dicomseg", progress=False)
    assert dicom_only.ok and not dicom_only.qc
    assert dicom_only.skipped[0].reason == "none of the formats asked for (dicomseg) applies to a non-DICOM input"


@pytest.mark.parametrize("case", ["too_few", "validation_is_training"])
def test_a_split_that_cannot_calibrate_honestly_publishes_no_calibration(
    trained_bundle: Path, segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """A fine-tune on a handful of labels (or one validating on its training labels) gets no calibration: the
    card's old one goes too, so the gates see 'unavailable' instead of a calibration they would trust."""
    from lungseg_monai.inference import LungSegmenter, calibrate_model

    model = _bundle_with(segmenting_bundle, tmp_path / "bundle", {})
    split = json.loads((trained_bundle / "models" / "datalist_split.json").read_text())
    training = split["training"]
    # the sample's 9 validation films are under the default minimum of 20; training films as validation
    # are refused whatever the minimum
    validation, minimum = (split["validation"], 20) if case == "too_few" else (training[:4], 2)
    assert calibrate_model(model, {"training": training, "validation": validation}, "cpu", min_validation=minimum) is None
    assert "qc" not in json.loads(model.with_suffix(".json").read_text())
    assert "QC not calibrated" in caplog.text
    assert LungSegmenter.from_model(model, device="cpu").qc is None
