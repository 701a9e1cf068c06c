"""The bundle trains in bf16 (``--precision bf16``) and its model.pt is a plain LungUNet state dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_DATA, TRAIN_CONFIG, run_bundle

from lungseg_monai.inference import LungSegmenter
from lungseg_monai.io.checkpoint import load_checkpoint
from lungseg_monai.networks import LungUNet


@pytest.fixture(scope="module")
def bf16_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 epoch at 64 px on the embedded sample data, bf16 autocast + channels-last (emulated on CPUs without bf16)."""
    root = tmp_path_factory.mktemp("bf16_bundle")
    proc = run_bundle(
        "run", "training",
        "--config_file", str(TRAIN_CONFIG),
        "--bundle_root", str(root),
        "--dataset_dir", str(SAMPLE_DATA),
        "--image_size", "64",
        "--max_epochs", "1",
        "--batch_size", "6",
        "--precision", "bf16",
    )  # fmt: skip
    (root / "train.log").write_text(proc.stdout + proc.stderr)
    return root


def test_bf16_training_logs_its_precision_and_saves_a_plain_lungunet_state_dict(bf16_bundle: Path) -> None:
    assert "precision bf16 on cpu: bf16 autocast + channels_last" in (bf16_bundle / "train.log").read_text()
    state = load_checkpoint(bf16_bundle / "models" / "model.pt")
    plain = LungUNet(backbone="resnet50")
    assert list(state) == list(plain.state_dict())  # no wrapper prefix on any key
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    plain.load_state_dict(state)
    assert json.loads((bf16_bundle / "models" / "model.json").read_text())["image_size"] == 64


def test_bf16_trained_model_loads_in_the_segmenter_and_runs_in_fp32(bf16_bundle: Path) -> None:
    segmenter = LungSegmenter.from_model(bf16_bundle / "models" / "model.pt", device="cpu", precision="fp32")
    probabilities = segmenter.forward(torch.zeros(1, 1, 64, 64))
    assert segmenter.settings()["precision"] == "fp32"
    assert probabilities.shape == (1, 1, 64, 64) and probabilities.dtype == torch.float32
