"""The MONAI Label train task: fine-tune the served model on the labels saved in the datastore.

Training is the bundle's own ``configs/train.json`` run through ``monai.bundle.ConfigWorkflow``
(same transforms, loss, checkpointing and model card as ``python -m monai.bundle run training``),
with the datalist replaced by the saved labels, the network initialised from the model being
served, its architecture and intensity settings taken from that model's card, no learning-rate
warm-up and a short schedule. The best epoch's ``model.pt`` is then published to
``<workdir>/models/``, which the server picks up on its next ``/infer``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

import lungseg_monai
from lungseg_monai.data import check_pair, split_datalist
from lungseg_monai.io import file_stem
from lungseg_monai.inference.predictor import MODEL_CARD_KEYS, read_model_card
from lungseg_monai.inference.options import DEFAULT_PRECISION
from lungseg_monai.io.checkpoint import load_network_weights
from lungseg_monai.label.errors import BadRequestError
from lungseg_monai.label.models import ModelStore
from lungseg_monai.outputs import atomic_path

__all__ = ["LungSegTrainTask", "TRAIN_DEFAULTS", "find_train_config", "fine_tune", "split_labelled", "usable_pairs"]

logger = logging.getLogger(__name__)

# Request parameters of /train/<model> and their defaults (shown to clients in /info).
TRAIN_DEFAULTS: dict[str, Any] = {
    "max_epochs": 5,
    "learning_rate": 1e-4,
    "batch_size": 4,
    "image_size": 0,  # 0: the size the served model was trained at
    "val_fraction": 0.2,
    "seed": 0,
}
# The U-Net halves the image five times.
IMAGE_SIZE_MULTIPLE = 32
BUNDLE_TRAIN_CONFIG = Path("bundles") / "lung_cxr_segmentation" / "configs" / "train.json"
STATS_FILE = "train_stats.json"


def find_train_config(explicit: str | os.PathLike | None, model_path: str | os.PathLike) -> Path | None:
    """The bundle training config to fine-tune with.

    In order: ``explicit``; ``configs/train.json`` of the bundle the model sits in
    (``<bundle>/models/model.pt``); the bundle shipped beside this package's source.
    """
    if explicit:
        return Path(explicit)
    candidates = [
        Path(model_path).resolve().parent.parent / "configs" / "train.json",
        Path(lungseg_monai.__file__).resolve().parents[1] / BUNDLE_TRAIN_CONFIG,
    ]
    return next((c for c in candidates if c.is_file()), None)


def train_params(request: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`TRAIN_DEFAULTS` updated with the request's values, type-converted and range-checked.

    Raises:
        BadRequestError: a value of the wrong type or out of range (named, with what is allowed).
    """
    params = dict(TRAIN_DEFAULTS)
    for key, default in TRAIN_DEFAULTS.items():
        value = request.get(key)
        if value is None or value == "":
            continue
        try:
            params[key] = type(default)(value)
        except (TypeError, ValueError):
            raise BadRequestError(
                f"train parameter '{key}' must be a {type(default).__name__}, got {value!r}"
            ) from None
    problems = []
    if params["max_epochs"] < 1:
        problems.append(f"max_epochs must be at least 1, got {params['max_epochs']}")
    if params["batch_size"] < 1:
        problems.append(f"batch_size must be at least 1, got {params['batch_size']}")
    if params["learning_rate"] <= 0:
        problems.append(f"learning_rate must be positive, got {params['learning_rate']}")
    if not 0 <= params["val_fraction"] < 1:
        problems.append(f"val_fraction must be in [0, 1), got {params['val_fraction']}")
    size = params["image_size"]
    if size != 0 and (size < IMAGE_SIZE_MULTIPLE or size % IMAGE_SIZE_MULTIPLE):
        problems.append(f"image_size must be 0 (the model's own) or a multiple of {IMAGE_SIZE_MULTIPLE}, got {size}")
    if problems:
        raise BadRequestError("; ".join(problems))
    return params


def usable_pairs(items: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, str]], list[str]]:
    """Keep the image/label pairs that read and match in size; describe the others.

    Labels saved through the server are checked on upload, but files copied into
    ``labels/final`` by hand are not: one bad file must not stop the fine-tuning.
    """
    good, skipped = [], []
    for item in items:
        reason = check_pair(item)  # the same check training applies to every dataset
        if reason is not None:
            skipped.append(reason)
            continue
        good.append({"image": item["image"], "label": item["label"], "name": file_stem(item["image"])})
    for reason in skipped:
        logger.warning("fine-tuning skips a label: %s", reason)
    return good, skipped


def split_labelled(items: Sequence[dict[str, str]], val_fraction: float, seed: int) -> dict[str, list[dict[str, str]]]:
    """Hold out ``val_fraction`` of the labels for validation; too few labels: validate on the training ones.

    With fewer labels than it takes to keep at least one for each part, the checkpoint kept is the
    one that fits the training labels best (logged as a warning).
    """
    n_val = round(len(items) * val_fraction)
    if n_val >= 1 and len(items) - n_val >= 1:
        return split_datalist(items, ratios=(1.0 - val_fraction, val_fraction, 0.0), seed=seed)
    logger.warning(
        "%d label(s) with val_fraction %.2f leave none to hold out; validating on the training labels",
        len(items),
        val_fraction,
    )
    return {"training": list(items), "validation": list(items), "test": []}


