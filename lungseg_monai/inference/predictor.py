"""LungSegmenter: a trained model plus the exact preprocessing it was trained with.

The one place where a radiograph becomes a lung mask: ``lungseg infer``, the bundle's inference
config and the MONAI Label app all go through it, so they give the same masks for the same file.
The steps are separate methods so a batch runner can overlap them: :meth:`LungSegmenter.prepare`
(CPU, per image), :meth:`LungSegmenter.forward` (the network, per batch) and
:meth:`LungSegmenter.to_mask` (resize to the image, threshold, :class:`CleanLungMask`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from lungseg_monai.io.checkpoint import CheckpointError, load_checkpoint, load_network_weights
from lungseg_monai.inference.options import DEFAULT_PRECISION, auto_batch_size
from lungseg_monai.inference.precision import Precision, fp32_stages, resolve_precision
from lungseg_monai.inference.transforms import CleanLungMask, mask_postprocessing
from lungseg_monai.io import Radiograph
from lungseg_monai.networks import LungUNet, backbone_of_state_dict
from lungseg_monai.pretrained import resolve_model
from lungseg_monai.qc.mask import DEFAULT_TTA_METHOD, mask_features, perturb, perturb_features, unperturb
from lungseg_monai.qc.ood import bottleneck_features, encoder_of
from lungseg_monai.qc.quality import QCResult, QualityControl, calibration_digest, calibration_problem
from lungseg_monai.transforms import ResizeToOriginal, radiograph_preprocessing, radiograph_to_metatensor

__all__ = [
    "MODEL_CARD_KEYS",
    "LungSegmenter",
    "ModelCard",
    "QCForward",
    "is_torchscript_file",
    "model_identity",
    "read_model_card",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

ModelCard = dict[str, Any]
_CARD_DEFAULTS: ModelCard = {
    "decoder_channels": [256, 128, 64, 32, 16],
    "intensity_percentiles": [0.5, 99.5],
    "intensity_mean": 0.449,
    "intensity_std": 0.226,
    "threshold": 0.5,
}
# What a model needs besides its weights: the keys of the bundle's `model_card` (train.json) and of models/model.json
# (tests/test_bundle_flags.py keeps train.json's model_card to exactly these).
MODEL_CARD_KEYS = (
    "backbone",
    "image_size",
    "decoder_channels",
    "intensity_percentiles",
    "intensity_mean",
    "intensity_std",
    "threshold",
)
# Extra files of a TorchScript archive that may hold the model card, best first: the card itself
# (ckpt_export --config_file "['configs/train.json','models/model.json']"), then the training config.
_TS_CARD_FILE = "model.json"
_TS_CONFIG_FILES = ("train.json", "inference.json")


def _card_from_config(config: Mapping[str, Any]) -> ModelCard:
    """The model-card keys of a bundle config whose values are literals (not ``@``/``$`` expressions)."""
    card = {}
    for key in MODEL_CARD_KEYS:
        value = config.get(key)
        if value is not None and not (isinstance(value, str) and value[:1] in "@$%"):
            card[key] = value
    return card


def _card_from_bundle(model_path: Path) -> ModelCard | None:
    """Read backbone/image size from the bundle's train.json when the model sits in ``<bundle>/models``."""
    config = model_path.parent.parent / "configs" / "train.json"
    if not config.is_file():
        return None
    return _card_from_config(json.loads(config.read_text()))


# Hex digits of the weights' SHA-256 kept in a model identity: enough to tell models apart.
_IDENTITY_HASH_CHARS = 12
_HASH_CHUNK = 1 << 20


