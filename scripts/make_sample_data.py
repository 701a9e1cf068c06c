"""Build the small default dataset embedded in the MONAI bundle.

Picks embeddable (CC BY) chest X-ray / lung-mask pairs from the shared
``cxr_lung`` collection, balancing views, downsizes them to at most 512 px
and writes them with a manifest and an attribution file to
``bundles/lung_cxr_segmentation/sample_data``.

Usage::

    python scripts/make_sample_data.py [--source DIR] [--count 36] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cxr_lung"
DEFAULT_OUT = REPO / "bundles" / "lung_cxr_segmentation" / "sample_data"
VIEWS = ("PA", "AP_Supine", "AP")

ATTRIBUTION_HEADER = """\
# Sample data: attribution and licences

These {n} chest radiographs with lung masks are the bundle's default dataset.

- **Images**: COVID-19 image data collection — J. P. Cohen, P. Morrison, L. Dao,
  K. Roth, T. Q. Duong, M. Ghassemi, "COVID-19 Image Data Collection: Prospective
  Predictions Are the Future", arXiv:2006.11988, 2020
  (<https://github.com/ieee8023/covid-chestxray-dataset>). Each image keeps its own
  licence, listed below; only CC BY 3.0 / CC BY 4.0 images were selected.
- **Masks**: lung polygons from the V7 Labs COVID-19 X-ray annotations
  (<https://github.com/v7labs/covid-19-xray-dataset>), CC BY 4.0, rasterised to
  binary masks (255 = lung, left and right lung merged; retrocardiac region included).

Changes: images and masks were downsized for this project so that the longest side is
at most {max_side} px (images: Lanczos, 8-bit greyscale; masks: nearest neighbour,
values 0/255). Same file name in `images/` and `masks/`.

| name | source file | licence | view | original size (w x h) |
|---|---|---|---|---|
"""


def read_manifest(source: Path) -> list[dict[str, str]]:
    """Return the manifest rows of the embeddable pairs, sorted by name."""
    with open(source / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["embeddable"] == "True"]
    return sorted(rows, key=lambda r: r["name"])


def view_quotas(available: dict[str, int], count: int) -> dict[str, int]:
    """Split ``count`` as evenly as possible over views, capped by availability."""
    quotas = dict.fromkeys(available, 0)
    left = min(count, sum(available.values()))
    while left:
        open_views = [v for v in available if quotas[v] < available[v]]
        for v in sorted(open_views, key=lambda v: quotas[v])[:left]:
            quotas[v] += 1
            left -= 1
    return quotas


def select(rows: list[dict[str, str]], count: int, seed: int) -> list[dict[str, str]]:
    """Deterministically pick ``count`` rows, balancing views."""
    by_view = {v: [r for r in rows if r["view"] == v] for v in VIEWS}
    by_view = {v: rs for v, rs in by_view.items() if rs}
    quotas = view_quotas({v: len(rs) for v, rs in by_view.items()}, count)
    rng = random.Random(seed)
    picked = [r for v, rs in by_view.items() for r in rng.sample(rs, quotas[v])]
    return sorted(picked, key=lambda r: r["name"])


def downsize(image: Image.Image, mask: Image.Image, max_side: int) -> tuple[Image.Image, Image.Image]:
    """Resize an image (Lanczos) and its mask (nearest, 0/255) to longest side <= max_side."""
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image.convert("L").resize(size, Image.LANCZOS) if scale < 1 else image.convert("L")
    mask = mask.convert("L").resize(size, Image.NEAREST) if scale < 1 else mask.convert("L")
    mask = Image.fromarray(np.where(np.asarray(mask) > 127, 255, 0).astype(np.uint8))
    return image, mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="cxr_lung folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output sample_data folder")
    parser.add_argument("--count", type=int, default=36, help="number of pairs")
    parser.add_argument("--max-side", type=int, default=512, help="longest side in px")
    parser.add_argument("--seed", type=int, default=0, help="selection seed")
    args = parser.parse_args(argv)

    picked = select(read_manifest(args.source), args.count, args.seed)
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)

    manifest, table = [], []
    for r in picked:
        name = r["name"]
        with Image.open(args.source / "images" / f"{name}.png") as im, Image.open(
            args.source / "masks" / f"{name}.png"
        ) as mk:
            image, mask = downsize(im, mk, args.max_side)
        image.save(args.out / "images" / f"{name}.png", optimize=True)
        mask.save(args.out / "masks" / f"{name}.png", optimize=True)
        manifest.append([name, *image.size, r["patient"], r["view"], r["license"], r["source_file"]])
        size = f"{r['orig_width']} x {r['orig_height']}"
        table.append(f"| {name} | {r['source_file']} | {r['license']} | {r['view']} | {size} |")

    with open(args.out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        # patient: the bundle's training splits keep each patient's films on one side
        writer.writerow(["name", "width", "height", "patient", "view", "license", "source_file"])
        writer.writerows(manifest)
    text = ATTRIBUTION_HEADER.format(n=len(picked), max_side=args.max_side)
    (args.out / "ATTRIBUTION.md").write_text(text + "\n".join(table) + "\n")
    print(f"wrote {len(picked)} pairs to {args.out}")


if __name__ == "__main__":
    main()