def fine_tune(
    splits: Mapping[str, list[dict[str, str]]],
    base_model: str | os.PathLike,
    run_dir: str | os.PathLike,
    train_config: str | os.PathLike,
    params: Mapping[str, Any],
    device: str | None = None,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, Any]:
    """Run the bundle's training config on ``splits``, starting from ``base_model``'s weights.

    Writes the bundle outputs under ``run_dir`` (``models/model.pt`` + ``model.json``, logs).

    Returns:
        ``{"epoch", "best_metric", "best_metric_epoch", "run_model"}`` of the run.

    Raises:
        RuntimeError: training finished without saving a model (validation Dice never a number).
    """
    from monai.bundle import ConfigWorkflow

    card = read_model_card(base_model)
    run_dir = Path(run_dir)
    overrides: dict[str, Any] = {
        "bundle_root": str(run_dir),
        "datalists": {k: list(v) for k, v in splits.items()},
        **{key: card[key] for key in MODEL_CARD_KEYS},  # the base model's preprocessing and network shape
        "image_size": int(params["image_size"]) or int(card["image_size"]),
        "pretrained": False,
        "resume": False,
        "max_epochs": int(params["max_epochs"]),
        "warmup_epochs": 0,
        "learning_rate": float(params["learning_rate"]),
        "batch_size": int(params["batch_size"]),
        "val_batch_size": int(params["batch_size"]),
        "seed": int(params["seed"]),
        "precision": precision,
    }
    if device:
        overrides["device"] = f"$torch.device({str(device)!r})"
    workflow = ConfigWorkflow(config_file=str(train_config), logging_file=False, workflow_type="train", **overrides)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    load_network_weights(network, base_model)
    logger.info("fine-tuning '%s' with '%s' into '%s'", base_model, train_config, run_dir)
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    saver = workflow.parser.get_parsed_content("validate#best_model_saver")
    model_pt = Path(saver.save_path)
    if not model_pt.is_file():
        raise RuntimeError(
            f"fine-tuning ran {trainer.state.epoch} epoch(s) but saved no model in '{model_pt.parent}': the "
            "validation Dice was never a number (are all validation labels empty?)"
        )
    return {
        "epoch": int(trainer.state.epoch),
        "best_metric": float(saver.best_metric),
        "best_metric_epoch": int(saver.best_epoch),
        "run_model": str(model_pt),
    }


class LungSegTrainTask(TrainTask):
    """Fine-tune the served model on the datastore's final labels and publish the result.

    Args:
        store: the served/published models.
        train_config: the bundle's ``configs/train.json`` (None: training answers with an error).
        device: torch device for training; None picks CUDA when available.
        precision: the training config's ``precision`` (``auto``: bf16 on CPUs with bf16 instructions).
    """

    def __init__(
        self,
        store: ModelStore,
        train_config: Path | None,
        device: str | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        super().__init__("Fine-tune the lung model on the saved labels (bundle training config)")
        self.store = store
        self.train_config = train_config
        self.device = device
        self.precision = precision
        self.stats_path = store.workdir / STATS_FILE

    def config(self) -> dict[str, Any]:
        return dict(TRAIN_DEFAULTS)

    def stats(self) -> dict[str, Any]:
        """The last finished fine-tuning (``total_epochs``, ``best_metric``, ``total_time``...), or {}."""
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        if self.train_config is None or not Path(self.train_config).is_file():
            raise FileNotFoundError(
                f"no bundle training config (got {self.train_config}); start the server with "
                "--conf train_config <bundle>/configs/train.json"
            )
        params = train_params(request)
        items, skipped = usable_pairs(datastore.datalist())
        if not items:
            raise BadRequestError(
                "no usable labels to fine-tune on: save corrected masks with PUT /datastore/label "
                f"(tag 'final') first{'; skipped: ' + '; '.join(skipped) if skipped else ''}"
            )
        splits = split_labelled(items, params["val_fraction"], params["seed"])
        base = self.store.current()
        started = time.time()
        run_dir = self.store.workdir / "runs" / datetime.now().strftime("%Y%m%d_%H%M%S_%f")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "datalist.json").write_text(json.dumps(splits, indent=2))
        result = fine_tune(splits, base, run_dir, self.train_config, params, self.device, self.precision)
        published = self.store.publish(result["run_model"], fine_tuned_from=base)
        stats = {
            **result,
            "total_epochs": params["max_epochs"],
            "total_time": round(time.time() - started, 1),
            "params": params,
            "labels": len(items),
            "skipped": skipped,
            "training": len(splits["training"]),
            "validation": len(splits["validation"]),
            "held_out": not {i["name"] for i in splits["validation"]} & {i["name"] for i in splits["training"]},
            "fine_tuned_from": str(base),
            "published": str(published),
            "run_dir": str(run_dir),
            "start_ts": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        }
        with atomic_path(self.stats_path) as tmp:
            tmp.write_text(json.dumps(stats, indent=2))
        return stats
