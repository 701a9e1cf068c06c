"""Helpers for multi-process (``torchrun`` / DistributedDataParallel) training and evaluation.

The bundle's ``multi_gpu_train.json`` and ``multi_gpu_evaluate.json`` shard each split across the
processes with :func:`distributed_sampler`; handlers that write files gather what the other
processes saw with :func:`gather_objects` before rank 0 writes it.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch.distributed as dist
from monai.data import DistributedSampler

__all__ = ["distributed_sampler", "gather_objects", "is_distributed"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (a collective: all processes must call it).

    Outside a multi-process group this is ``[obj]``.
    """
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def distributed_sampler(
    dataset: Sized,
    split: str,
    shuffle: bool,
    even_divisible: bool,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> DistributedSampler:
    """A MONAI ``DistributedSampler`` giving each process its shard of ``dataset``.

    For training use ``shuffle=True, even_divisible=True`` (every process runs the same number
    of steps, which DistributedDataParallel needs; a few items are repeated to even the shards).
    For validation and evaluation use ``shuffle=False, even_divisible=False``: shards differ by at
    most one item and every item is seen exactly once, so metrics gathered across processes count
    no image twice.

    Args:
        dataset: the split's dataset.
        split: its name, for the error message (``"training"``, ``"validation"``, ``"test"``).
        shuffle: reshuffle every epoch (the trainer calls ``set_epoch``).
        even_divisible: pad shards to equal length by repeating items.
        num_replicas: number of processes; default: the process group's world size.
        rank: this process's rank; default: from the process group.

    Raises:
        ValueError: the split has fewer items than there are processes, so some process would get
            nothing to validate and the metric gathering would wait for it forever.
    """
    num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
    if len(dataset) < num_replicas:
        raise ValueError(
            f"the {split} split has {len(dataset)} items but the run has {num_replicas} processes; "
            "every process needs at least one: launch fewer processes (--nproc_per_node/--nnodes) "
            f"or give the {split} split more images"
        )
    return DistributedSampler(
        dataset, even_divisible=even_divisible, num_replicas=num_replicas, rank=rank, shuffle=shuffle
    )
