"""Pseudo-labels for semi-supervised training: a teacher model segments an unlabelled archive, QC keeps the good.

The teacher (a trained ``models/model.pt`` with its QC calibration) segments every film of an
unlabelled archive through :func:`lungseg_monai.inference.runner.segment_files`, exactly as
``lungseg infer`` does. Films whose mask quality control passes (``--keep``) become training pairs
(film, teacher mask). The result is a MONAI datalist JSON whose ``training`` part is the labelled
split's training part plus those pairs, and whose ``validation`` and ``test`` parts are the
labelled split's, unchanged: a student trained on it (``--dataset_dir DATALIST``) is scored on the
same test patients as the teacher, for a like-with-like ablation.

Left out of the archive, always: films whose licence forbids use in a shipped model (``--exclude``,
by the manifest's ``source``; default: Actualmed's, research use only) and films of patients who
also have films in the labelled set (the manifest's ``cxr_lung_patient``), so no test patient's
film reaches training through the back door.

Usage (from the repository root)::

    python scripts/pseudo_labels.py --teacher RUN/models/model.pt --split RUN/models/datalist_split.json \\
        --unlabelled ../shared/data/cxr_unlabelled --out /tmp/pseudo
    python scripts/benchmark_quality.py --backbone vgg16 --dataset_dir /tmp/pseudo/datalist.json ...
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXCLUDE = ("actualmed",)
DEFAULT_KEEP = ("pass",)


def archive_films(unlabelled: Path, exclude: Sequence[str]) -> tuple[list[dict[str, str]], collections.Counter]:
    """Rows of the archive's manifest that may be used, and why the others were left out."""
    with open(unlabelled / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept, left_out = [], collections.Counter()
    for row in rows:
        if row["source"] in exclude:
            left_out[f"source {row['source']} (licence: {row['license'] or 'none stated'})"] += 1
        elif (row.get("cxr_lung_patient") or "").strip():
            left_out["patient also in the labelled set"] += 1
        else:
            kept.append(row)
    return kept, left_out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's models/model.pt (model.json beside it)")
    parser.add_argument("--split", required=True, help="the labelled split the teacher was trained on (datalist_split.json)")
    parser.add_argument("--unlabelled", required=True, help="archive folder with images/ and manifest.csv")
    parser.add_argument("--out", required=True, help="folder for the teacher's masks and datalist.json")
    parser.add_argument("--exclude", action="append", default=None, help="manifest source to leave out (repeatable)")
    parser.add_argument("--keep", action="append", default=None, help="QC statuses kept as labels (default: pass)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from lungseg_monai.inference.runner import segment_files

    unlabelled, out = Path(args.unlabelled), Path(args.out)
    keep = tuple(args.keep or DEFAULT_KEEP)
    rows, left_out = archive_films(unlabelled, tuple(args.exclude or DEFAULT_EXCLUDE))
    images = [unlabelled / "images" / row["name"] for row in rows]
    start = time.perf_counter()
    summary = segment_files(images, out / "teacher", args.teacher, formats="mask", progress=False)
    seconds = time.perf_counter() - start
    if not summary.ok:
        print(summary.report(), file=sys.stderr)
        return 1
    by_stem = {Path(row["name"]).stem: row for row in rows}
    counts = collections.Counter(result.status for result in summary.qc.values())
    pairs = [
        {
            "image": str(unlabelled / "images" / by_stem[name]["name"]),
            "label": str(out / "teacher" / "masks" / f"{name}.png"),
            "group": by_stem[name]["patient"],
        }
        for name, result in sorted(summary.qc.items())
        if result.status in keep
    ]
    split = json.loads(Path(args.split).read_text())
    datalist = {
        "training": [*split["training"], *pairs],
        "validation": split["validation"],
        "test": split["test"],
        "pseudo_labels": {
            "teacher": str(Path(args.teacher).resolve()),
            "archive": str(unlabelled.resolve()),
            "kept_statuses": list(keep),
            "qc_counts": dict(counts),
            "left_out": dict(left_out),
            "n_pseudo": len(pairs),
        },
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    print(
        f"{len(images)} archive films segmented in {seconds:.0f} s (left out: {dict(left_out)}); QC {dict(counts)}; "
        f"{len(pairs)} kept as pseudo-labels ({', '.join(keep)}); training part {len(datalist['training'])} pairs "
        f"({len(split['training'])} labelled); {out / 'datalist.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
