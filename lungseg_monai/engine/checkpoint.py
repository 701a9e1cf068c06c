"""Checkpoints written atomically and training that resumes where it stopped (Ignite handlers).

MONAI's ``CheckpointSaver`` writes with ``atomic=False``, so a process killed while saving can
leave a truncated ``model.pt``. These handlers write to a temporary file and rename it, and
load only with ``torch.load(weights_only=True)`` through :mod:`lungseg_monai.io.checkpoint`
(re-exported here: ``load_checkpoint``, ``load_network_weights``, ``unwrap_model``,
``CheckpointError``), which inference uses without importing Ignite.
"""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler
from monai.transforms import Randomizable, Transform

from lungseg_monai.engine.distributed import gather_objects
from lungseg_monai.io.checkpoint import CheckpointError, load_checkpoint, load_network_weights, unwrap_model
from lungseg_monai.utils.atomic import atomic_path
from lungseg_monai.pretrained import resolve_model

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "unwrap_model",
    "load_network_weights",
    "NetworkLoader",
    "BestModelSaver",
    "ResumableEarlyStopHandler",
    "TrainingCheckpoint",
    "TransformRandomState",
    "CheckpointError",
]

logger = logging.getLogger(__name__)


# The attributes of a MONAI warm-up schedule (a LambdaLR, so its learning rate is a closed form of the
# epoch) that come from the config rather than from training progress.
_SCHEDULE_SHAPE = ("t_total", "warmup_steps", "warmup_multiplier", "cycles", "end_lr")


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, flush it to disk, then rename: a kill never leaves a partial file.

    The flush (``fsync``) makes the rename safe against a power cut or kernel crash too, not only a
    killed process.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    return path


class NetworkLoader:
    """Load a ``model.pt`` into the network when an engine starts (MONAI ``CheckpointLoader`` style).

    On an evaluator it loads the model to evaluate; on a trainer, the weights to start from
    (fine-tuning). Attached before :class:`TrainingCheckpoint`, a resumed run still continues from
    its own checkpoint. ``load_path=None`` does nothing, so a config can leave it unset. A shipped
    model's name (``vgg16``) loads that model (:func:`lungseg_monai.pretrained.resolve_model`).
    """

    def __init__(
        self, load_path: str | os.PathLike | None, network: torch.nn.Module, map_location: str = "cpu"
    ) -> None:
        self.load_path = None if load_path is None else resolve_model(load_path)
        self.network = network
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        if self.load_path is not None:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_network_weights(self.network, self.load_path, self.map_location)
        logger.info("loaded network weights from '%s'", self.load_path)