def _digest_state_dict(network: torch.nn.Module) -> hashlib._Hash:
    digest = hashlib.sha256()
    for key, value in network.state_dict().items():
        digest.update(key.encode())
        flat = value.detach().cpu().contiguous().reshape(-1)  # reshape: 0-d tensors cannot be viewed as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state-dict (names and tensor bytes): the same for a ``model.pt`` and its TorchScript
    export, different for any other weights. QC calibrations record it
    (:func:`lungseg_monai.qc.quality.calibration_problem`).

    Example:
        >>> len(weights_sha256(torch.nn.Linear(2, 1)))
        64
    """
    return _digest_state_dict(network).hexdigest()


def model_identity(model_path: str | os.PathLike | None = None, network: torch.nn.Module | None = None) -> str:
    """A short name that changes whenever the weights change: ``LungUNet-resnet50-<sha256 of the weights>``.

    The hash is of the model file's bytes (``model_path``) or, for a network held in memory, of its
    state-dict tensors. Used as the DICOM SEG's algorithm version and in the output manifest, so
    the results of two different models never look alike.

    Example:
        >>> model_identity(network=torch.nn.Linear(2, 1)).startswith("Linear-")
        True
    """
    if model_path is not None:
        digest = hashlib.sha256()
        with open(model_path, "rb") as f:
            for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    elif network is not None:
        digest = _digest_state_dict(network)
    else:
        raise ValueError("model_identity needs a model file or a network")
    name = type(network).__name__ if network is not None else "LungUNet"
    backbone = getattr(network, "backbone_name", None) if network is not None else None
    prefix = f"{name}-{backbone}" if isinstance(backbone, str) else name
    return f"{prefix}-{digest.hexdigest()[:_IDENTITY_HASH_CHARS]}"


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (``torch.jit.save``), False for a ``torch.save`` checkpoint or other file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_torchscript(path: Path, device: torch.device) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """A TorchScript archive's network and the card and config files ``ckpt_export`` may have stored in it (by
    name, those present), in one ``torch.jit.load(_extra_files=...)``.

    Not :func:`monai.data.load_net_with_metadata`: it fails on an archive without ``metadata.json`` (MONAI 1.6
    decodes the missing file's empty text as JSON), and such files are what the card reader must explain.
    """
    extras = dict.fromkeys((_TS_CARD_FILE, *_TS_CONFIG_FILES), "")
    network = torch.jit.load(str(path), map_location=device, _extra_files=extras)
    return network, {name: text.decode() if isinstance(text, bytes) else text for name, text in extras.items() if text}


def _card_from_torchscript(path: Path, extras: Mapping[str, str]) -> tuple[ModelCard | None, str, bool]:
    """Model card stored in a TorchScript file (its ``extras``), where it came from, and whether it is the
    training card.

    ``model.json`` (the card written by training) is exact; the ``train.json`` that ``ckpt_export``
    stores is the config file as written, without command-line overrides given at training.
    """
    if _TS_CARD_FILE in extras:
        return json.loads(extras[_TS_CARD_FILE]), f"the '{_TS_CARD_FILE}' stored in '{path}'", True
    for name in _TS_CONFIG_FILES:
        if name in extras:
            card = _card_from_config(json.loads(extras[name]))
            if "image_size" in card:
                return card, f"the '{name}' stored in '{path}'", False
    return None, "", False


def read_model_card(model_path: str | os.PathLike, torchscript_files: Mapping[str, str] | None = None) -> ModelCard:
    """What a model needs besides its weights (backbone, image size, intensity settings, threshold).

    ``model_path`` may name a shipped model (``vgg16``). ``torchscript_files``: the files stored in a
    TorchScript ``model_path``, when the caller has loaded it already (else it is loaded here, on the CPU).

    Looked for, in order: for a TorchScript file, a ``model.json`` stored in it; ``model.json``
    (the file's own name with ``.json``) beside the file, as written by training; for a TorchScript
    file, the ``train.json`` that ``ckpt_export`` stored in it; the bundle's ``configs/train.json``
    when the file sits in ``<bundle>/models``.

    Raises:
        CheckpointError: no source says which image size the model expects.
    """
    model_path = resolve_model(model_path)
    sidecar = model_path.with_suffix(".json")
    stored, stored_source, exact = None, "", False
    if torchscript_files is None and is_torchscript_file(model_path):
        torchscript_files = _load_torchscript(model_path, torch.device("cpu"))[1]
    if torchscript_files is not None:
        stored, stored_source, exact = _card_from_torchscript(model_path, torchscript_files)
    if stored is not None and exact:
        card, source = stored, stored_source
    elif sidecar.is_file() and sidecar != model_path:
        card, source = json.loads(sidecar.read_text()), f"'{sidecar}'"
    elif stored is not None:
        card, source = stored, stored_source
        logger.info(
            "'%s': image size %s from %s (export with models/model.json in --config_file to store "
            "the training's own model card)",
            model_path,
            card.get("image_size"),
            source,
        )
    else:
        card, source = _card_from_bundle(model_path), "the bundle's configs/train.json"
        if card and "image_size" in card:
            # train.json holds defaults: a run trained with --image_size/--backbone overrides would differ.
            logger.warning(
                "'%s' has no '%s' beside it; using image_size %s and backbone %s from %s, which is right only "
                "if the model was trained without overriding them",
                model_path,
                sidecar.name,
                card.get("image_size"),
                card.get("backbone"),
                source,
            )
    if not card or "image_size" not in card:
        raise CheckpointError(
            f"cannot tell the image size '{model_path}' was trained at: no '{sidecar.name}' beside it, no bundle "
            "configs/train.json above it and no model card stored in it; use the models/model.pt written by the "
            "bundle's training, or export it with ckpt_export --config_file \"['configs/train.json','models/model.json']\""
        )
    logger.debug("model card of '%s' from %s", model_path, source)
    return {**_CARD_DEFAULTS, **card}


@dataclass
class QCForward:
    """What the network gives a batch for quality control (:meth:`LungSegmenter.forward_qc`).

    Attributes:
        probabilities: (B, 1, h, w) lung probabilities on the network grid.
        features: (B, C) pooled bottleneck features, or None (TorchScript models).
        tta_probabilities: (B, 1, h, w) probabilities of the perturbed inputs mapped back, or None.
        tta_valid: (B, 1, h, w) where ``tta_probabilities`` is defined, or None.
    """

    probabilities: torch.Tensor
    features: torch.Tensor | None = None
    tta_probabilities: torch.Tensor | None = None
    tta_valid: torch.Tensor | None = None

    def item(self, index: int) -> QCForward:
        """The ``index``-th image of the batch, keeping a batch dimension of 1."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index : index + 1]

        return QCForward(
            self.probabilities[index : index + 1],
            pick(self.features),
            pick(self.tta_probabilities),
            pick(self.tta_valid),
        )


class LungSegmenter:
    """Segment the lungs on radiographs with a trained LungUNet.

    Args:
        network: a LungUNet (or TorchScript module) returning (B, 1, H, W) logits.
        card: model card (``image_size``, intensity settings, ``threshold``).
        device: where to run the network.
        postprocess: the mask clean-up: True for :class:`CleanLungMask` with its defaults (keep
            the two largest regions, drop specks, fill holes), a configured instance, or
            None/False for the raw thresholded prediction.
        channels_last: run the network on channels-last tensors; None (default) as ``precision``
            decides (channels-last with bf16/fp16 autocast).
        identity: the model's identity (see :func:`model_identity`); computed from the network's
            weights when not given.
        quality_control: the mask quality check; default: from the card's ``"qc"`` calibration
            when it was fitted on exactly these weights (:func:`~lungseg_monai.qc.quality.calibration_problem`);
            otherwise None, :attr:`qc_unavailable_reason` says why and every verdict is ``unavailable``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` or a resolved :class:`Precision`
            (see :func:`~lungseg_monai.inference.precision.resolve_precision`); probabilities are
            always computed and thresholded in fp32.

    Example:
        >>> seg = LungSegmenter.from_model("bundles/lung_cxr_segmentation/models/model.pt")  # doctest: +SKIP
        >>> mask = seg.segment(read_radiograph("chest.dcm"))  # (rows, columns) uint8 0/1
    """

    def __init__(
        self,
        network: torch.nn.Module,
        card: Mapping[str, Any],
        device: str | torch.device = "cpu",
        postprocess: CleanLungMask | bool | None = True,
        channels_last: bool | None = None,
        identity: str | None = None,
        quality_control: QualityControl | None = None,
        precision: str | Precision = DEFAULT_PRECISION,
    ) -> None:
        self.device = torch.device(device)
        self.identity = identity or model_identity(network=network)
        self._weights_sha256: str | None = None
        self.network = network.to(self.device).eval()
        self.card = dict(card)
        self.qc_unavailable_reason: str | None = None
        if quality_control is None:
            calibration = self.card.get("qc")
            self.qc_unavailable_reason = calibration_problem(calibration, self.weights_sha256 if calibration else "")
            if self.qc_unavailable_reason is None:
                quality_control = QualityControl(calibration)
            elif calibration:  # a calibration that does not fit: say so once, loudly
                logger.warning("quality control unavailable: %s", self.qc_unavailable_reason)
        self.qc = quality_control
        self.threshold = float(self.card["threshold"])
        self.postprocess = CleanLungMask() if postprocess is True else (postprocess or None)
        self.precision = resolve_precision(precision, self.device)
        if channels_last is not None and channels_last != self.precision.channels_last:
            self.precision = Precision(self.precision.name, self.precision.device_type, bool(channels_last))
        self.network = self.precision.prepare_network(self.network)
        # The bundle's load_image[1], resize_image and normalize_image, from one definition.
        self.preprocess = radiograph_preprocessing(self.card)
        self.resize_to_original = ResizeToOriginal()
        # The bundle's mask_postprocessing after its sigmoid (forward returns probabilities), from one definition.
        self.postprocessing = Compose(
            mask_postprocessing("pred", self.threshold, ref_key="shape", sigmoid=False, clean=self.postprocess)
        )

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the network's weights (:func:`weights_sha256`), computed once."""
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.network)
        return self._weights_sha256

    @classmethod
    def from_model(
        cls,
        model_path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        postprocess: CleanLungMask | bool | None = True,
        channels_last: bool | None = None,
        precision: str | Precision = DEFAULT_PRECISION,
    ) -> LungSegmenter:
        """Load ``models/model.pt`` (state dict + ``model.json``), an exported TorchScript ``model.ts``, or a
        shipped model by name (``vgg16``, ``resnet50``; None: the default, :mod:`lungseg_monai.pretrained`).

        Raises:
            CheckpointError: the file is missing, unreadable, or its model card is missing or
                names another backbone than the weights hold.
            ValueError: CUDA was asked for but is not available.
        """
        model_path = resolve_model(model_path)
        if not model_path.is_file():
            raise CheckpointError(f"model '{model_path}' does not exist; pass the bundle's models/model.pt or model.ts")
        device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device '{device}' was asked for but CUDA is not available here; use 'cpu'")
        if is_torchscript_file(model_path):
            try:
                network, stored = _load_torchscript(model_path, device)
            except Exception as e:
                raise CheckpointError(
                    f"TorchScript model '{model_path}' cannot be loaded ({type(e).__name__}: {e})"
                ) from e
            card = read_model_card(model_path, stored)
            found = backbone_of_state_dict(network.state_dict())
            if card.get("backbone") and found and card["backbone"] != found:
                raise CheckpointError(
                    f"TorchScript model '{model_path}' holds a {found} LungUNet but its model card says "
                    f"{card['backbone']}; re-export it from the matching models/model.pt"
                )
        else:
            card = read_model_card(model_path)
            backbone = card.get("backbone") or backbone_of_state_dict(load_checkpoint(model_path))
            network = LungUNet(backbone=backbone, decoder_channels=card["decoder_channels"])
            load_network_weights(network, model_path)
        identity = model_identity(model_path, network)
        return cls(
            network,
            card,
            device,
            postprocess=postprocess,
            channels_last=channels_last,
            identity=identity,
            precision=precision,
        )

    def settings(self) -> dict[str, Any]:
        """Everything that decides the masks and verdicts this segmenter makes: model identity, threshold,
        clean-up, precision and the QC calibration (a hash of it; None when QC is unavailable).

        Two segmenters with equal settings make the same mask and verdict for the same file; the
        output manifest of ``lungseg infer`` reuses an output only when they are equal, and the
        UIDs of DICOM results derive from them (:class:`~lungseg_monai.outputs.dicom_uids.ResultUIDs`).
        """
        settings = {
            "model": self.identity,
            "image_size": int(self.card["image_size"]),
            "threshold": self.threshold,
            "postprocess": repr(self.postprocess),
            "precision": self.precision.name,
            "qc": calibration_digest(self.qc.calibration) if self.qc is not None else None,
        }
        kept = fp32_stages(self.network)
        if kept:  # bf16 with fp32 stages makes other masks than all-bf16 did
            settings["fp32_stages"] = kept
        return settings

    def result_settings(self, write_rejected: bool) -> dict[str, Any]:
        """:meth:`settings` plus whether a rejected mask gets a DICOM SEG: what decides the content of every
        output of ``lungseg infer`` and ``lungseg node`` (the SR references the SEG only when there is one)."""
        return {**self.settings(), "write_rejected": bool(write_rejected)}

    def auto_batch_size(self) -> int:
        """Images per network call when none is given, by the model's input size and this device.

        See :func:`~lungseg_monai.inference.options.auto_batch_size` (1 at 512 px on a CPU).
        """
        return auto_batch_size(int(self.card["image_size"]), self.device.type)

    def prepare(self, radiograph: Radiograph) -> torch.Tensor:
        """(rows, columns) radiograph -> (1, image_size, image_size) network input."""
        return self.preprocess({"image": radiograph_to_metatensor(radiograph)})["image"].as_tensor()

    @property
    def channels_last(self) -> bool:
        """Whether the network runs on channels-last tensors."""
        return self.precision.channels_last

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 1, image_size, image_size) inputs -> (B, 1, image_size, image_size) float32 lung probabilities.

        The network runs under :attr:`precision`; its logits are cast to float32 before the sigmoid.
        """
        return torch.sigmoid(self.precision.run(self.network, batch.to(self.device))).contiguous()

    @torch.inference_mode()
    def forward_qc(self, batch: torch.Tensor, tta: bool | None = None, tta_method: str | None = None) -> QCForward:
        """:meth:`forward` plus what quality control needs: bottleneck features and a perturbed mask.

        Args:
            batch: (B, 1, image_size, image_size) inputs.
            tta: also make a slightly zoomed and shifted prediction for ``tta_dice``; default: as the
                model's QC calibration says (no QC calibration: no).
            tta_method: ``"features"`` (decode the encoder features of this pass once more, warped:
                :func:`~lungseg_monai.qc.mask.perturb_features`) or ``"input"`` (run the network again
                on a warped input: :func:`~lungseg_monai.qc.mask.perturb`); default: as the calibration
                says, else ``"features"``.
        """
        tta = (self.qc is not None and self.qc.tta) if tta is None else tta
        if tta_method is None:
            tta_method = self.qc.tta_method if self.qc is not None else DEFAULT_TTA_METHOD
        if encoder_of(self.network) is None:
            return QCForward(self.forward(batch))
        batch = batch.to(self.device)
        if tta and tta_method == "features" and not hasattr(self.network, "decode"):
            raise ValueError(
                f"QC's feature agreement check needs a LungUNet (encode/decode); {type(self.network).__name__} has "
                "none: calibrate this model with tta_method 'input'"
            )
        if tta and tta_method == "features":
            with bottleneck_features(self.network) as features:
                logits = self.precision.run(self._decode_twice, batch)
            probabilities = torch.sigmoid(logits).contiguous()
            size = batch.shape[0]
            out = QCForward(probabilities[:size], features[0])
            out.tta_probabilities, out.tta_valid = unperturb(probabilities[size:])
            return out
        with bottleneck_features(self.network) as features:
            probabilities = self.forward(batch)
        out = QCForward(probabilities, features[0])
        if tta:
            out.tta_probabilities, out.tta_valid = unperturb(self.forward(perturb(batch)))
        return out

    def _decode_twice(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, ...) inputs -> (2B, 1, H, W) logits: the batch's, then those of its perturbed encoder features."""
        height, width = batch.shape[-2], batch.shape[-1]
        features = self.network.encode(batch)
        decoded = [self.network.decode(features, height, width)]
        decoded.append(self.network.decode(perturb_features(features), height, width))
        return torch.cat(decoded)

    def assess(self, qc_forward: QCForward) -> QCResult:
        """The quality verdict of one image's mask from its :meth:`forward_qc` output (batch of 1)."""
        if self.qc is None:
            return QCResult.unavailable(self.qc_unavailable_reason or calibration_problem(None, ""))
        return self.qc.assess(self.qc_features(qc_forward), self._image_features(qc_forward))

    def qc_features(self, qc_forward: QCForward) -> dict[str, float]:
        """:func:`lungseg_monai.qc.mask.mask_features` of one image's mask on the network grid."""
        def plane(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t[0, 0].float().cpu().numpy()

        probabilities = qc_forward.probabilities[0]
        mask = self.to_mask(probabilities, probabilities.shape[-2:])
        return mask_features(
            mask,
            plane(qc_forward.probabilities),
            plane(qc_forward.tta_probabilities),
            plane(qc_forward.tta_valid),
            self.threshold,
        )

    @staticmethod
    def _image_features(qc_forward: QCForward) -> np.ndarray | None:
        return None if qc_forward.features is None else qc_forward.features[0].numpy()

    @torch.inference_mode()
    def to_mask(self, probability: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """(1, h, w) probability -> (rows, columns) uint8 0/1 mask: resized, thresholded, cleaned
        (:func:`~lungseg_monai.inference.mask_postprocessing`)."""
        shape = (int(shape[0]), int(shape[1]))
        mask = self.postprocessing({"pred": probability, "shape": shape})["pred"][0]
        return mask.cpu().numpy().astype(np.uint8)

    def predict_probabilities(self, radiographs: Sequence[Radiograph]) -> list[np.ndarray]:
        """Lung probability maps (float32, (rows, columns)) at each radiograph's own size."""
        probs = self.forward(torch.stack([self.prepare(rg) for rg in radiographs]))
        with torch.inference_mode():
            return [self.resize_to_original(p, rg.shape)[0].cpu().numpy() for p, rg in zip(probs, radiographs)]

    def segment_batch(self, radiographs: Sequence[Radiograph]) -> list[np.ndarray]:
        """Binary (rows, columns) uint8 lung masks (0/1) of several radiographs, one network call."""
        probs = self.forward(torch.stack([self.prepare(rg) for rg in radiographs]))
        return [self.to_mask(p, rg.shape) for p, rg in zip(probs, radiographs)]

    def segment_with_qc(self, radiograph: Radiograph) -> tuple[np.ndarray, QCResult]:
        """The mask of :meth:`segment` and its quality verdict (what ``lungseg infer`` writes for this file)."""
        qc_forward = self.forward_qc(self.prepare(radiograph)[None])
        return self.to_mask(qc_forward.probabilities[0], radiograph.shape), self.assess(qc_forward)

    def segment(self, radiograph: Radiograph) -> np.ndarray:
        """Binary (rows, columns) uint8 lung mask (0/1) of one radiograph: what ``lungseg infer`` writes (x255)."""
        return self.segment_batch([radiograph])[0]
