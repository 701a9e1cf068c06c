"""Do bf16 (or fp16) masks agree with fp32 masks? Dice between the two on real radiographs.

For every image in a folder, the model's mask at ``--precision`` (default bf16) is compared with
its fp32 mask; with ``--masks``, both are also scored against the reference masks. Prints a
Markdown table (mean/min Dice, pixels that flip) and, with ``--layers``, where in the network the
two precisions part: for each top-level block, the relative error of its output on the first
batch.

Example::

    python scripts/precision_check.py bundles/lung_cxr_segmentation/models/model.pt \\
        ../shared/data/cxr_lung/images --masks ../shared/data/cxr_lung/masks --every 4 --layers
    python scripts/precision_check.py runs/r50/models/model.pt --split runs/r50/models/datalist_split.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg_monai.inference import LungSegmenter
from lungseg_monai.io import read_mask, read_radiograph
from lungseg_monai.qc.mask import dice

REFERENCE_PRECISION = "fp32"
LOW_PRECISIONS = ("bf16", "fp16")
DEFAULT_BATCH_SIZE = 8


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def _named_blocks(network: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The network's blocks two levels down (encoder stages, decoder blocks, head)."""
    blocks = {}
    for name, child in network.named_children():
        grandchildren = list(child.named_children())
        for sub, module in grandchildren or [("", child)]:
            blocks[f"{name}.{sub}" if sub else name] = module
    return blocks


def layer_errors(
    reference: LungSegmenter, other: LungSegmenter, batch: torch.Tensor
) -> list[tuple[str, float, float]]:
    """Per block, in forward order: its output's relative L2 error ``|d| / |ref|`` and ``max|d| / max|ref|``."""
    outputs: dict[str, dict[str, torch.Tensor]] = {"ref": {}, "other": {}}

    def hook(kind: str, name: str) -> Any:
        def save(_module: torch.nn.Module, _inputs: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                outputs[kind][name] = out.detach().float().clone()  # later in-place ReLUs must not alter it

        return save

    handles = []
    for kind, segmenter in (("ref", reference), ("other", other)):
        for name, module in _named_blocks(segmenter.network).items():
            handles.append(module.register_forward_hook(hook(kind, name)))
    try:
        reference.forward(batch)
        other.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    errors = []
    for name, ref in outputs["ref"].items():
        if name in outputs["other"] and outputs["other"][name].shape == ref.shape:
            difference = outputs["other"][name] - ref
            l2 = float(difference.norm()) / (float(ref.norm()) or 1.0)
            errors.append((name, l2, float(difference.abs().max()) / (float(ref.abs().max()) or 1.0)))
    return errors


def folder_pairs(images: Path, masks: Path | None, every: int) -> list[tuple[Path, Path | None]]:
    """(image, reference mask or None) for every ``every``-th image of a folder, by name."""
    files = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith("."))[::every]
    return [(f, masks / f.name if masks is not None else None) for f in files]


def split_pairs(split_file: Path, part: str) -> list[tuple[Path, Path | None]]:
    """(image, label) of one part (``test``, ``validation`` ...) of a bundle's ``models/datalist_split.json``."""
    entries = json.loads(split_file.read_text())[part]
    return [(Path(e["image"]), Path(e["label"]) if e.get("label") else None) for e in entries]


def compare(
    model: Path, pairs: list[tuple[Path, Path | None]], precision: str, batch_size: int, layers: bool
) -> dict[str, Any]:
    """Agreement of ``precision`` with fp32 over (image, reference mask or None) pairs."""
    reference = LungSegmenter.from_model(model, device="cpu", precision=REFERENCE_PRECISION)
    other = LungSegmenter.from_model(model, device="cpu", precision=precision)
    files = [image for image, _ in pairs]
    truths = dict(pairs)
    rows: list[dict[str, Any]] = []
    seconds = {REFERENCE_PRECISION: 0.0, other.precision.name: 0.0}
    blocks: list[tuple[str, float, float]] = []
    for group in _batches(files, batch_size):
        radiographs = [read_radiograph(f) for f in group]
        inputs = torch.stack([reference.prepare(rg) for rg in radiographs])
        if layers and not blocks:
            blocks = layer_errors(reference, other, inputs)
        probabilities = {}
        for segmenter in (reference, other):
            start = time.perf_counter()
            probabilities[segmenter.precision.name] = segmenter.forward(inputs)
            seconds[segmenter.precision.name] += time.perf_counter() - start
        ref_probs, other_probs = probabilities[REFERENCE_PRECISION], probabilities[other.precision.name]
        for i, (path, rg) in enumerate(zip(group, radiographs)):
            ref_mask = reference.to_mask(ref_probs[i], rg.shape)
            other_mask = other.to_mask(other_probs[i], rg.shape)
            row = {
                "name": path.name,
                "agreement_dice": dice(ref_mask, other_mask),
                "flipped_pixels": int((ref_mask != other_mask).sum()),
                "max_probability_difference": float((ref_probs[i] - other_probs[i]).abs().max()),
            }
            truth_path = truths[path]
            if truth_path is not None and truth_path.is_file():
                truth = read_mask(truth_path).pixels > 0
                row["test_dice_" + REFERENCE_PRECISION] = dice(ref_mask, truth)
                row["test_dice_" + other.precision.name] = dice(other_mask, truth)
            rows.append(row)
    return {
        "model": str(model),
        "identity": reference.identity,
        "precision": other.precision.name,
        "images": len(rows),
        "network_seconds": seconds,
        "rows": rows,
        "layers": blocks,
    }


def summary_table(result: dict[str, Any]) -> str:
    """A Markdown table of mean and min of each per-image number."""
    rows = result["rows"]
    lines = [
        f"{result['images']} images, model {result['identity']}, {result['precision']} vs {REFERENCE_PRECISION}; "
        f"network time {', '.join(f'{k} {v:.1f} s' for k, v in result['network_seconds'].items())}",
        "",
        "| quantity | mean | min | max |",
        "|---|---|---|---|",
    ]
    for key in [k for k in rows[0] if k != "name"] if rows else []:
        values = np.array([row[key] for row in rows if key in row], dtype=float)
        lines.append(f"| {key} | {values.mean():.5f} | {values.min():.5f} | {values.max():.5f} |")
    if result["layers"]:
        lines += ["", "| block | relative L2 error | relative max error |", "|---|---|---|"]
        lines += [f"| {name} | {l2:.2e} | {peak:.2e} |" for name, l2, peak in result["layers"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="models/model.pt (model.json beside it) or model.ts")
    parser.add_argument("images", type=Path, nargs="?", help="folder of radiographs (or give --split)")
    parser.add_argument("--masks", type=Path, default=None, help="folder of reference masks named like the images")
    parser.add_argument("--precision", choices=LOW_PRECISIONS, default="bf16")
    parser.add_argument("--every", type=int, default=1, help="use every N-th image (sorted by name)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--layers", action="store_true", help="also report per-block relative errors (first batch)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-image numbers here")
    parser.add_argument(
        "--split", type=Path, default=None, help="a bundle's models/datalist_split.json: use its --part images and labels"
    )
    parser.add_argument("--part", default="test", help="part of --split to use (default: test)")
    args = parser.parse_args(argv)
    if args.split is not None:
        pairs = split_pairs(args.split, args.part)[:: args.every]
    elif args.images is None or not args.images.is_dir():
        parser.error(f"images folder '{args.images}' does not exist (give a folder or --split)")
    else:
        pairs = folder_pairs(args.images, args.masks, args.every)
    result = compare(args.model, pairs, args.precision, args.batch_size, args.layers)
    print(summary_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
