"""The trained models shipped inside the package, found by name: ``vgg16`` (the default), ``resnet50``.

Each shipped model is a folder here holding ``model.pt`` (fp16 state dict, loaded with
``weights_only``) and ``model.json`` (its model card: preprocessing, QC calibration bound to the
weights' hash, and an ``about`` section with data, licences and test figures that
:func:`lungseg_monai.modelcards.card.render_card` turns into the card users read).

``--model`` of ``lungseg infer``/``node``/``label`` and the bundle's ``inference.json`` take a
shipped name or a path; without one they use :data:`DEFAULT_MODEL`. Training never writes here
(:func:`refuse_shipped_dir`): a fine-tune starts from a shipped model (``init_weights``) and
writes its own ``models/model.pt``.

Example:
    >>> resolve_model("vgg16").name
    'model.pt'
    >>> resolve_model("my_models/model.pt").as_posix()
    'my_models/model.pt'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "PRETRAINED_DIR",
    "refuse_shipped_dir",
    "resolve_model",
    "shipped_models",
    "trained_or_default",
]

logger = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).resolve().parent
# The names --model accepts besides a path, in the order `lungseg models` lists them.
MODEL_NAMES = ("vgg16", "resnet50")
DEFAULT_MODEL = "vgg16"
MODEL_FILE = "model.pt"


def shipped_models() -> dict[str, Path]:
    """Name -> ``model.pt`` of every shipped model present in this installation."""
    files = {name: PRETRAINED_DIR / name / MODEL_FILE for name in MODEL_NAMES}
    return {name: path for name, path in files.items() if path.is_file()}


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """The model file for ``--model``: a shipped model's name, a path, or None for :data:`DEFAULT_MODEL`.

    A name is taken as a shipped model only when no file of that name exists (a path always wins).

    Raises:
        CheckpointError: a shipped model's name whose weights are not in this installation.
    """
    spec = DEFAULT_MODEL if model is None else model
    if isinstance(spec, str) and spec in MODEL_NAMES and not Path(spec).exists():
        path = PRETRAINED_DIR / spec / MODEL_FILE
        if not path.is_file():
            from lungseg_monai.io.checkpoint import CheckpointError  # torch: not for `lungseg --help`

            present = ", ".join(shipped_models()) or "none"
            raise CheckpointError(
                f"the '{spec}' model is not shipped with this installation (shipped: {present}); train one with "
                f"`python -m monai.bundle run training ... --backbone {spec}` and pass its models/model.pt as --model"
            )
        return path
    return Path(spec)


def trained_or_default(model: str | os.PathLike) -> str:
    """The bundle's trained ``models/model.pt`` if training wrote one, else the shipped default (said in the log).

    The bundle's ``inference.json`` takes its ``ckpt_path`` from here, so it runs on a fresh install,
    and on the bundle's own model once training has written one.
    """
    path = resolve_model(model)
    if path.is_file():
        return str(path)
    default = resolve_model(None)
    logger.info("no trained model at '%s': using the shipped %s model '%s'", path, DEFAULT_MODEL, default)
    return str(default)


def refuse_shipped_dir(directory: str | os.PathLike) -> str:
    """``directory`` unchanged, unless it is or lies inside a shipped model's folder (training must not write there).

    Raises:
        ValueError: ``directory`` is inside :data:`PRETRAINED_DIR`.
    """
    resolved = Path(directory).resolve()
    if resolved == PRETRAINED_DIR or PRETRAINED_DIR in resolved.parents:
        raise ValueError(
            f"'{directory}' is where the shipped models live; training never writes over them: choose another "
            "--bundle_root (or --ckpt_dir), and start from a shipped model with --init_weights vgg16"
        )
    return str(directory)
