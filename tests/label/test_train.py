"""Fine-tuning parameters, label checks and splits of the MONAI Label train task (no training here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")

from conftest import REPO_ROOT, SAMPLE_DATA, TRAIN_CONFIG  # noqa: E402
from PIL import Image  # noqa: E402

from lungseg_monai.label.errors import BadRequestError  # noqa: E402
from lungseg_monai.label.train import TRAIN_DEFAULTS, find_train_config, split_labelled, train_params, usable_pairs  # noqa: E402


def test_train_params_defaults_and_conversion() -> None:
    assert train_params({}) == TRAIN_DEFAULTS
    params = train_params({"max_epochs": "3", "learning_rate": "0.001", "image_size": 64, "model": "ignored"})
    assert (params["max_epochs"], params["learning_rate"], params["image_size"]) == (3, 0.001, 64)


@pytest.mark.parametrize(
    ("request_params", "message"),
    [
        ({"max_epochs": "many"}, "train parameter 'max_epochs' must be a int, got 'many'"),
        (
            {"max_epochs": 0, "batch_size": 0},
            "max_epochs must be at least 1, got 0; batch_size must be at least 1, got 0",
        ),
        ({"image_size": 100}, "image_size must be 0 (the model's own) or a multiple of 32, got 100"),
        ({"val_fraction": 1.0}, "val_fraction must be in [0, 1), got 1.0"),
        ({"learning_rate": -1}, "learning_rate must be positive, got -1.0"),
    ],
)
def test_train_params_refuses_bad_values(request_params: dict, message: str) -> None:
    with pytest.raises(BadRequestError) as info:
        train_params(request_params)
    assert info.value.detail == message


def _items(n: int) -> list[dict[str, str]]:
    return [{"image": f"/s/{i}.png", "label": f"/s/labels/{i}.png", "name": str(i)} for i in range(n)]


def test_split_labelled_holds_out_a_fraction() -> None:
    splits = split_labelled(_items(5), val_fraction=0.2, seed=0)
    train, val = {i["name"] for i in splits["training"]}, {i["name"] for i in splits["validation"]}
    assert (len(train), len(val)) == (4, 1)
    assert not train & val and train | val == {str(i) for i in range(5)}


def test_split_labelled_validates_on_training_labels_when_too_few() -> None:
    splits = split_labelled(_items(2), val_fraction=0.2, seed=0)
    assert splits["training"] == splits["validation"] == _items(2)


def test_usable_pairs_skips_unreadable_and_mismatched_labels_real_image(tmp_path: Path) -> None:
    image = SAMPLE_DATA / "images" / "1052b0fe.png"
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    Image.fromarray(np.ones((10, 12), np.uint8)).save(tmp_path / "small.png")
    items = [
        {"image": str(image), "label": str(SAMPLE_DATA / "masks" / "1052b0fe.png")},
        {"image": str(image), "label": str(tmp_path / "garbage.png")},
        {"image": str(image), "label": str(tmp_path / "small.png")},
    ]
    good, skipped = usable_pairs(items)
    assert good == [{**items[0], "name": "1052b0fe"}]
    assert len(skipped) == 2
    assert skipped[0].startswith(f"cannot read '{tmp_path / 'garbage.png'}'")
    assert skipped[1].endswith(
        f"mask '{tmp_path / 'small.png'}' is 12x10 but image '{image}' is 512x512; masks must match their image"
    )


def test_find_train_config_prefers_explicit_then_the_models_bundle_then_the_repo(tmp_path: Path) -> None:
    assert find_train_config("/x/train.json", tmp_path / "model.pt") == Path("/x/train.json")
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    shutil.copyfile(TRAIN_CONFIG, bundle / "configs" / "train.json")
    assert find_train_config(None, bundle / "models" / "model.pt") == bundle / "configs" / "train.json"
    assert (
        find_train_config(None, tmp_path / "elsewhere" / "model.pt")
        == REPO_ROOT / "bundles" / "lung_cxr_segmentation" / "configs" / "train.json"
    )
