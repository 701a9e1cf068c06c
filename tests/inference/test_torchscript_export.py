"""TorchScript export with MONAI's ckpt_export, and the exported model giving the checkpoint's masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import METADATA, SAMPLE_DATA, TRAIN_CONFIG, run_bundle
from monai.bundle import ckpt_export
from PIL import Image

from lungseg_monai.engine.checkpoint import CheckpointError
from lungseg_monai.inference import LungSegmenter, is_torchscript_file, read_model_card, segment_files
from lungseg_monai.io import read_radiograph

IMAGES = [SAMPLE_DATA / "images" / f"{name}.png" for name in ("1052b0fe", "41182_2020_203_Fig3_HTML")]


@pytest.fixture(scope="module")
def exported(segmenting_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model.ts from the documented command (beside model.json), and one that carries model.json inside."""
    models = segmenting_bundle / "models"
    beside = models / "model.ts"
    if not beside.exists():
        run_bundle(
            "ckpt_export", "network_def",
            "--filepath", str(beside),
            "--ckpt_file", str(models / "model.pt"),
            "--meta_file", str(METADATA),
            "--config_file", str(TRAIN_CONFIG),
        )  # fmt: skip
    alone = tmp_path_factory.mktemp("alone") / "lungs.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(alone),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(METADATA),
        config_file=[str(TRAIN_CONFIG), str(models / "model.json")],
    )
    return {"pt": models / "model.pt", "beside": beside, "alone": alone}


def test_model_card_comes_from_the_torchscript_file_or_the_json_beside_it(exported: dict[str, Path]) -> None:
    for variant in ("beside", "alone"):
        assert is_torchscript_file(exported[variant]), variant
        # Trained at 64 px: from model.json (inside or beside), not from train.json's default of 128.
        assert read_model_card(exported[variant]) == read_model_card(exported["pt"]), variant
    assert read_model_card(exported["pt"])["image_size"] == 64
    assert not is_torchscript_file(exported["pt"])


def test_torchscript_gives_the_checkpoints_probabilities_and_lungseg_infer_masks(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    # fp32: under bf16 the checkpoint keeps its high-resolution stages in fp32, which TorchScript cannot.
    checkpoint = LungSegmenter.from_model(exported["pt"], device="cpu", precision="fp32")
    scripted = LungSegmenter.from_model(exported["alone"], device="cpu", precision="fp32")
    assert isinstance(scripted.network, torch.jit.ScriptModule)
    radiographs = [read_radiograph(p) for p in IMAGES]
    batch = torch.stack([checkpoint.prepare(rg) for rg in radiographs])
    torch.testing.assert_close(scripted.forward(batch), checkpoint.forward(batch), rtol=0, atol=0)
    # lungseg infer with the TorchScript model (one batch, like segment_batch) writes the checkpoint's masks.
    summary = segment_files(IMAGES, tmp_path, scripted, formats="mask", progress=False)
    assert summary.ok and len(summary.segmented) == len(IMAGES)
    for image, want in zip(IMAGES, checkpoint.segment_batch(radiographs)):
        assert 0 < want.mean() < 1  # not a trivial mask
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "masks" / image.name)), want * 255)


def test_torchscript_without_any_model_card_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.load(str(exported["beside"])), str(bare))  # drops ckpt_export's extra files
    with pytest.raises(CheckpointError, match="cannot tell the image size"):
        read_model_card(bare)


def test_torchscript_of_another_backbone_than_its_card_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "model.ts"
    shutil.copy(exported["beside"], target)
    (tmp_path / "model.json").write_text('{"backbone": "vgg16", "image_size": 64}')
    with pytest.raises(CheckpointError, match="holds a resnet50 LungUNet but its model card says vgg16"):
        LungSegmenter.from_model(target, device="cpu")
