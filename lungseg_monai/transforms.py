"""MONAI transforms for chest radiographs: loading images and lung masks, preprocessing, mapping predictions back.

Each transform comes as an array version and a dictionary (``d``) version, like MONAI's own. The
preprocessing a model was trained with is defined once, here: :func:`intensity_scaling`,
:func:`network_resize` and :func:`intensity_normalization` are what the bundle configs instantiate,
and :func:`radiograph_preprocessing` chains them from a model card for ``LungSegmenter``.
Loaded tensors are channel-first (1, rows, columns) MetaTensors whose ``affine`` carries the pixel
spacing (1 mm when unknown) and whose meta keeps what is needed to map a prediction back:
``filename_or_obj``, ``original_shape`` (rows, columns), ``spacing`` ((row, col) mm, NaN when
unknown) and ``spacing_known``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensityd,
    Resized,
    ScaleIntensityRangePercentilesd,
    Transform,
)

from lungseg_monai.io import Radiograph, check_mask_matches, read_mask, read_radiograph

__all__ = [
    "intensity_normalization",
    "intensity_scaling",
    "network_resize",
    "radiograph_preprocessing",
    "LoadRadiograph",
    "LoadRadiographd",
    "LoadLungMask",
    "LoadLungMaskd",
    "ResizeToOriginal",
    "ResizeToOriginald",
    "radiograph_to_metatensor",
]

UNKNOWN_SPACING = float("nan")


def radiograph_to_metatensor(rg: Radiograph, dtype: torch.dtype = torch.float32) -> MetaTensor:
    """(rows, columns) radiograph -> (1, rows, columns) MetaTensor with spacing in its affine."""
    spacing = rg.spacing
    affine = torch.eye(3, dtype=torch.float64)
    if spacing is not None:
        affine[0, 0], affine[1, 1] = spacing
    meta = {
        "filename_or_obj": rg.path,
        "original_shape": torch.tensor(rg.shape),
        "spacing": torch.tensor(spacing if spacing is not None else (UNKNOWN_SPACING, UNKNOWN_SPACING)),
        "spacing_known": spacing is not None,
        "polarity_corrected": bool(rg.meta.get("polarity_corrected", False)),
    }
    for key in ("sop_instance_uid", "modality", "view_position"):
        if key in rg.meta:
            meta[key] = rg.meta[key]
    data = torch.as_tensor(np.ascontiguousarray(rg.pixels)[None], dtype=dtype)
    return MetaTensor(data, affine=affine, meta=meta)


class LoadRadiograph(Transform):
    """Load a chest radiograph file as a (1, rows, columns) float32 MetaTensor.

    Intensities are what the file means (LUTs applied, MONOCHROME1 inverted); scale them
    afterwards, e.g. with ``ScaleIntensityRangePercentiles``, the same way for every source.

    Args:
        polarity: see :func:`lungseg_monai.io.read_radiograph`.
    """

    def __init__(self, polarity: Literal["auto", "header"] = "auto") -> None:
        self.polarity = polarity

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        return radiograph_to_metatensor(read_radiograph(filename, polarity=self.polarity))


class LoadRadiographd(MapTransform):
    """Dictionary version of :class:`LoadRadiograph`."""

    def __init__(
        self, keys: KeysCollection, polarity: Literal["auto", "header"] = "auto", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadRadiograph(polarity=polarity)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class LoadLungMask(Transform):
    """Load a lung mask as a (1, rows, columns) float32 MetaTensor of 0/1 (any non-zero pixel is lung).

    Args:
        reference_shape: when given, a mask of another (rows, columns) size is an error naming
            both files (``reference_path`` names the image).
    """

    def __call__(
        self,
        filename: str | os.PathLike,
        reference_shape: Sequence[int] | None = None,
        reference_path: str | None = None,
    ) -> MetaTensor:
        mask = read_mask(filename)
        if reference_shape is not None:
            check_mask_matches(mask, (int(reference_shape[0]), int(reference_shape[1])), str(reference_path))
        return radiograph_to_metatensor(mask)


class LoadLungMaskd(MapTransform):
    """Dictionary version of :class:`LoadLungMask`; checks each mask against ``image_key``'s image.

    Args:
        keys: mask keys.
        image_key: key of the already loaded image; None to skip the size check.
    """

    def __init__(self, keys: KeysCollection, image_key: str | None = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.loader = LoadLungMask()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key) if self.image_key is not None else None
        shape = path = None
        if isinstance(image, MetaTensor):
            shape = tuple(int(v) for v in image.meta["original_shape"])
            path = image.meta["filename_or_obj"]
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], reference_shape=shape, reference_path=path)
        return d


class ResizeToOriginal(Transform):
    """Resize a (C, h, w) prediction back to the (rows, columns) of the image it was made from.

    Probabilities are interpolated bilinearly (smooth borders), then the caller thresholds.

    Not MONAI's ``Invertd``, because it does not give the same masks: it inverts ``Resized`` with
    the forward mode (``"area"``, which upsamples blockily) or, with ``nearest_interp=True``,
    nearest, and has no bilinear option. On a real 1024 x 763 film (cxr_lung 01E392EE...)
    preprocessed to 512 px, the probabilities differ by up to 0.22 (area) / 0.48 (nearest) from
    the bilinear ones and 2158 / 3292 pixels flip at 0.5. It would also need each prediction to
    carry its image's ``applied_operations`` through the batched network call, where
    :class:`~lungseg_monai.inference.LungSegmenter` sends plain tensors; this needs only the shape.
    """

    def __call__(self, pred: torch.Tensor, original_shape: Sequence[int]) -> torch.Tensor:
        size = (int(original_shape[0]), int(original_shape[1]))
        if tuple(pred.shape[-2:]) == size:
            return pred
        out = F.interpolate(torch.as_tensor(pred)[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        if isinstance(pred, MetaTensor):
            out = MetaTensor(out, meta=dict(pred.meta))
        return out


class ResizeToOriginald(MapTransform):
    """Dictionary version of :class:`ResizeToOriginal`: the size is ``ref_key``'s ``original_shape`` meta (an
    image loaded by :class:`LoadRadiographd`) or ``ref_key`` itself when it holds the (rows, columns)."""

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.resizer = ResizeToOriginal()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        if isinstance(ref, MetaTensor) and "original_shape" in ref.meta:
            shape = ref.meta["original_shape"]
        elif isinstance(ref, Sequence) and len(ref) == 2 and all(isinstance(v, (int, np.integer)) for v in ref):
            shape = ref
        else:
            raise ValueError(
                f"'{self.ref_key}' is neither an image with 'original_shape' meta (load it with LoadRadiographd) "
                "nor a (rows, columns) shape"
            )
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key], shape)
        return d


def intensity_scaling(keys: KeysCollection, percentiles: Sequence[float]) -> ScaleIntensityRangePercentilesd:
    """Grey values between the ``percentiles`` (e.g. 0.5 and 99.5) of each image mapped to 0..1, clipped."""
    low, high = (float(p) for p in percentiles)
    return ScaleIntensityRangePercentilesd(keys, lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True)


def network_resize(keys: KeysCollection, image_size: int) -> Resized:
    """Resized to the network's ``image_size`` x ``image_size`` by area averaging (images and reference masks)."""
    return Resized(keys, spatial_size=(int(image_size), int(image_size)), mode="area")


def intensity_normalization(keys: KeysCollection, mean: float, std: float) -> NormalizeIntensityd:
    """``(x - mean) / std`` with the model's fixed statistics."""
    return NormalizeIntensityd(keys, subtrahend=float(mean), divisor=float(std))


def radiograph_preprocessing(card: Mapping[str, Any], keys: KeysCollection = "image") -> Compose:
    """A loaded radiograph -> the network's input, with the settings of a model card (``intensity_percentiles``,
    ``image_size``, ``intensity_mean``, ``intensity_std``): the steps the bundle's training ran.

    Example:
        >>> card = {"intensity_percentiles": [0.5, 99.5], "image_size": 64, "intensity_mean": 0.45, "intensity_std": 0.23}
        >>> radiograph_preprocessing(card)({"image": torch.rand(1, 100, 80)})["image"].shape
        torch.Size([1, 64, 64])
    """
    return Compose(
        [
            intensity_scaling(keys, card["intensity_percentiles"]),
            network_resize(keys, card["image_size"]),
            intensity_normalization(keys, card["intensity_mean"], card["intensity_std"]),
        ]
    )
