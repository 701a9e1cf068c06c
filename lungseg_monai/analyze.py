"""``lungseg analyze DATA_DIR``: what is in a dataset before training on it.

Reports counts, unpaired files, unreadable files, image sizes, bit depths, intensity statistics
and the lung-fraction distribution, and writes a PNG grid of sample images with their masks
outlined, so problems (wrong masks, inverted images, odd sizes) are seen before a long run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lungseg_monai.data import datalist_from_folder
from lungseg_monai.io import RadiographReadError, read_mask, read_radiograph
from lungseg_monai.outputs import atomic_path, overlay_contours, save_png

__all__ = ["analyze_dataset", "save_sample_grid", "add_parser"]

logger = logging.getLogger(__name__)

GRID_TILE = 192  # pixels per grid cell side
GRID_COLUMNS = 4


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": float(arr.min()),
        "p5": float(np.percentile(arr, 5)),
        "median": float(np.median(arr)),
        "mean": float(arr.mean()),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def analyze_dataset(data_dir: str | os.PathLike, images: str = "images", masks: str = "masks") -> dict[str, Any]:
    """Read every pair in ``data_dir`` and summarise it.

    Returns:
        A JSON-serialisable report: ``n_pairs``, ``unpaired``, ``unreadable`` (file + reason),
        ``widths``/``heights`` statistics, ``bit_depths`` and ``formats`` counts, ``intensity``
        (per-image mean/std statistics), ``lung_fraction`` statistics and ``empty_masks``.
    """
    items, unpaired = datalist_from_folder(data_dir, images=images, masks=masks)
    widths, heights, means, stds, fractions = [], [], [], [], []
    bits: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    unreadable: list[dict[str, str]] = []
    empty_masks: list[str] = []
    for item in items:
        try:
            image = read_radiograph(item["image"])
            mask = read_mask(item["label"])
        except RadiographReadError as e:
            unreadable.append({"file": e.path, "reason": e.reason})
            continue
        if mask.shape != image.shape:
            unreadable.append({"file": item["label"], "reason": f"mask {mask.shape} differs from image {image.shape}"})
            continue
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        bits[str(image.meta.get("bits_stored"))] += 1
        formats[Path(item["image"]).suffix.lower() or "(none)"] += 1
        means.append(float(image.pixels.mean()))
        stds.append(float(image.pixels.std()))
        fraction = float(mask.pixels.mean())
        fractions.append(fraction)
        if fraction == 0:
            empty_masks.append(item["label"])
    return {
        "data_dir": str(data_dir),
        "n_pairs": len(items),
        "n_readable": len(widths),
        "unpaired": unpaired,
        "unreadable": unreadable,
        "widths": _stats(widths),
        "heights": _stats(heights),
        "bit_depths": dict(bits),
        "formats": dict(formats),
        "intensity": {"mean": _stats(means), "std": _stats(stds)},
        "lung_fraction": _stats(fractions),
        "lung_fraction_histogram": np.histogram(fractions, bins=10, range=(0, 1))[0].tolist() if fractions else [],
        "empty_masks": empty_masks,
    }


def _tile(image_path: str, mask_path: str) -> np.ndarray:
    image = read_radiograph(image_path)
    mask = read_mask(mask_path)
    rgb = Image.fromarray(overlay_contours(image.pixels, np.zeros(image.shape, bool), mask.pixels > 0))
    rgb.thumbnail((GRID_TILE, GRID_TILE))
    tile = Image.new("RGB", (GRID_TILE, GRID_TILE))
    tile.paste(rgb, ((GRID_TILE - rgb.width) // 2, (GRID_TILE - rgb.height) // 2))
    return np.asarray(tile)


def save_sample_grid(
    data_dir: str | os.PathLike, output: str | os.PathLike, n_samples: int = 16, seed: int = 0
) -> Path:
    """A PNG grid of up to ``n_samples`` random images with their mask outlined in green."""
    items, _ = datalist_from_folder(data_dir)
    chosen = random.Random(seed).sample(items, min(n_samples, len(items)))
    tiles = []
    for item in chosen:
        try:
            tiles.append(_tile(item["image"], item["label"]))
        except RadiographReadError as e:
            logger.warning("sample grid: skipping %s", e)
    if not tiles:
        raise ValueError(f"no readable image/mask pair in '{data_dir}' to draw")
    rows = math.ceil(len(tiles) / GRID_COLUMNS)
    grid = np.zeros((rows * GRID_TILE, GRID_COLUMNS * GRID_TILE, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, GRID_COLUMNS)
        grid[r * GRID_TILE : (r + 1) * GRID_TILE, c * GRID_TILE : (c + 1) * GRID_TILE] = tile
    return save_png(grid, output)


def _format_report(report: dict[str, Any]) -> str:
    def fmt(stats: dict[str, float], digits: int = 0) -> str:
        if not stats:
            return "n/a"
        return ", ".join(f"{k} {v:.{digits}f}" for k, v in stats.items())

    lines = [
        f"dataset: {report['data_dir']}",
        f"pairs: {report['n_pairs']} ({report['n_readable']} readable)",
        f"images without mask: {len(report['unpaired']['images_without_mask'])}, "
        f"masks without image: {len(report['unpaired']['masks_without_image'])}",
        f"widths: {fmt(report['widths'])}",
        f"heights: {fmt(report['heights'])}",
        f"bit depths: {report['bit_depths']}; formats: {report['formats']}",
        f"intensity mean per image: {fmt(report['intensity']['mean'], 1)}",
        f"lung fraction: {fmt(report['lung_fraction'], 3)}",
        f"lung fraction histogram (10 bins over 0..1): {report['lung_fraction_histogram']}",
        f"empty masks: {len(report['empty_masks'])}",
    ]
    for bad in report["unreadable"]:
        lines.append(f"unreadable: {bad['file']}: {bad['reason']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = analyze_dataset(args.data_dir)
    print(_format_report(report))
    out_dir = Path(args.output) if args.output else Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "dataset_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    grid = save_sample_grid(args.data_dir, out_dir / "dataset_samples.png", n_samples=args.samples)
    print(f"report: {out_dir / 'dataset_report.json'}\nsample grid: {grid}")
    return 1 if report["unreadable"] else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="summarise a dataset folder (images/ + masks/) and draw a sample grid"
    )
    parser.add_argument("data_dir", help="folder with images/ and masks/ paired by file name")
    parser.add_argument("-o", "--output", help="folder for dataset_report.json and dataset_samples.png (default: .)")
    parser.add_argument("--samples", type=int, default=16, help="images in the sample grid (default 16)")
    parser.set_defaults(func=_run)
