"""LungSegmenter: a trained model plus the exact preprocessing it was trained with.

The one place where a radiograph becomes a lung mask: ``lungseg infer``, the bundle's inference
config and the MONAI Label app all go through it, so they give the same masks for the same file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, NormalizeIntensityd, Resized, ScaleIntensityRangePercentilesd

from lungseg_monai.engine.checkpoint import CheckpointError, load_network_weights
from lungseg_monai.io import Radiograph
from lungseg_monai.networks import LungUNet, backbone_of_state_dict
from lungseg_monai.transforms import radiograph_to_metatensor

__all__ = ["LungSegmenter", "ModelCard", "read_model_card"]

logger = logging.getLogger(__name__)

ModelCard = dict[str, Any]
_CARD_DEFAULTS: ModelCard = {
    "decoder_channels": [256, 128, 64, 32, 16],
    "intensity_percentiles": [0.5, 99.5],
    "intensity_mean": 0.449,
    "intensity_std": 0.226,
    "threshold": 0.5,
}


def _card_from_bundle(model_path: Path) -> ModelCard | None:
    """Read backbone/image size from the bundle's train.json when the model sits in ``<bundle>/models``."""
    config = model_path.parent.parent / "configs" / "train.json"
    if not config.is_file():
        return None
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    card = {}
    for key in ("backbone", "image_size", "decoder_channels", "intensity_percentiles", "intensity_mean", "intensity_std"):
        if key in parser.config:
            card[key] = parser.config[key]
    return card


def read_model_card(model_path: str | os.PathLike) -> ModelCard:
    """What a model needs besides its weights: from ``model.json`` beside it, else the bundle config.

    Raises:
        CheckpointError: neither source says which backbone and image size the model expects.
    """
    model_path = Path(model_path)
    sidecar = model_path.with_suffix(".json")
    card: ModelCard | None = None
    if sidecar.is_file():
        card = json.loads(sidecar.read_text())
    if card is None:
        card = _card_from_bundle(model_path)
    if not card or "image_size" not in card:
        raise CheckpointError(
            f"cannot tell the image size '{model_path}' was trained at: no '{sidecar.name}' beside it and no "
            "bundle configs/train.json above it; use the models/model.pt written by the bundle's training"
        )
    return {**_CARD_DEFAULTS, **card}


class LungSegmenter:
    """Segment the lungs on radiographs with a trained LungUNet.

    Args:
        network: a LungUNet (or TorchScript module) returning (B, 1, H, W) logits.
        card: model card (``image_size``, intensity settings, ``threshold``).
        device: where to run the network.

    Example:
        >>> seg = LungSegmenter.from_model("bundles/lung_cxr_segmentation/models/model.pt")  # doctest: +SKIP
        >>> mask = seg.segment(read_radiograph("chest.dcm"))  # (rows, columns) uint8 0/1
    """

    def __init__(self, network: torch.nn.Module, card: Mapping[str, Any], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.card = dict(card)
        size = int(self.card["image_size"])
        low, high = self.card["intensity_percentiles"]
        self.preprocess = Compose(
            [
                ScaleIntensityRangePercentilesd("image", lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True),
                Resized("image", spatial_size=(size, size), mode="area"),
                NormalizeIntensityd("image", subtrahend=self.card["intensity_mean"], divisor=self.card["intensity_std"]),
            ]
        )

    @classmethod
    def from_model(cls, model_path: str | os.PathLike, device: str | torch.device | None = None) -> LungSegmenter:
        """Load ``models/model.pt`` (state dict + ``model.json``) as written by the bundle's training."""
        model_path = Path(model_path)
        device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        card = read_model_card(model_path)
        backbone = card.get("backbone")
        if backbone is None:
            from lungseg_monai.engine.checkpoint import load_checkpoint

            backbone = backbone_of_state_dict(load_checkpoint(model_path))
        network = LungUNet(backbone=backbone, decoder_channels=card["decoder_channels"])
        load_network_weights(network, model_path)
        return cls(network, card, device)

    def prepare(self, radiograph: Radiograph) -> torch.Tensor:
        """(rows, columns) radiograph -> (1, image_size, image_size) network input."""
        return self.preprocess({"image": radiograph_to_metatensor(radiograph)})["image"].as_tensor()

    @torch.inference_mode()
    def predict_probabilities(self, radiographs: list[Radiograph]) -> list[np.ndarray]:
        """Lung probability maps at each radiograph's own (rows, columns)."""
        batch = torch.stack([self.prepare(rg) for rg in radiographs]).to(self.device)
        probs = torch.sigmoid(self.network(batch).float())
        out = []
        for prob, rg in zip(probs, radiographs):
            full = F.interpolate(prob[None], size=rg.shape, mode="bilinear", align_corners=False)[0, 0]
            out.append(full.cpu().numpy())
        return out

    def segment(self, radiograph: Radiograph) -> np.ndarray:
        """Binary (rows, columns) uint8 lung mask (0/1) of one radiograph."""
        prob = self.predict_probabilities([radiograph])[0]
        return (prob > float(self.card["threshold"])).astype(np.uint8)
