"""Which checkpoint the MONAI Label app serves, publishing fine-tuned models, reloading them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")

from lungseg_monai.label.models import BASE_MODEL_KEY, FINE_TUNED_FROM_KEY, ModelStore, ReloadingSegmenter  # noqa: E402


def _model(folder: Path, card: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"weights of " + str(folder).encode())
    (folder / "model.json").write_text(json.dumps(card or {"image_size": 64}))
    return folder / "model.pt"


def test_model_store_refuses_a_missing_initial_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model '.*missing.pt' does not exist; pass the models/model.pt"):
        ModelStore(tmp_path / "missing.pt", tmp_path / "work")


def test_model_store_serves_the_published_model_after_publish(tmp_path: Path) -> None:
    initial = _model(tmp_path / "initial")
    store = ModelStore(initial, tmp_path / "work")
    assert store.current() == initial.resolve()
    trained = _model(tmp_path / "run" / "models")
    published = store.publish(trained, fine_tuned_from=initial)
    assert published == tmp_path / "work" / "models" / "model.pt" == store.current()
    assert published.read_bytes() == trained.read_bytes()
    card = json.loads(published.with_suffix(".json").read_text())
    assert card == {
        "image_size": 64,
        BASE_MODEL_KEY: str(initial.resolve()),
        FINE_TUNED_FROM_KEY: str(initial.resolve()),
    }


def test_model_store_ignores_a_model_fine_tuned_from_another_initial_model(tmp_path: Path) -> None:
    _model(tmp_path / "work" / "models", {"image_size": 64, BASE_MODEL_KEY: "/some/other/model.pt"})
    initial = _model(tmp_path / "initial")
    assert ModelStore(initial, tmp_path / "work").current() == initial.resolve()


def test_reloading_segmenter_picks_up_a_new_model_and_survives_a_corrupt_one(
    trained_bundle: Path, tmp_path: Path
) -> None:
    initial = trained_bundle / "models" / "model.pt"
    store = ModelStore(initial, tmp_path / "work")
    reloading = ReloadingSegmenter(store, device="cpu")
    first, path = reloading.get()
    assert path == initial.resolve() and reloading.get()[0] is first  # not reloaded when unchanged

    corrupt = _model(tmp_path / "corrupt")  # model.json is fine, model.pt is not a checkpoint
    store.publish(corrupt, fine_tuned_from=initial)
    assert reloading.get() == (first, initial.resolve())  # logged, still serving the last good model

    run = tmp_path / "run" / "models"
    run.mkdir(parents=True)
    shutil.copyfile(initial, run / "model.pt")
    shutil.copyfile(initial.with_suffix(".json"), run / "model.json")
    store.publish(run / "model.pt", fine_tuned_from=initial)
    second, path = reloading.get()
    assert path == store.published and second is not first
