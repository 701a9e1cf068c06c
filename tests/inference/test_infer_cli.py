"""``lungseg infer`` end to end on the real DICOM files, a DICOM study folder and PNGs."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DICOM_J2K_MONO1, DICOM_JPEG_SIIM, SAMPLE_DATA
from PIL import Image
from dicom_factory import write_non_chest_copies, write_text_sr

from lungseg_monai.cli import main
from lungseg_monai.inference import LungSegmenter
from lungseg_monai.io import read_radiograph

PNG_NAMES = ("1052b0fe", "41182_2020_203_Fig3_HTML", "bd3ceeb6")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _uid(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


@pytest.fixture(scope="module")
def study_run(segmenting_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run over a study folder (real J2K CR + a Basic Text SR), the real SIIM file and a PNG, all formats."""
    tmp = tmp_path_factory.mktemp("study_run")
    study = tmp / "study"
    (study / "cr").mkdir(parents=True)
    shutil.copy(DICOM_J2K_MONO1, study / "cr" / "IM0001")
    write_text_sr(study / "report.dcm", _uid(DICOM_J2K_MONO1, "StudyInstanceUID"))
    png = SAMPLE_DATA / "images" / f"{PNG_NAMES[1]}.png"
    out = tmp / "out"
    model = segmenting_bundle / "models" / "model.pt"
    args = [
        "infer", str(study), str(DICOM_JPEG_SIIM), str(png), "-o", str(out), "--model", str(model),
        "--formats", "mask,overlay,nifti,dicomseg,measurements", "--batch-size", "1", "--no-progress",
        # The 2-epoch model's masks are rejected by quality control; this run checks the SEG itself.
        "--write-rejected-seg",
    ]  # fmt: skip
    code, records = _run_logged(args)
    sources = {_uid(DICOM_J2K_MONO1): DICOM_J2K_MONO1, _uid(DICOM_JPEG_SIIM): DICOM_JPEG_SIIM, PNG_NAMES[1]: png}
    log = "\n".join(r.getMessage() for r in records)
    return {"code": code, "out": out, "log": log, "sources": sources, "model": model}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _run_logged(args: list[str]) -> tuple[int, list[logging.LogRecord]]:
    """``lungseg ARGS`` with the package's log at INFO: (exit code, the log records)."""
    handler, logger = _ListHandler(), logging.getLogger("lungseg_monai")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        code = main(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return code, handler.records


def test_study_run_segments_images_and_notes_the_report(study_run: dict) -> None:
    assert study_run["code"] == 0
    out = study_run["out"]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(study_run["sources"])
    assert "report.dcm': SR object without an image" in study_run["log"]
    assert "1 skipped, 0 failed" in study_run["log"]
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


def test_masks_are_0_255_at_the_input_size_and_equal_segment(study_run: dict) -> None:
    """``LungSegmenter.segment`` (what the MONAI Label app calls) gives exactly the mask written (x255)."""
    segmenter = LungSegmenter.from_model(study_run["model"], device="cpu")
    for name, source in study_run["sources"].items():
        mask = _png(study_run["out"] / "masks" / f"{name}.png")
        if source == DICOM_J2K_MONO1:  # 1841 x 1955: check its size from the header, skip decoding it again
            header = pydicom.dcmread(source, stop_before_pixels=True)
            shape = (int(header.Rows), int(header.Columns))
        else:
            radiograph = read_radiograph(source)
            shape = radiograph.shape
            np.testing.assert_array_equal(mask, segmenter.segment(radiograph) * 255, err_msg=name)
        assert mask.shape == shape and mask.dtype == np.uint8, name
        assert set(np.unique(mask)) == {0, 255}, name
        assert _png(study_run["out"] / "overlays" / f"{name}.png").shape == (*shape, 3), name


def test_dicom_seg_references_its_source_and_holds_the_mask(study_run: dict) -> None:
    for source in (DICOM_J2K_MONO1, DICOM_JPEG_SIIM):
        header = pydicom.dcmread(source, stop_before_pixels=True)
        name = str(header.SOPInstanceUID)
        seg = hd.seg.segread(study_run["out"] / "dicomseg" / f"{name}.dcm")
        assert (seg.Rows, seg.Columns) == (header.Rows, header.Columns)
        assert seg.StudyInstanceUID == header.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == header.SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == name
        assert seg.get_segment_description(1).segment_label == "Lung"
        pixels = seg.get_pixels_by_source_instance([name], segment_numbers=[1])[0, :, :, 0]
        np.testing.assert_array_equal(pixels * 255, _png(study_run["out"] / "masks" / f"{name}.png"))
    assert not (study_run["out"] / "dicomseg" / f"{PNG_NAMES[1]}.dcm").exists()  # PNG: no SEG


def test_nifti_carries_spacing_and_measurements_add_up(study_run: dict) -> None:
    out = study_run["out"]
    siim = _uid(DICOM_JPEG_SIIM)
    assert nib.load(out / "nifti" / f"{siim}.nii.gz").header.get_zooms() == (np.float32(0.168), np.float32(0.168))
    with open(out / "measurements.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(study_run["sources"])
    for name, row in rows.items():
        lung = int(np.count_nonzero(_png(out / "masks" / f"{name}.png")))
        assert int(row["lung_area_px"]) == lung > 0
        assert int(row["right_lung_area_px"]) + int(row["left_lung_area_px"]) == lung
    assert float(rows[siim]["lung_area_cm2"]) == pytest.approx(
        int(rows[siim]["lung_area_px"]) * 0.168**2 / 100, abs=1e-3
    )
    assert rows[_uid(DICOM_J2K_MONO1)]["lung_area_cm2"] == ""  # its PixelSpacing is 0: unknown
    assert rows[PNG_NAMES[1]]["lung_area_cm2"] == ""


def test_bad_file_in_a_batch_fails_alone_and_existing_outputs_are_kept(
    segmenting_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in PNG_NAMES:
        shutil.copy(SAMPLE_DATA / "images" / f"{name}.png", folder)
    good = (SAMPLE_DATA / "images" / f"{PNG_NAMES[0]}.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 3])  # truncated mid-stream
    out = folder  # outputs inside the input folder: a rerun must not take its own masks as inputs
    model = tmp_path / "models" / "model.pt"  # a copy whose time stamp this test changes
    model.parent.mkdir()
    for name in ("model.pt", "model.json"):
        shutil.copy2(segmenting_bundle / "models" / name, model.parent)
    args = ["infer", str(folder), "-o", str(out), "--model", str(model),
            "--formats", "mask,measurements", "--batch-size", "4", "--no-progress"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="lungseg_monai"):
        assert main(args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(folder / "broken.png") in m and "pixel data cannot be decoded" in m for m in errors), errors
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(PNG_NAMES)
    with open(out / "measurements.csv", newline="") as f:
        assert sorted(r["name"] for r in csv.DictReader(f)) == sorted(PNG_NAMES)

    mtimes = {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lungseg_monai"):
        assert main(args) == 1  # the broken file still fails; the others are already done
    assert "0 segmented, 0 rejected, 3 already done, 0 skipped, 1 failed" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == mtimes

    # Decided by content, not time stamps: a touched image is kept, an image replaced by another is redone.
    later = time.time() + 10
    os.utime(folder / f"{PNG_NAMES[0]}.png", (later, later))
    os.utime(model, (later, later))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lungseg_monai"):
        assert main(args) == 1
    assert "0 segmented, 0 rejected, 3 already done, 0 skipped, 1 failed" in caplog.text
    shutil.copy(SAMPLE_DATA / "images" / f"{PNG_NAMES[1]}.png", folder / f"{PNG_NAMES[0]}.png")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lungseg_monai"):
        assert main(args) == 1
    assert "1 segmented, 0 rejected, 2 already done, 0 skipped, 1 failed" in caplog.text
    assert _png(out / "masks" / f"{PNG_NAMES[0]}.png").shape == _png(out / "masks" / f"{PNG_NAMES[1]}.png").shape
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}

    (folder / "broken.png").unlink()
    assert main([*args, "--overwrite"]) == 0
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in mtimes)


def _infer(model: Path, inputs: list[Path], out: Path, *extra: str) -> tuple[int, list[logging.LogRecord]]:
    """``lungseg infer`` on ``inputs`` (masks, overlays, measurements): (exit code, the log records)."""
    args = ["infer", *map(str, inputs), "-o", str(out), "--model", str(model),
            "--formats", "mask,overlay,measurements", "--no-progress", *extra]  # fmt: skip
    return _run_logged(args)


def test_one_pixel_and_uniform_pngs_are_rejected_and_the_real_one_segmented_synthetic(
    segmenting_bundle: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE_DATA / "images" / f"{PNG_NAMES[0]}.png", folder)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "one_pixel.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / "uniform.png")
    out = tmp_path / "out"
    code, records = _infer(segmenting_bundle / "models" / "model.pt", [folder], out)
    assert code == 0  # a rejection is not a failure
    messages = {r.getMessage(): r.levelno for r in records}
    assert messages[f"rejected '{folder / 'one_pixel.png'}': "
                    "1x1 px is too small for a radiograph (the shorter side must be at least 64 px); "
                    "constant image (every pixel is 0): nothing to segment"] == logging.WARNING  # fmt: skip
    assert messages[f"rejected '{folder / 'uniform.png'}': "
                    "8x8 px is too small for a radiograph (the shorter side must be at least 64 px); "
                    "constant image (every pixel is 128): nothing to segment"] == logging.WARNING  # fmt: skip
    assert any(m.startswith("1 segmented, 2 rejected, 0 already done, 0 skipped, 0 failed") for m in messages)
    assert [p.name for p in (out / "masks").iterdir()] == [f"{PNG_NAMES[0]}.png"]
    assert [p.name for p in (out / "overlays").iterdir()] == [f"{PNG_NAMES[0]}.png"]
    with open(out / "measurements.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    # Every input read has a row: the refused ones with their verdict and no areas.
    assert sorted(rows) == sorted([PNG_NAMES[0], "one_pixel", "uniform"])
    assert rows["one_pixel"]["qc_status"] == "reject" and rows["one_pixel"]["lung_area_px"] == ""
    assert rows["uniform"]["qc_reasons"].startswith("8x8 px is too small for a radiograph")
    assert rows[PNG_NAMES[0]]["qc_status"] in ("pass", "review", "reject") and int(rows[PNG_NAMES[0]]["rows"]) > 0


def test_a_run_where_every_input_is_rejected_says_so(segmenting_bundle: Path, tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "uniform.png")
    code, records = _infer(segmenting_bundle / "models" / "model.pt", [tmp_path / "uniform.png"], tmp_path / "out")
    assert code == 0
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert "nothing was segmented: every input was rejected, skipped or failed (reasons below)" in warnings
    assert not (tmp_path / "out" / "masks").exists()


def test_dicoms_whose_header_names_panoramic_hand_or_skull_are_skipped_unless_no_header_check(
    segmenting_bundle: Path, tmp_path: Path
) -> None:
    files = write_non_chest_copies(DICOM_JPEG_SIIM, tmp_path / "in")
    model = segmenting_bundle / "models" / "model.pt"
    code, records = _infer(model, [tmp_path / "in"], tmp_path / "checked")
    assert code == 0
    messages = [r.getMessage() for r in records]
    assert f"skipped '{files['panoramic']}': StudyDescription 'OPG PANORAMIC' names OPG, not the chest" in messages
    assert f"skipped '{files['hand']}': BodyPartExamined 'HAND' names HAND, not the chest" in messages
    assert f"skipped '{files['skull']}': BodyPartExamined 'SKULL' names SKULL, not the chest" in messages
    assert any(m.startswith("0 segmented, 0 rejected, 0 already done, 3 skipped, 0 failed") for m in messages)
    assert not (tmp_path / "checked" / "masks").exists()

    code, records = _infer(model, [tmp_path / "in"], tmp_path / "unchecked", "--no-header-check")
    assert code == 0
    names = sorted(p.stem for p in (tmp_path / "unchecked" / "masks").iterdir())
    assert names == sorted(_uid(path) for path in files.values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--formats", "mask,jpeg"],
            "unknown output format(s) ['jpeg']; choose from mask, overlay, nifti, dicomseg, dicomsr, dicomsc, "
            "measurements",
        ),
        (["--keep-components", "0"], "num_components must be a positive integer or None (keep all), got 0"),
    ],
)
def test_bad_options_exit_1_with_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: list[str], message: str
) -> None:
    args = ["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m.pt"), *extra]
    with caplog.at_level(logging.ERROR, logger="lungseg_monai"):
        assert main(args) == 1
    assert message in caplog.text


