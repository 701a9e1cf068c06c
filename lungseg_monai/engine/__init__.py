"""Training and evaluation machinery for MONAI's Ignite workflows: checkpoints, resume, helpers."""

from __future__ import annotations

from lungseg_monai.engine.checkpoint import (
    BestModelSaver,
    CheckpointError,
    NetworkLoader,
    ResumableEarlyStopHandler,
    TrainingCheckpoint,
    TransformRandomState,
    load_checkpoint,
    load_network_weights,
    save_checkpoint,
    unwrap_model,
)

__all__ = [
    "BestModelSaver",
    "CheckpointError",
    "NetworkLoader",
    "ResumableEarlyStopHandler",
    "TrainingCheckpoint",
    "TransformRandomState",
    "load_checkpoint",
    "load_network_weights",
    "save_checkpoint",
    "unwrap_model",
]
