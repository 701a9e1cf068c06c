"""The choices and defaults of ``lungseg infer``, importable without torch or MONAI.

``lungseg --help`` builds its parser from these; the modules that use them (the runner, the
mask clean-up, the precision) import them from here.
"""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "auto_batch_size",
    "DEFAULT_FORMATS",
    "DEFAULT_MIN_SIZE_FRACTION",
    "DEFAULT_NUM_COMPONENTS",
    "DEFAULT_PRECISION",
    "DEFAULT_WORKERS",
    "FORMATS",
    "PRECISIONS",
]

FORMATS = ("mask", "overlay", "nifti", "dicomseg", "dicomsr", "dicomsc", "measurements")
DEFAULT_FORMATS = ("mask", "overlay", "dicomseg", "measurements")
DEFAULT_BATCH_SIZE = 4
# On a CPU the fastest batch holds about this many input pixels: ResNet50-UNet, bf16, 2 cores
# (BENCHMARKS.md): 512 px is fastest at batch 1 (6.3 images/s; batch 4: 4.2), 256 px at 4, 128 px at 8.
CPU_BATCH_PIXELS = 512 * 512
MAX_CPU_BATCH_SIZE = 8
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

# Mask clean-up. Two lungs; a region touching both (lungs merged over the mediastinum) counts as one.
DEFAULT_NUM_COMPONENTS = 2
# A region below 0.5% of the image (about 1300 px at 512x512) is a speck, not a lung: each of the
# 322 annotated films in ../shared/data/cxr_lung has exactly two lung regions and no holes, and
# the smaller lung covers at least 4.5% of its image.
DEFAULT_MIN_SIZE_FRACTION = 0.005

# Network precision: "auto" picks bf16 on CPUs with bf16 instructions, fp16 AMP on CUDA, else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_PRECISION = "auto"


def auto_batch_size(image_size: int, device_type: str = "cpu") -> int:
    """Images per network call when none is given: on a CPU as many as fit :data:`CPU_BATCH_PIXELS`
    (1 at 512 px, 4 at 256, 8 at 128), elsewhere :data:`DEFAULT_BATCH_SIZE`.

    Example:
        >>> auto_batch_size(512), auto_batch_size(256), auto_batch_size(128), auto_batch_size(512, "cuda")
        (1, 4, 8, 4)
    """
    if device_type != "cpu":
        return DEFAULT_BATCH_SIZE
    return max(1, min(MAX_CPU_BATCH_SIZE, CPU_BATCH_PIXELS // max(1, int(image_size)) ** 2))
