"""SegmentationReport on hand-made evaluator outputs: rows, worst cases, memory bound, name clashes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image

from lungseg_monai.evaluation import SegmentationReport


def _item(path: Path, pred: np.ndarray, label: np.ndarray) -> dict:
    meta = {"filename_or_obj": str(path), "spacing": torch.tensor([float("nan")] * 2), "spacing_known": False}
    image = MetaTensor(torch.zeros(1, *pred.shape), meta=meta)
    return {"image": image, "pred": torch.from_numpy(pred[None].astype(np.float32)), "label": torch.from_numpy(label[None].astype(np.float32))}


def test_report_keeps_only_worst_masks_and_separates_same_named_files(tmp_path: Path) -> None:
    label = np.zeros((16, 16), bool)
    label[4:12, 4:12] = True
    items = []
    for i, folder in enumerate(["a", "b", "c", "d"]):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "cxr.png"  # the same file name in every folder
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(path)
        pred = np.zeros_like(label)
        pred[4 : 12 - 2 * i, 4:12] = True  # Dice falls with i
        items.append(_item(path, pred, label))
    report = SegmentationReport(tmp_path / "eval", n_worst=2)
    engine = SimpleNamespace(state=SimpleNamespace(output=None))
    report._reset(engine)
    for item in items:
        engine.state.output = [item]
        report._collect(engine)
        assert len(report._masks) <= 2  # never holds more than n_worst full-size masks
    report._write(engine)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["dice"]) for r in rows] == sorted((float(r["dice"]) for r in rows), reverse=True)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [w["image"] for w in summary["worst"]] == [str(tmp_path / "d" / "cxr.png"), str(tmp_path / "c" / "cxr.png")]
    assert sorted(p.name for p in (tmp_path / "eval" / "worst").iterdir()) == ["cxr.png", "cxr_2.png"]


def test_tied_worst_cases_all_have_their_overlay(tmp_path: Path) -> None:
    label = np.zeros((16, 16), bool)
    label[4:12, 4:12] = True
    report = SegmentationReport(tmp_path / "eval", n_worst=2)
    engine = SimpleNamespace(state=SimpleNamespace(output=None))
    report._reset(engine)
    for name in ["e", "d", "c", "b", "a"]:  # all Dice 0: the tie is broken by path
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(path)
        engine.state.output = [_item(path, np.zeros_like(label), label)]
        report._collect(engine)
    report._write(engine)
    assert sorted(p.name for p in (tmp_path / "eval" / "worst").iterdir()) == ["a.png", "b.png"]
