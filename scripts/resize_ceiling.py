"""How much Dice the network's input size alone costs: reference masks shrunk and grown back.

The bundle shrinks each label to ``image_size`` (area interpolation) and resizes predicted
probabilities back to the original size (bilinear, :class:`lungseg_monai.transforms.ResizeToOriginal`)
before thresholding at 0.5. A perfect network can do no better than the reference mask put through
that round trip, so its Dice against the reference is the ceiling at that size:

- ``soft``: the shrunk mask kept as a probability (the best a network could output);
- ``binary``: the shrunk mask thresholded at 0.5 first (what the training labels are).

Example::

    python scripts/resize_ceiling.py ../shared/data/cxr_lung/masks --sizes 128 256 --every 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lungseg_monai.io import read_mask
from lungseg_monai.qc.mask import dice
from lungseg_monai.transforms import ResizeToOriginal


def round_trip_dice(mask: np.ndarray, size: int) -> tuple[float, float]:
    """(soft, binary) Dice of ``mask`` against itself after a round trip through ``size`` px."""
    reference = mask > 0
    small = F.interpolate(torch.from_numpy(reference.astype(np.float32))[None, None], size=(size, size), mode="area")[0]
    back = ResizeToOriginal()
    soft = back(small, reference.shape)[0].numpy() >= 0.5
    binary = back((small >= 0.5).float(), reference.shape)[0].numpy() >= 0.5
    return dice(soft, reference), dice(binary, reference)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("masks", type=Path, help="folder of reference masks")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--every", type=int, default=1, help="use every N-th mask (sorted by name)")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.masks.iterdir() if p.is_file() and not p.name.startswith("."))[:: args.every]
    masks = [read_mask(f).pixels for f in files]
    print(f"{len(masks)} masks from {args.masks}")
    print("| size | soft Dice mean | min | binary Dice mean | min |\n|---|---|---|---|---|")
    for size in args.sizes:
        soft, binary = np.array([round_trip_dice(m, size) for m in masks]).T
        print(f"| {size} | {soft.mean():.4f} | {soft.min():.4f} | {binary.mean():.4f} | {binary.min():.4f} |")


if __name__ == "__main__":
    main()
