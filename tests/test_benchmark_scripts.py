"""The benchmark scripts in scripts/ run in their tiny modes (benchmarks are scripts, not tests).

These keep ``benchmark_quality.py`` and ``benchmark_speed.py`` from rotting; the numbers they
produce for BENCHMARKS.md come from their full runs, not from here.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lungseg_monai.io import read_radiograph
from conftest import REPO_ROOT, SAMPLE_DATA

sys.path.insert(0, str(REPO_ROOT / "scripts"))
benchmark_quality = importlib.import_module("benchmark_quality")
benchmark_speed = importlib.import_module("benchmark_speed")
resize_ceiling = importlib.import_module("resize_ceiling")
pseudo_labels = importlib.import_module("pseudo_labels")


def test_quality_override_without_equals_is_rejected_with_the_received_value():
    with pytest.raises(ValueError, match=r"--override expects KEY=VALUE \(e.g. image_size=128\), got 'image_size'"):
        benchmark_quality.parse_overrides(["image_size"])
    assert benchmark_quality.parse_overrides(["image_size=128", "max_epochs=3"]) == [
        "--image_size", "128", "--max_epochs", "3",
    ]  # fmt: skip


def test_quality_display_command_is_relative_and_quotes_the_config_list():
    cmd = benchmark_quality.bundle_command(
        "training", [benchmark_quality.TRAIN_CONFIG, benchmark_quality.RECIPE_CONFIG], SAMPLE_DATA, "vgg16", Path("/tmp/b"), []
    )
    shown = benchmark_quality.display_command(cmd)
    assert shown.startswith(
        "python -m monai.bundle run training --config_file "
        "\"['bundles/lung_cxr_segmentation/configs/train.json','bundles/lung_cxr_segmentation/configs/cpu_recipe.json']\""
    )
    assert "--backbone vgg16 --bundle_root /tmp/b" in shown


def test_quality_quick_evaluates_a_trained_bundle_and_appends_its_numbers(trained_bundle: Path, tmp_path: Path):
    work = tmp_path / "work"
    shutil.copytree(trained_bundle / "models", work / "resnet50" / "models")
    report = tmp_path / "BENCHMARKS.md"
    code = benchmark_quality.main(
        ["--quick", "--skip_training", "--cli", "--backbone", "resnet50", "--work_dir", str(work), "--report", str(report)]
    )
    assert code == 0
    summary = json.loads((work / "resnet50" / "eval" / "summary.json").read_text())
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\n### Quality: resnet50 U-Net (")
    assert f"| Dice | {summary['dice']['mean']:.4f} | {summary['dice']['median']:.4f} | {summary['dice']['min']:.4f} |" in text
    assert f"Test split: {summary['n_images']} images of `bundles/lung_cxr_segmentation/sample_data`" in text
    # --cli: `lungseg infer` wrote one mask per test image and its Dice is reported
    assert len(list((work / "resnet50" / "cli_test" / "masks").glob("*.png"))) == summary["n_images"]
    assert re.search(r"- Through `lungseg infer` .* Dice mean \d\.\d{4}, median \d\.\d{4}, min \d\.\d{4}", text)


def test_quality_skip_training_without_a_model_fails_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture):
    code = benchmark_quality.main(["--quick", "--skip_training", "--backbone", "vgg16", "--work_dir", str(tmp_path)])
    assert code == 1
    assert f"--skip_training needs a trained model at '{tmp_path / 'vgg16' / 'models' / 'model.pt'}'" in capsys.readouterr().err


def test_speed_quick_model_and_training_parts_report_every_network(tmp_path: Path):
    report = tmp_path / "speed.md"
    assert benchmark_speed.main(["--quick", "--parts", "model,train", "--threads", "1", "--report", str(report)]) == 0
    text = report.read_text()
    for name in ("ours resnet50", "ours vgg16", "monai FlexibleUNet-resnet50", "smp Unet-resnet50", "smp Unet-vgg16"):
        assert re.search(rf"\| {name} @32 \| \d+\.\d\d \| \d+\.\d\dx \|", text), name
        assert re.search(rf"\| {name} \| \d+\.\d\d \| \d+\.\d\dx \|", text), name
    assert "| smp Unet-resnet50 @32 |" in text and re.search(r"\| smp Unet-resnet50 @32 \| [\d.]+ \| 1\.00x \|", text)
    assert "Bundle training data pipeline" in text


def test_speed_unknown_part_is_rejected(capsys: pytest.CaptureFixture):
    assert benchmark_speed.main(["--quick", "--parts", "model,gpu"]) == 2
    assert "--parts takes a comma-separated subset of model,train,e2e,memory, got 'model,gpu'" in capsys.readouterr().err


def test_speed_large_dicom_is_uncompressed_and_reads_back_at_the_requested_size(tmp_path: Path):
    path = benchmark_speed.write_large_dicom(tmp_path / "large.dcm", 320)
    rg = read_radiograph(path)
    assert rg.shape == (320, 320)
    assert float(rg.pixels.std()) > 0  # real radiograph content, not a constant image
    import pydicom

    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_speed_peak_rss_is_the_commands_own_not_the_benchmarks():
    # 300 MB allocated by the child; the benchmark process itself holds torch (several hundred MB).
    run = benchmark_speed.run_measured([sys.executable, "-S", "-c", "b = bytearray(300 * 1024 * 1024)"], {})
    assert 300 <= run.peak_rss_mb < 400


def test_speed_segment_folder_writes_one_mask_per_image_at_its_size(trained_bundle: Path, tmp_path: Path):
    inputs = benchmark_speed.write_png_folder(tmp_path / "in", 2, 96)
    (inputs / "broken.png").write_bytes(b"not a png")
    code = benchmark_speed.segment_folder(inputs, tmp_path / "out", trained_bundle / "models" / "model.pt")
    assert code == 1  # the broken file is reported, the others are still segmented
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == 2
    for mask in masks:
        pixels = read_radiograph(mask).pixels
        assert pixels.shape == (96, 96)
        assert set(np.unique(pixels)) <= {0.0, 255.0}


def test_speed_rss_at_takes_the_first_sample_at_or_after_the_fraction():
    samples = [(1.0, 500.0), (5.0, 900.0), (9.0, 910.0)]
    assert benchmark_speed.rss_at(samples, 0.4, 10.0) == 900.0
    assert benchmark_speed.rss_at(samples, 0.95, 10.0) == 910.0  # none that late: the last sample


def test_resize_ceiling_is_perfect_at_full_size_and_lower_when_shrunk(capsys: pytest.CaptureFixture) -> None:
    mask = (read_radiograph(SAMPLE_DATA / "masks" / "1052b0fe.png").pixels > 0).astype(np.uint8)
    assert mask.shape == (512, 512) and resize_ceiling.round_trip_dice(mask, 512) == (1.0, 1.0)
    soft, binary = resize_ceiling.round_trip_dice(mask, 32)
    assert 0.9 < binary < soft < 1.0
    resize_ceiling.main([str(SAMPLE_DATA / "masks"), "--sizes", "64", "--every", "12"])
    out = capsys.readouterr().out
    assert out.startswith("3 masks from ") and re.search(r"^\| 64 \| 0\.9\d{3} \|", out, re.M), out


def test_pseudo_labels_extend_only_the_training_part_with_films_whose_licence_and_patient_allow_it(
    trained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A small archive of real sample films: Actualmed's and a labelled patient's films are left out; the
    teacher's masks of the rest join the training part; validation and test stay the labelled split's."""
    from lungseg_monai.data import prepare_splits

    archive = tmp_path / "archive"
    (archive / "images").mkdir(parents=True)
    films = sorted((SAMPLE_DATA / "images").glob("*.png"))[:5]
    rows = ["name,source,license,patient,cxr_lung_patient"]
    for n, film in enumerate(films):
        shutil.copy(film, archive / "images" / film.name)
        source, licence, labelled_patient = [
            ("actualmed", "", ""), ("nih_cxr8", "CC0", "17"), ("nih_cxr8", "CC0", ""), ("hannover", "CC BY 3.0", "")
        ][min(n, 3)]
        rows.append(f"{film.name},{source},{licence},p{n},{labelled_patient}")
    (archive / "manifest.csv").write_text("\n".join(rows) + "\n")
    split = trained_bundle / "models" / "datalist_split.json"
    code = pseudo_labels.main(
        ["--teacher", str(trained_bundle / "models" / "model.pt"), "--split", str(split), "--unlabelled",
         str(archive), "--out", str(tmp_path / "out"), "--keep", "pass", "--keep", "review", "--keep", "reject",
         "--keep", "unavailable"]
    )  # fmt: skip
    assert code == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    labelled = json.loads(split.read_text())
    assert datalist["pseudo_labels"]["left_out"] == {
        "source actualmed (licence: none stated)": 1,
        "patient also in the labelled set": 1,
    }
    pseudo = datalist["training"][len(labelled["training"]) :]
    assert datalist["training"][: len(labelled["training"])] == labelled["training"]
    assert sorted(Path(p["image"]).name for p in pseudo) == sorted(f.name for f in films[2:])
    assert all(Path(p["label"]).is_file() and p["group"].startswith("p") for p in pseudo)
    assert (datalist["validation"], datalist["test"]) == (labelled["validation"], labelled["test"])
    student = prepare_splits(tmp_path / "out" / "datalist.json", tmp_path / "student_split.json", check_files=False)
    assert [len(student[p]) for p in ("training", "validation", "test")] == [
        len(labelled["training"]) + 3, len(labelled["validation"]), len(labelled["test"])
    ]  # fmt: skip
    assert "3 kept as pseudo-labels" in capsys.readouterr().out
