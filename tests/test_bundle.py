"""The MONAI bundle end to end: training, evaluation at original resolution, metadata checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, EVALUATE_CONFIG, SAMPLE_DATA, TRAIN_CONFIG, config_list, run_bundle
from monai.bundle import verify_metadata, verify_net_in_out
from PIL import Image

from lungseg_monai.engine import load_checkpoint
from lungseg_monai.networks import LungUNet


def _evaluate(root: Path, *extra: str) -> dict:
    run_bundle(
        "run",
        "--config_file", config_list(TRAIN_CONFIG, EVALUATE_CONFIG),
        "--bundle_root", str(root),
        "--dataset_dir", str(SAMPLE_DATA),
        *extra,
    )  # fmt: skip
    return json.loads((root / "eval" / "summary.json").read_text())


def test_training_writes_model_card_checkpoints_split_and_tensorboard(trained_bundle: Path) -> None:
    models = trained_bundle / "models"
    state = load_checkpoint(models / "model.pt")
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict
    LungUNet(backbone="resnet50").load_state_dict(state)
    card = json.loads((models / "model.json").read_text())
    assert card["backbone"] == "resnet50" and card["image_size"] == 64
    assert 0.0 <= card["val_mean_dice"] <= 1.0 and card["epoch"] in (1, 2)
    last = load_checkpoint(models / "checkpoint_last.pt")
    assert {"network", "optimizer", "lr_scheduler", "trainer", "early_stop", "best_model", "rng"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * 3 and last["trainer"]["max_epochs"] == 2  # 18 images, batch 6
    split = json.loads((models / "datalist_split.json").read_text())
    assert [len(split[k]) for k in ("training", "validation", "test")] == [18, 9, 9]
    events = list((trained_bundle / "logs").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1000
    assert not (SAMPLE_DATA / "models").exists()  # nothing written into the dataset


def test_evaluation_reports_per_image_metrics_at_original_resolution(trained_bundle: Path) -> None:
    summary = _evaluate(trained_bundle)
    assert summary["n_images"] == 9
    with open(trained_bundle / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {"name", "dice", "iou", "hd95", "assd", "distance_unit"} <= set(rows[0])
    dices = [float(r["dice"]) for r in rows]
    assert summary["dice"]["mean"] == pytest.approx(sum(dices) / 9)
    assert len(summary["worst"]) == 5 and summary["worst"][0]["dice"] == min(dices)
    overlays = sorted((trained_bundle / "eval" / "worst").glob("*.png"))
    assert len(overlays) == 5
    worst_name = summary["worst"][0]["name"]
    with Image.open(trained_bundle / "eval" / "worst" / worst_name) as overlay, Image.open(
        SAMPLE_DATA / "images" / worst_name
    ) as image:
        assert overlay.size == image.size  # drawn at the original resolution


def test_vgg16_trains_and_evaluates_through_the_bundle(tmp_path: Path) -> None:
    run_bundle(
        "run", "training",
        "--config_file", str(TRAIN_CONFIG),
        "--bundle_root", str(tmp_path),
        "--dataset_dir", str(SAMPLE_DATA),
        "--backbone", "vgg16",
        "--image_size", "64",
        "--max_epochs", "1",
        "--batch_size", "6",
    )  # fmt: skip
    assert json.loads((tmp_path / "models" / "model.json").read_text())["backbone"] == "vgg16"
    summary = _evaluate(tmp_path, "--backbone", "vgg16", "--image_size", "64")
    assert summary["n_images"] == 9


def test_training_starts_from_init_weights_when_given(trained_bundle: Path, tmp_path: Path) -> None:
    # Learning rate 0: the convolution weights must stay exactly those of the file it started from.
    init = trained_bundle / "models" / "model.pt"
    proc = run_bundle(
        "run", "training",
        "--config_file", str(TRAIN_CONFIG),
        "--bundle_root", str(tmp_path),
        "--dataset_dir", str(SAMPLE_DATA),
        "--image_size", "64",
        "--max_epochs", "1",
        "--learning_rate", "0.0",
        "--init_weights", str(init),
    )  # fmt: skip
    assert f"loaded network weights from '{init}'" in proc.stdout + proc.stderr
    start, after = load_checkpoint(init), load_checkpoint(tmp_path / "models" / "checkpoint_last.pt")["network"]
    convs = [k for k, v in start.items() if k.endswith("weight") and v.ndim == 4]
    assert len(convs) > 50
    assert all(torch.equal(start[k], after[k]) for k in convs)


def test_metadata_verifies_offline_against_the_shipped_schema(caplog) -> None:
    caplog.set_level("INFO")
    verify_metadata(
        meta_file=str(CONFIG_DIR / "metadata.json"),
        filepath=str(CONFIG_DIR / "schema" / "meta_schema_20240725.json"),
    )
    assert "metadata is verified with no error" in caplog.text
    assert "skipped downloading" in caplog.text  # the shipped schema was used, no network


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_network_input_output_shapes_verify(backbone: str, caplog) -> None:
    caplog.set_level("INFO")
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIG_DIR / "metadata.json"),
        config_file=str(TRAIN_CONFIG),
        n=2,
        device="cpu",
        backbone=backbone,
    )
    assert "data shape of network is verified with no error" in caplog.text
