"""An evaluator handler that writes a per-image metrics report at the original resolution.

Outputs, under ``output_dir``: ``metrics.csv`` (one row per image with ``name``, ``dice``,
``iou``, ``hd95``, ``assd``, ``distance_unit`` and, with a QC-calibrated model, ``qc_status``,
``qc_score``, ``qc_reasons`` as ``lungseg infer`` gives them), ``summary.json`` (mean, median,
std, min, max of each metric, the five worst cases by Dice, and the Spearman correlation between
``qc_score`` and the true Dice) and ``worst/NAME.png`` overlays (prediction red, reference green)
of those worst cases.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from scipy.stats import spearmanr

from lungseg_monai.engine.distributed import gather_objects, is_distributed
from lungseg_monai.io import file_stem
from lungseg_monai.evaluation.metrics import METRIC_NAMES, segmentation_metrics
from lungseg_monai.io import read_radiograph
from lungseg_monai.outputs import atomic_path, save_overlay

__all__ = ["SegmentationReport", "summarise"]

logger = logging.getLogger(__name__)


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def _badness(dice: float, image: str) -> tuple[float, str]:
    """Sort key of the worst cases: lowest Dice first, ties broken by path so every process agrees."""
    return float(dice), str(image)


def _worst(rows: Sequence[Mapping[str, Any]], n_worst: int) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda r: _badness(r["dice"], r["image"]))[:n_worst]


def summarise(rows: Sequence[Mapping[str, Any]], n_worst: int = 5) -> dict[str, Any]:
    """Mean/median/std/min/max of each metric (infinite distances counted separately) and the worst cases."""
    summary: dict[str, Any] = {"n_images": len(rows)}
    for name in METRIC_NAMES:
        values = [float(r[name]) for r in rows]
        finite = _finite(values)
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "median": float(np.median(finite)) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "min": float(finite.min()) if finite.size else math.nan,
            "max": float(finite.max()) if finite.size else math.nan,
            "n_infinite": int(len(values) - finite.size),
        }
    worst = _worst(rows, n_worst)
    summary["worst"] = [{k: r[k] for k in ("name", "image", *METRIC_NAMES)} for r in worst]
    scored = [(float(r["qc_score"]), float(r["dice"])) for r in rows if r.get("qc_score") not in (None, "")]
    if scored:
        statuses = [r["qc_status"] for r in rows if r.get("qc_status")]
        scores, dices = zip(*scored)
        rho = spearmanr(scores, dices).statistic if len(scored) > 2 and len(set(dices)) > 1 else math.nan
        summary["qc"] = {
            "spearman_qc_score_dice": float(rho),
            "n_scored": len(scored),
            "status_counts": {status: statuses.count(status) for status in sorted(set(statuses))},
        }
    return summary


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else "inf"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


class SegmentationReport:
    """Collect per-image metrics from an evaluator's output and write the report when it completes.

    The evaluator's post-processing must leave, per image, a binary ``pred`` at the original
    resolution and the ``label`` loaded at the original resolution; ``image`` carries the meta
    (``filename_or_obj``, ``spacing``, ``spacing_known``).

    Args:
        output_dir: where ``metrics.csv``, ``summary.json`` and ``worst/`` go.
        n_worst: how many worst cases to list and draw.
        enabled: False on non-zero ranks of a distributed run. In such a run every process
            evaluates its shard, and the rows (sorted by file name) and the worst cases' masks are
            gathered from all processes before rank 0 writes the report.
        qc_model: the evaluated ``model.pt``: each image also gets the quality verdict
            ``lungseg infer`` would give it (from the model's QC calibration; without one the
            columns say ``unavailable``). None leaves the QC columns out.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        n_worst: int = 5,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        enabled: bool = True,
        qc_model: str | os.PathLike | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.n_worst = n_worst
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self._masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._dice: dict[str, float] = {}
        self.qc_model = qc_model
        self._segmenter: Any = None

    def _quality(self, path: str) -> dict[str, Any]:
        """The ``qc_*`` columns ``lungseg infer`` would write for this image."""
        if self.qc_model is None:
            return {}
        if self._segmenter is None:
            # Imported here: evaluation needs the inference path only for the QC columns.
            from lungseg_monai.inference.predictor import LungSegmenter

            self._segmenter = LungSegmenter.from_model(self.qc_model, device="cpu")
        return self._segmenter.segment_with_qc(read_radiograph(path))[1].as_row()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self._masks, self._dice = [], {}, {}

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            image = item[self.image_key]
            meta = image.meta
            path = str(meta["filename_or_obj"])
            known = bool(torch.as_tensor(meta.get("spacing_known", False)).item())
            spacing = [float(s) for s in torch.as_tensor(meta["spacing"]).flatten()] if known else None
            pred = torch.as_tensor(item[self.pred_key]).detach().cpu().numpy()[0] > 0.5
            label = torch.as_tensor(item[self.label_key]).detach().cpu().numpy()[0] > 0.5
            values = segmentation_metrics(pred, label, spacing)
            name = Path(path).name
            row = {"name": name, "image": path, **values, "distance_unit": "mm" if known else "pixel"}
            self.rows.append({**row, **self._quality(path)})
            self._keep_if_worst(path, values["dice"], pred, label)

    def _keep_if_worst(self, path: str, dice: float, pred: np.ndarray, label: np.ndarray) -> None:
        """Hold full-resolution masks only for the ``n_worst`` lowest-Dice images seen so far.

        Keyed by full path: two folders may hold files of the same name. Any image among the
        global worst is among its own process's worst, so this is enough for a distributed run.
        """
        self._masks[path] = (pred, label)
        self._dice[path] = dice
        if len(self._masks) > self.n_worst:
            best_kept = max(self._dice, key=lambda p: _badness(self._dice[p], p))
            del self._masks[best_kept], self._dice[best_kept]

    def _gather(self) -> None:
        """In a multi-process run, collect every process's rows and the worst cases' masks.

        Every process calls this (the gathering is collective), also those with ``enabled=False``.
        """
        if not is_distributed():
            return
        rows = (row for part in gather_objects(self.rows) for row in part)
        self.rows = sorted(rows, key=lambda r: (r["name"], r["image"]))
        worst = {r["image"] for r in _worst(self.rows, self.n_worst)}
        own = {path: masks for path, masks in self._masks.items() if path in worst}
        self._masks = {name: masks for part in gather_objects(own) for name, masks in part.items()}

    def _write(self, engine: Engine) -> None:
        self._gather()
        if not self.enabled or not self.rows:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fields = ["name", "image", *METRIC_NAMES, "distance_unit"]
        if self.qc_model is not None:
            fields += ["qc_status", "qc_score", "qc_reasons"]
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows)
        summary = summarise(self.rows, self.n_worst)
        with atomic_path(self.output_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(_json_safe(summary), indent=2))
        used: set[str] = set()
        for case in summary["worst"]:
            pred, label = self._masks[case["image"]]
            pixels = read_radiograph(case["image"]).pixels
            stem = file_stem(case["image"])
            name, copy = stem, 1
            while name in used:  # same file name in two folders
                copy += 1
                name = f"{stem}_{copy}"
            used.add(name)
            save_overlay(pixels, pred, self.output_dir / "worst" / f"{name}.png", reference=label)
        logger.info(
            "evaluation of %d images: mean Dice %.4f, median %.4f; report in %s",
            len(self.rows),
            summary["dice"]["mean"],
            summary["dice"]["median"],
            self.output_dir,
        )
        if "qc" in summary:
            logger.info(
                "quality control: %s; Spearman(qc_score, Dice) %.3f",
                summary["qc"]["status_counts"],
                summary["qc"]["spearman_qc_score_dice"],
            )
