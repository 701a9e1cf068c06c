"""Bundle evaluation follows the model card, and scores another dataset whole without touching the split.

One model is trained here for 1 epoch at 64 px with a non-default decoder, so that evaluating it
at train.json's defaults (128 px, the default decoder) cannot pass unnoticed.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import EVALUATE_CONFIG, SAMPLE_DATA, TRAIN_CONFIG, config_list, require_shared, run_bundle
from monai.bundle import ConfigParser
from test_data import copy_smallest_shared_pairs

TRAINED_SIZE = 64
TRAINED_DECODER = [64, 32, 16, 16, 8]
CARD_THRESHOLD = 0.37  # written into a copy of the card: no config default is this value
N_EXTERNAL = 5


@pytest.fixture(scope="module")
def small_decoder_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle_root with a ResNet50 model trained 1 epoch at 64 px with decoder channels [64, 32, 16, 16, 8]."""
    root = tmp_path_factory.mktemp("small_decoder_bundle")
    run_bundle(
        "run", "training",
        "--config_file", str(TRAIN_CONFIG),
        "--bundle_root", str(root),
        "--dataset_dir", str(SAMPLE_DATA),
        "--image_size", str(TRAINED_SIZE),
        "--decoder_channels", str(TRAINED_DECODER),
        "--max_epochs", "1",
        "--batch_size", "6",
    )  # fmt: skip
    return root


def _evaluate(root: Path, output_dir: Path, *extra: str) -> list[dict[str, str]]:
    run_bundle(
        "run", "evaluating",
        "--config_file", config_list(TRAIN_CONFIG, EVALUATE_CONFIG),
        "--bundle_root", str(root),
        "--output_dir", str(output_dir),
        *extra,
    )  # fmt: skip
    with open(output_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _evaluation_parser(root: Path, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(TRAIN_CONFIG), str(EVALUATE_CONFIG)])
    parser["bundle_root"] = str(root)
    parser["dataset_dir"] = str(SAMPLE_DATA)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _with_card_threshold(trained: Path, copy: Path, threshold: float) -> Path:
    shutil.copytree(trained / "models", copy / "models")
    card_path = copy / "models" / "model.json"
    card = json.loads(card_path.read_text())
    card["threshold"] = threshold
    card_path.write_text(json.dumps(card))
    return copy


def test_evaluation_loads_and_scores_a_model_with_the_decoder_its_card_names(
    small_decoder_bundle: Path, tmp_path: Path
) -> None:
    # train.json's default decoder would not even load these weights
    rows = _evaluate(small_decoder_bundle, tmp_path / "eval", "--dataset_dir", str(SAMPLE_DATA))
    split = json.loads((small_decoder_bundle / "models" / "datalist_split.json").read_text())
    assert sorted(r["name"] for r in rows) == sorted(Path(item["image"]).name for item in split["test"])


def test_evaluation_preprocesses_at_the_card_image_size_threshold_and_network(
    small_decoder_bundle: Path, tmp_path: Path
) -> None:
    root = _with_card_threshold(small_decoder_bundle, tmp_path / "bundle", CARD_THRESHOLD)
    parser = _evaluation_parser(root)
    first = parser.get_parsed_content("evaluate#dataset")[0]
    assert tuple(first["image"].shape) == (1, TRAINED_SIZE, TRAINED_SIZE)
    assert first["label"].shape[1:] == tuple(first["image"].meta["original_shape"])  # label stays at its original size
    threshold_step = parser.get_parsed_content("evaluate#postprocessing").transforms[2]
    assert threshold_step.threshold == [CARD_THRESHOLD]
    network = parser.get_parsed_content("network_def")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    loaded = network.load_state_dict(state)  # strict: raises if a tensor's shape differs from the card's decoder
    assert not loaded.missing_keys and not loaded.unexpected_keys


def test_evaluation_command_line_value_overrides_the_card(small_decoder_bundle: Path) -> None:
    parser = _evaluation_parser(small_decoder_bundle, image_size=96, threshold=0.6)
    assert tuple(parser.get_parsed_content("evaluate#dataset")[0]["image"].shape) == (1, 96, 96)
    assert parser.get_parsed_content("evaluate#postprocessing").transforms[2].threshold == [0.6]
    assert parser.get_parsed_content("decoder_channels") == TRAINED_DECODER  # the rest still from the card


def test_evaluation_of_another_dataset_scores_every_image_and_leaves_the_split_file(
    small_decoder_bundle: Path, tmp_path: Path
) -> None:
    require_shared()
    external = tmp_path / "external"
    names = copy_smallest_shared_pairs(external, N_EXTERNAL)
    split_file = small_decoder_bundle / "models" / "datalist_split.json"
    saved = split_file.read_bytes()
    rows = _evaluate(small_decoder_bundle, tmp_path / "eval", "--dataset_dir", str(external))
    assert sorted(Path(r["name"]).stem for r in rows) == names
    assert split_file.read_bytes() == saved
