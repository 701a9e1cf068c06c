"""Training and evaluation machinery for MONAI's Ignite workflows: checkpoints, resume, helpers."""

from __future__ import annotations

from lungseg_monai.extras import require_extra

# Without the train extra, say so instead of Ignite's ImportError.
require_extra("train", "lungseg_monai.engine (the bundle's training and evaluation handlers)")

from lungseg_monai.engine.checkpoint import (  # noqa: E402
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
from lungseg_monai.engine.distributed import distributed_sampler, gather_objects, is_distributed  # noqa: E402

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
