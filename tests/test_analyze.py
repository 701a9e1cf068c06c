"""``lungseg analyze`` on the embedded real sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import SAMPLE_DATA
from PIL import Image

from lungseg_monai.cli import main


def test_analyze_reports_counts_fractions_and_draws_a_grid(tmp_path: Path, capsys) -> None:
    assert main(["analyze", str(SAMPLE_DATA), "-o", str(tmp_path), "--samples", "8"]) == 0
    report = json.loads((tmp_path / "dataset_report.json").read_text())
    assert report["n_pairs"] == 36 and report["n_readable"] == 36
    assert report["bit_depths"] == {"8": 36}
    assert 0.2 < report["lung_fraction"]["median"] < 0.5
    assert sum(report["lung_fraction_histogram"]) == 36
    with Image.open(tmp_path / "dataset_samples.png") as grid:
        assert grid.size == (4 * 192, 2 * 192)
    assert "pairs: 36 (36 readable)" in capsys.readouterr().out


def test_analyze_lists_unpaired_and_unreadable_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA, data)
    names = sorted(p.name for p in (data / "images").glob("*.png"))
    (data / "masks" / names[0]).unlink()
    (data / "images" / names[1]).write_bytes(b"not a png")
    assert main(["analyze", str(data), "-o", str(tmp_path / "out"), "--samples", "4"]) == 1
    report = json.loads((tmp_path / "out" / "dataset_report.json").read_text())
    assert report["unpaired"]["images_without_mask"] == [Path(names[0]).stem]
    assert report["unreadable"][0]["file"].endswith(names[1])
