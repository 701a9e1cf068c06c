"""Writing results: atomic files, masks and overlays."""

from __future__ import annotations

from lungseg_monai.outputs.atomic import atomic_path, save_png
from lungseg_monai.outputs.overlay import mask_contour, overlay_contours, save_overlay, to_display_uint8

__all__ = ["atomic_path", "mask_contour", "overlay_contours", "save_overlay", "save_png", "to_display_uint8"]
