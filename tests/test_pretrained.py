"""The shipped model: found by name, used when no model is given, calibrated for its own weights, never trained over."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE_DIR, DICOM_JPEG_SIIM, SAMPLE_DATA
from PIL import Image

from lungseg_monai.cli import main
from lungseg_monai.engine.checkpoint import NetworkLoader
from lungseg_monai.inference import LungSegmenter
from lungseg_monai.io import read_mask, read_radiograph
from lungseg_monai.io.checkpoint import CheckpointError, load_checkpoint
from lungseg_monai.networks import LungUNet
from lungseg_monai.pretrained import (
    DEFAULT_MODEL,
    PRETRAINED_DIR,
    refuse_shipped_dir,
    resolve_model,
    shipped_models,
    trained_or_default,
)
from lungseg_monai.modelcards.card import CARD_BEGIN, CARD_END, render_card
from lungseg_monai.qc.mask import dice

SHIPPED = PRETRAINED_DIR / DEFAULT_MODEL / "model.pt"


def test_names_resolve_to_shipped_files_and_paths_stay_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model(None) == resolve_model("vgg16") == SHIPPED
    assert shipped_models()["vgg16"] == SHIPPED
    assert resolve_model("runs/x/model.pt") == Path("runs/x/model.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vgg16").write_bytes(b"")  # a file called like a shipped model: the path wins
    assert resolve_model("vgg16") == Path("vgg16")
    if "resnet50" not in shipped_models():
        with pytest.raises(CheckpointError, match="'resnet50' model is not shipped.*shipped: vgg16"):
            resolve_model("resnet50")


def test_shipped_weights_are_fp16_safe_to_load_and_their_qc_is_bound_to_them() -> None:
    state = load_checkpoint(SHIPPED)  # weights_only
    floats = {k: v.dtype for k, v in state.items() if v.is_floating_point()}
    assert {d for k, d in floats.items() if not k.endswith(("running_mean", "running_var"))} == {torch.float16}
    assert SHIPPED.stat().st_size < 40 * 2**20
    segmenter = LungSegmenter.from_model("vgg16", device="cpu")
    assert segmenter.card["backbone"] == "vgg16"
    assert segmenter.qc is not None, segmenter.qc_unavailable_reason  # calibrated for exactly these weights
    about = segmenter.card["about"]
    fitted = segmenter.card["qc"]["validation"]
    assert fitted["n_validation"] >= 30 and about["test"]["films"] == fitted["n_validation"]
    assert about["test"]["fp16_agreement_mean"] >= 0.999


def test_infer_without_model_writes_mask_overlay_and_a_passing_verdict(tmp_path: Path) -> None:
    """A new user's first command: a shipped sample film, no --model."""
    film = SAMPLE_DATA / "images" / "1052b0fe.png"
    assert main(["infer", str(film), str(DICOM_JPEG_SIIM), "-o", str(tmp_path), "--no-progress"]) == 0
    mask = np.asarray(Image.open(tmp_path / "masks" / "1052b0fe.png")) > 0
    assert (tmp_path / "overlays" / "1052b0fe.png").is_file()
    assert dice(mask, read_mask(SAMPLE_DATA / "masks" / "1052b0fe.png").pixels) > 0.93
    with open(tmp_path / "measurements.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert {row["qc_status"] for row in rows.values()} == {"pass"}, rows
    siim = [row for name, row in rows.items() if name != "1052b0fe"][0]
    fraction = float(siim["lung_area_px"]) / (int(siim["rows"]) * int(siim["columns"]))
    assert 0.15 < fraction < 0.5 and float(siim["lung_area_cm2"]) > 0  # from the DICOM's pixel spacing


def test_shipped_model_segments_the_sample_films_well() -> None:
    """The 36 sample films (some of them were among its training films; the held-out figures are in its card)."""
    segmenter = LungSegmenter.from_model(None, device="cpu")
    scores = []
    for image in sorted((SAMPLE_DATA / "images").glob("*.png")):
        mask = segmenter.segment(read_radiograph(image))
        scores.append(dice(mask, read_mask(SAMPLE_DATA / "masks" / image.name).pixels))
    assert np.mean(scores) > 0.94 and min(scores) > 0.80


def test_training_never_writes_into_the_shipped_models_and_can_start_from_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never writes over them"):
        refuse_shipped_dir(PRETRAINED_DIR / "vgg16")
    assert refuse_shipped_dir(tmp_path / "models") == str(tmp_path / "models")
    network = LungUNet(backbone="vgg16")
    NetworkLoader("vgg16", network)(None)  # --init_weights vgg16
    shipped = load_checkpoint(SHIPPED)
    key = next(k for k, v in shipped.items() if v.dtype == torch.float16)
    assert torch.equal(network.state_dict()[key], shipped[key].float())
    assert trained_or_default(tmp_path / "models" / "model.pt") == str(SHIPPED)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    assert trained_or_default(tmp_path / "models" / "model.pt") == str(tmp_path / "models" / "model.pt")


def test_models_command_lists_the_default_and_prints_its_card(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "vgg16" and rows[0]["qc"] == "calibrated" and rows[0]["test_dice_mean"] > 0.95
    assert main(["models", "--card", "vgg16"]) == 0
    card = capsys.readouterr().out
    for heading in ("Architecture", "Training data", "Test", "Quality control", "Known failure modes", "Intended use",
                    "Fine-tuning", "Not a medical device"):  # fmt: skip
        assert heading in card
    assert main(["models", "--card", "resnet50"]) == (0 if "resnet50" in shipped_models() else 2)
    assert main(["models", "/nonexistent/model.pt"]) == 2


def test_bundle_docs_carry_the_card_of_the_shipped_model() -> None:
    text = (BUNDLE_DIR / "docs" / "README.md").read_text()
    begin = CARD_BEGIN.format(name="vgg16")
    found = re.search(re.escape(begin) + r"\n(.*?)\n" + re.escape(CARD_END), text, re.S)
    assert found, "run scripts/ship_model.py (it writes the card into the bundle's docs/README.md)"
    assert found.group(1) == render_card("vgg16")
