"""The bundle's configs/inference.json (merged with train.json) gives the masks ``lungseg infer`` gives.

Compared in fp32: bf16 kernels (oneDNN) round differently with the number of threads, and the
test model's probabilities all lie within 0.016 of its threshold, so a 2e-4 difference between
a 1- and a 2-thread process already flips 0.4% of its pixels (measured; fp32: 6e-8, none).
A trained model has few pixels that close to its threshold (bf16 vs fp32 agreement, BENCHMARKS.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import (
    DICOM_JPEG_SIIM,
    INFERENCE_CONFIG,
    SAMPLE_DATA,
    TRAIN_CONFIG,
    config_list,
    run_bundle,
)
from PIL import Image

from lungseg_monai.inference import segment_files


def test_bundle_inference_on_png_and_dicom_folder_matches_lungseg_infer(
    segmenting_bundle: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("1052b0fe", "41182_2020_203_Fig3_HTML"):
        shutil.copy(SAMPLE_DATA / "images" / f"{name}.png", folder)
    shutil.copy(DICOM_JPEG_SIIM, folder / "IM0001")  # suffix-less DICOM, as archives deliver them
    run_bundle(
        "run",
        "--config_file", config_list(TRAIN_CONFIG, INFERENCE_CONFIG),
        "--bundle_root", str(segmenting_bundle),
        "--dataset_dir", str(folder),
        "--precision", "fp32",
    )  # fmt: skip
    bundle_masks = segmenting_bundle / "predictions" / "masks"
    summary = segment_files(
        [folder], tmp_path / "cli", segmenting_bundle / "models" / "model.pt",
        formats="mask", batch_size=1, device="cpu", precision="fp32", progress=False,
    )  # fmt: skip
    assert summary.ok
    names = sorted(p.name for p in (tmp_path / "cli" / "masks").iterdir())
    assert sorted(p.name for p in bundle_masks.iterdir()) == names
    assert "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.png" in names  # DICOM named by SOPInstanceUID
    for name in names:
        from_bundle = np.asarray(Image.open(bundle_masks / name))
        from_cli = np.asarray(Image.open(tmp_path / "cli" / "masks" / name))
        assert 0 < (from_cli == 255).mean() < 1, name
        np.testing.assert_array_equal(from_bundle, from_cli, err_msg=name)


def test_bundle_inference_without_a_trained_model_uses_the_shipped_one(tmp_path: Path) -> None:
    """A fresh install: the bundle's inference.json runs before any training, on the shipped vgg16."""
    proc = run_bundle(
        "run",
        "--config_file", config_list(TRAIN_CONFIG, INFERENCE_CONFIG),
        "--bundle_root", str(tmp_path / "bundle"),
        "--dataset_dir", str(SAMPLE_DATA / "dicom"),
    )  # fmt: skip
    assert "using the shipped vgg16 model" in proc.stdout + proc.stderr
    masks = sorted((tmp_path / "bundle" / "predictions" / "masks").iterdir())
    assert len(masks) == 2
    for mask in masks:
        assert 0.15 < (np.asarray(Image.open(mask)) == 255).mean() < 0.5, mask.name
