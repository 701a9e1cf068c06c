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
from lungseg_monai.engine.distributed import distributed_sampler, gather_objects, is_distributed

__all__ = [
    "BestModelSaver",
    "CheckpointError",
    "NetworkLoader",
    "ResumableEarlyStopHandler",
    "TrainingCheckpoint",
    "TransformRandomState",
    "distributed_sampler",
    "gather_objects",
    "is_distributed",
    "load_checkpoint",
    "load_network_weights",
    "save_checkpoint",
    "unwrap_model",
]
