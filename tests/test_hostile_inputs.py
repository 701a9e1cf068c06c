"""End to end on a dataset that mixes real pairs with every hostile input of the corpus.

The bundle's training (twice, same seed) and evaluation run in this process on CPU (VGG16, 64 px,
one epoch), then inference goes through ``read_radiograph`` + ``LungSegmenter`` file by file. They
must finish, leave out exactly the bad pairs naming file and reason, give identical results for
the same seed, and never write the DICOMs' patient name, ID or birth date anywhere: not in logs,
warnings, error messages, reports, split files, TensorBoard events or file names.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import monai
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from lungseg_monai.engine import load_checkpoint
from lungseg_monai.inference import LungSegmenter
from lungseg_monai.io import RadiographReadError, read_radiograph
from lungseg_monai.transforms import radiograph_to_metatensor

from conftest import EVALUATE_CONFIG, TRAIN_CONFIG
from hostile_corpus import PHI_STRINGS, build_hostile_dataset
from test_data_validation import EXPECTED_REASONS

SEED = 11
# Images the readers refuse (the other unusable pairs have a readable image and a bad mask).
UNREADABLE_IMAGES = {
    "truncated",
    "zero_bytes",
    "text",
    "bomb",
    "dicom_no_pixel_data",
    "dicom_jpeg_xl",
    "dicom_multi_frame",
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_bundle_here(bundle_root: Path, dataset: Path, workflow: str, log: _Records) -> None:
    """Run a bundle workflow in this process, on CPU, capturing every log record and warning."""
    configs = [str(TRAIN_CONFIG)] + ([str(EVALUATE_CONFIG)] if workflow == "evaluating" else [])
    parser = ConfigParser()
    parser.read_config(configs)
    overrides = {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(dataset),
        "backbone": "vgg16",
        "image_size": 64,
        "max_epochs": 1,
        "batch_size": 4,
        "seed": SEED,
        "device": "$torch.device('cpu')",
        "train#trainer#amp": False,
        "validate#evaluator#amp": False,
    }
    if workflow == "evaluating":
        overrides["evaluate#evaluator#amp"] = False
    for key, value in overrides.items():
        parser[key] = value
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.addHandler(log)
    root.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parser.get_parsed_content("initialize")
            parser.get_parsed_content(workflow)
        log.lines.extend(str(w.message) for w in caught)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        monai.utils.set_determinism(seed=None)


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two trainings with the same seed and an evaluation of each, on the hostile dataset."""
    base = tmp_path_factory.mktemp("hostile_runs")
    dataset = base / "dataset"
    pairs = build_hostile_dataset(dataset, with_dicom=True)
    log = _Records()
    roots = [base / "run_a", base / "run_b"]
    for root in roots:
        run_bundle_here(root, dataset, "training", log)
        run_bundle_here(root, dataset, "evaluating", log)
    yield {"dataset": dataset, "pairs": pairs, "roots": roots, "log": log.lines}


def test_training_and_evaluation_leave_out_each_bad_pair_naming_file_and_reason(hostile_runs: dict) -> None:
    root = hostile_runs["roots"][0]
    record = json.loads((root / "models" / "datalist_split.json").read_text())
    excluded = {Path(b["image"]).name.split(".")[0]: b["reason"] for b in record["excluded"]}
    assert sorted(excluded) == sorted(EXPECTED_REASONS)
    for name, reason in EXPECTED_REASONS.items():
        assert reason in excluded[name]
        assert any(
            f"leaving out image '{hostile_runs['dataset'] / 'images'}/{name}." in line for line in hostile_runs["log"]
        )
    # Training finished and saved a usable model; evaluation scored exactly the good test pairs.
    assert load_checkpoint(root / "models" / "model.pt")
    with open(root / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["image"]).name for r in rows) == sorted(Path(i["image"]).name for i in record["test"])
    assert rows and all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    good = {p.name for p in hostile_runs["pairs"] if p.usable}
    used = {Path(i["image"]).name.split(".")[0] for part in ("training", "validation", "test") for i in record[part]}
    assert used == good


def test_same_seed_gives_same_split_model_and_metrics(hostile_runs: dict) -> None:
    a, b = hostile_runs["roots"]
    assert (a / "models" / "datalist_split.json").read_text() == (b / "models" / "datalist_split.json").read_text()
    assert json.loads((a / "models" / "model.json").read_text()) == json.loads(
        (b / "models" / "model.json").read_text()
    )
    weights_a = load_checkpoint(a / "models" / "model.pt")
    weights_b = load_checkpoint(b / "models" / "model.pt")
    for key, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[key], tensor, rtol=0, atol=1e-6)
    with open(a / "eval" / "metrics.csv") as fa, open(b / "eval" / "metrics.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["image"] for r in rows_a] == [r["image"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for metric in ("dice", "iou", "hd95", "assd"):
            assert float(ra[metric]) == pytest.approx(float(rb[metric]), abs=1e-6, nan_ok=True)


def test_inference_batch_segments_good_files_and_names_each_bad_one(hostile_runs: dict) -> None:
    """What ``lungseg infer`` does per file: read, segment; a bad file is reported and the batch goes on."""
    segmenter = LungSegmenter.from_model(hostile_runs["roots"][0] / "models" / "model.pt", device="cpu")
    refused: dict[str, str] = {}
    segmented: dict[str, tuple[int, int]] = {}
    for path in sorted((hostile_runs["dataset"] / "images").iterdir()):
        try:
            radiograph = read_radiograph(path)
        except RadiographReadError as e:
            assert e.path == str(path)
            refused[path.name.split(".")[0]] = e.reason
            continue
        mask = segmenter.segment(radiograph)
        assert mask.shape == radiograph.shape and set(np.unique(mask)) <= {0, 1}
        segmented[path.name.split(".")[0]] = mask.shape
    assert set(refused) == UNREADABLE_IMAGES
    assert segmented["one_pixel"] == (1, 1)  # segmentable, however useless
    assert len(segmented) == len(hostile_runs["pairs"]) - len(UNREADABLE_IMAGES)
    for reason in refused.values():
        for phi in PHI_STRINGS:
            assert phi not in reason


def test_no_patient_data_in_logs_outputs_or_file_names(hostile_runs: dict) -> None:
    dicoms = sorted((hostile_runs["dataset"] / "images").glob("*.dcm"))
    assert any(PHI_STRINGS[0].encode() in p.read_bytes() for p in dicoms)  # the inputs do carry it
    text = "\n".join(hostile_runs["log"])
    assert "dicom_no_pixel_data.dcm" in text  # the logs do talk about the DICOM inputs, by file name
    written = [p for root in hostile_runs["roots"] for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".csv" for p in written) and any("events" in p.name for p in written)
    for phi in PHI_STRINGS:
        assert phi not in text
        for path in written:
            assert phi not in str(path.relative_to(path.parents[2]))
            if path.suffix != ".pt":  # weights: tensors under parameter names, loaded weights_only
                assert phi.encode() not in path.read_bytes(), path


def test_loaded_dicom_carries_uids_but_no_patient_data(hostile_runs: dict) -> None:
    """What the training/inference transforms keep of a DICOM: UIDs and geometry, nothing personal."""
    tensor = radiograph_to_metatensor(read_radiograph(hostile_runs["dataset"] / "images" / "dicom_good.dcm"))
    assert tensor.meta["sop_instance_uid"].startswith("1.2.")
    dumped = repr(dict(tensor.meta))
    for phi in PHI_STRINGS:
        assert phi not in dumped