def _pack_numpy_state(state: tuple[Any, ...]) -> dict[str, Any]:
    """A ``RandomState.get_state()`` tuple as tensors and numbers, loadable with ``weights_only=True``."""
    _, keys, pos, has_gauss, cached_gaussian = state
    return {
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _unpack_numpy_state(state: Mapping[str, Any]) -> tuple[Any, ...]:
    keys = state["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


def _rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": _pack_numpy_state(np.random.get_state()),
        "python": [list(internal), version, gauss_next],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_unpack_numpy_state(state["numpy"]))
    internal, version, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _randomizables(obj: Any, name: str, seen: set[int]) -> Iterator[tuple[str, Randomizable]]:
    """Every :class:`Randomizable` reachable from ``obj`` through transforms, lists and dicts, by path."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield name, obj
    if isinstance(obj, (list, tuple)):
        children: Iterator[tuple[Any, Any]] = iter(enumerate(obj))
    elif isinstance(obj, dict):
        children = iter(obj.items())
    elif isinstance(obj, (Transform, Randomizable)):
        children = iter(vars(obj).items())
    else:
        return
    for key, child in children:
        yield from _randomizables(child, f"{name}.{key}" if name else str(key), seen)


class TransformRandomState:
    """The random generators of a transform chain, saved and restored by :class:`TrainingCheckpoint`.

    MONAI's random transforms each own a ``numpy.random.RandomState`` (``.R``), seeded once when
    the DataLoader is created. Without this, a resumed run would replay the augmentations of
    epoch 1 instead of continuing the sequence. Every :class:`~monai.transforms.Randomizable`
    inside the chain is found (also nested ones such as ``RandAffined.rand_affine``) and its
    state stored under its attribute path.

    Args:
        transform: the training transform chain, e.g. ``@train#preprocessing``.
    """

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def _generators(self) -> dict[str, Randomizable]:
        return dict(_randomizables(self.transform, "", set()))

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: _pack_numpy_state(obj.R.get_state()) for name, obj in self._generators().items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        generators = self._generators()
        if set(state) != set(generators):
            raise CheckpointError(
                f"the checkpoint holds random states for transforms {sorted(state)} but the training transforms "
                f"are {sorted(generators)}; resume with the transforms the run started with"
            )
        for name, obj in generators.items():
            obj.R.set_state(_unpack_numpy_state(state[name]))


class BestModelSaver:
    """Save the network's plain state dict whenever the validation key metric improves.

    Attach to the validator. ``models/model.pt`` is what evaluation, inference, export and
    MONAI Label load.

    Beside it, ``model.json`` records what is needed to use the weights without the training
    config (backbone, image size, intensity settings) plus the metric, the epoch and
    ``n_validation_images``, the number of images the metric was computed on (in a distributed
    run, over all processes).

    Args:
        save_path: file to write, e.g. ``models/model.pt``.
        network: the trained network (DDP wrappers are unwrapped).
        metric_name: validator metric to maximise.
        metadata: JSON-serialisable facts about the model, written to the ``.json`` sidecar.
        enabled: False on non-zero ranks of a distributed run.
    """

    def __init__(
        self,
        save_path: str | os.PathLike,
        network: torch.nn.Module,
        metric_name: str,
        metadata: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.save_path = Path(save_path)
        self.network = network
        self.metric_name = metric_name
        self.metadata = dict(metadata or {})
        self.enabled = enabled
        self.best_metric = -float("inf")
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, int(engine.state.epoch)
            if self.enabled:
                save_checkpoint(unwrap_model(self.network).state_dict(), self.save_path)
                record = {**self.metadata, self.metric_name: value, "epoch": self.best_epoch}
                details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
                if details is not None:  # per-image scores, gathered from all processes
                    record["n_validation_images"] = len(details)
                with atomic_path(self.save_path.with_suffix(".json")) as tmp:
                    tmp.write_text(json.dumps(record, indent=2, default=str))
                logger.info("new best %s %.4f at epoch %d: saved %s", self.metric_name, value, self.best_epoch, self.save_path)

    def state_dict(self) -> dict[str, float]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])


class ResumableEarlyStopHandler(EarlyStopHandler):
    """Early stopping on a validation metric, whose patience counter survives a resume.

    Attach to the trainer after the ``ValidationHandler``: at each epoch end it reads
    ``validator.state.metrics[metric_name]`` and stops the trainer after ``patience`` epochs
    without an improvement larger than ``min_delta``.

    Args:
        patience: epochs without improvement before stopping.
        validator: the evaluator whose metric is watched.
        metric_name: e.g. ``"val_mean_dice"``.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, patience: int, validator: Engine, metric_name: str, min_delta: float = 0.0) -> None:
        self.validator = validator
        self.metric_name = metric_name
        super().__init__(patience=patience, score_function=self._score, min_delta=min_delta, epoch_level=True)

    def _score(self, engine: Engine) -> float:
        return float(self.validator.state.metrics[self.metric_name])

    def attach(self, engine: Engine) -> None:
        if self._handler is None:
            self.set_trainer(engine)
        super().attach(engine)

    def state_dict(self) -> dict[str, Any]:
        return self._handler.state_dict() if self._handler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._handler is not None and state:
            self._handler.load_state_dict(state)


