"""The choices and defaults of ``lungseg infer``, importable without torch or MONAI.

``lungseg --help`` builds its parser from these; the modules that use them (the runner, the
mask clean-up, the precision) import them from here.
"""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_BATCH_SIZE",
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
