"""Safe reading of checkpoints and network weights: ``torch.load(weights_only=True)``, clear errors.

Inference, export and the MONAI Label app load models through this module; it needs only torch,
so they do not import the training stack (Ignite, TensorBoard). The Ignite handlers that write
and resume checkpoints are in :mod:`lungseg_monai.engine.checkpoint`.

Not imported by ``lungseg_monai.io`` itself (that would load torch for every reader): import
``lungseg_monai.io.checkpoint``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_checkpoint", "load_network_weights", "unwrap_model"]

# How torch names the global a refused pickle wanted to load: "GLOBAL posix.system".
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# Keys under which a checkpoint may nest the network's state dict, outermost first.
_STATE_DICT_KEYS = ("network", "model", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe or for another network."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint safely (``weights_only=True``); pickled code is refused with a clear error.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or holds pickled code or
            objects (the message names the first one found, e.g. ``posix.system``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            found = _UNSAFE_GLOBAL.search(str(e))
            what = f" (it refers to {found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint '{path}' contains pickled Python code or objects{what}, which are refused because "
                "loading them could run arbitrary code; use a checkpoint holding only state dicts (tensors, "
                "numbers, strings), e.g. re-save model.state_dict() from a copy you trust"
            ) from e
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {e})") from e


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, map_location: str = "cpu") -> None:
    """Load a plain state dict (or ``{"network"|"model": state}``) into ``network``, checking the backbone.

    Raises:
        CheckpointError: unreadable or unsafe file, or weights of another backbone (both named).
    """
    from lungseg_monai.networks import backbone_of_state_dict  # networks import monai: only when needed

    state = load_checkpoint(path, map_location=map_location)
    for key in _STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(state).__name__}, expected a state dict")
    target = unwrap_model(network)
    expected = getattr(target, "backbone_name", None) or backbone_of_state_dict(target.state_dict())
    found = backbone_of_state_dict(state)
    if expected is not None and found is not None and expected != found:
        raise CheckpointError(
            f"checkpoint '{path}' holds a {found} LungUNet but the network is a {expected} LungUNet; "
            f"set backbone to '{found}' or pass a {expected} checkpoint"
        )
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit the network: {e}") from e