class TrainingCheckpoint:
    """Save everything needed to resume after every epoch; resume from it at start.

    Attach to the trainer after the ``ValidationHandler`` and early stopping, so the saved state
    includes that epoch's validation (best metric, early-stopping counter). The trainer's own
    state (epoch, iteration) is saved under ``"trainer"``.

    Args:
        save_path: e.g. ``models/checkpoint_last.pt``.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer,
            lr scheduler, early stopping, best-model saver...).
        resume: load ``save_path`` at start if it exists. In a distributed run every process loads
            it, and all must see it (or none): an error says which processes do not.
        enabled: False on non-zero ranks (they still resume from the file).
    """

    def __init__(
        self, save_path: str | os.PathLike, save_dict: Mapping[str, Any], resume: bool = False, enabled: bool = True
    ) -> None:
        self.save_path = Path(save_path)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _objects(self) -> dict[str, Any]:
        return {k: unwrap_model(v) if isinstance(v, torch.nn.Module) else v for k, v in self.save_dict.items()}

    def save(self, engine: Engine) -> None:
        if not self.enabled:
            return
        state = {name: obj.state_dict() for name, obj in self._objects().items()}
        state["rng"] = _rng_state()
        save_checkpoint(state, self.save_path)

    def load(self, engine: Engine) -> None:
        if not self.resume:
            return
        found = gather_objects(self.save_path.is_file())  # one entry per process of a distributed run
        if any(found) and not all(found):
            raise CheckpointError(
                f"resume is true but '{self.save_path}' exists for processes {[r for r, f in enumerate(found) if f]} "
                f"and not for processes {[r for r, f in enumerate(found) if not f]}; every process must resume from "
                "the same file: put bundle_root on a file system all nodes share, or copy the file to every node"
            )
        if not found[0]:
            logger.warning("resume is true but '%s' does not exist; starting from epoch 0", self.save_path)
            return
        state = load_checkpoint(self.save_path)
        missing = [name for name in self.save_dict if name not in state]
        if missing:
            raise CheckpointError(f"checkpoint '{self.save_path}' lacks {missing}; cannot resume from it")
        max_epochs = engine.state.max_epochs
        for name, obj in self._objects().items():
            if isinstance(obj, torch.optim.lr_scheduler.LambdaLR):
                _load_keeping_schedule(obj, state[name])
            else:
                obj.load_state_dict(state[name])
        if "rng" in state:
            _set_rng_state(state["rng"])
        engine.state.max_epochs = max_epochs  # a resumed run may be given a longer schedule
        logger.info("resumed from '%s' at epoch %d", self.save_path, engine.state.epoch)


def _load_keeping_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, state: Mapping[str, Any]) -> None:
    """Resume a schedule's progress but keep its configured shape.

    ``load_state_dict`` would restore the saved ``t_total``: resumed with a larger ``max_epochs``,
    the cosine would pass its end and climb back up. The epoch reached is kept; the learning rate
    for it is recomputed from the schedule configured now.
    """
    configured = {k: getattr(scheduler, k) for k in _SCHEDULE_SHAPE if hasattr(scheduler, k)}
    scheduler.load_state_dict(state)
    changed = {k: (getattr(scheduler, k), v) for k, v in configured.items() if getattr(scheduler, k) != v}
    if not changed:
        return
    for k, v in configured.items():
        setattr(scheduler, k, v)
    with warnings.catch_warnings():  # get_lr outside step() warns; here it is the point
        warnings.simplefilter("ignore", UserWarning)
        lrs = scheduler.get_lr()
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    logger.info(
        "resumed learning-rate schedule follows the configured %s (checkpoint had %s); learning rate now %s",
        {k: new for k, (_, new) in changed.items()},
        {k: old for k, (old, _) in changed.items()},
        lrs,
    )