def test_missing_model_and_empty_input_exit_1(segmenting_bundle: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="lungseg_monai"):
        assert main(["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m.pt")]) == 1
        assert f"model '{tmp_path / 'm.pt'}' does not exist" in caplog.text
        model = str(segmenting_bundle / "models" / "model.pt")
        assert main(["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--model", model, "--no-progress"]) == 1
    assert f"no radiographs found in '{tmp_path}'" in caplog.text


def test_from_list_segments_the_listed_films(tmp_path: Path, segmenting_bundle: Path) -> None:
    films = [SAMPLE_DATA / "images" / f"{name}.png" for name in PNG_NAMES[:2]]
    listing = tmp_path / "archive.csv"
    listing.write_text("path,patient\n" + "".join(f"{f},p{i}\n" for i, f in enumerate(films)))
    model = str(segmenting_bundle / "models" / "model.pt")
    assert main(["infer", "--from-list", str(listing), "-o", str(tmp_path / "out"), "--model", model, "--no-progress"]) == 0
    assert sorted(p.stem for p in (tmp_path / "out" / "masks").iterdir()) == sorted(PNG_NAMES[:2])
    assert main(["infer", "--from-list", str(tmp_path / "none.txt"), "-o", str(tmp_path / "o2"), "--model", model]) == 1
