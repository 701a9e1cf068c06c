"""The output manifest: names kept across runs, and outputs reused only for the same content and settings."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from PIL import Image

from lungseg_monai.cli import main
from lungseg_monai.inference import CleanLungMask, LungSegmenter, segment_files
from lungseg_monai.inference.manifest import MANIFEST_FILE, OutputManifest, input_state
from lungseg_monai.io import read_radiograph

# Three real sample films of different sizes: a mask taken from the wrong one cannot pass for the right one.
FILMS = ("1052b0fe", "41182_2020_203_Fig3_HTML", "bd3ceeb6")
# What `cp -p` or `rsync -a` leave on a file copied from an old archive.
OLD_TIME = 1_000_000_000  # 2001-09-09
ARGS = ("--formats", "mask,measurements", "--batch-size", "1", "--no-progress")


def _film(name: str) -> Path:
    return SAMPLE_DATA / "images" / f"{name}.png"


def _copy_old(source: Path, target: Path) -> Path:
    """Copy keeping an old modification time, like ``cp -p`` from an archive."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    os.utime(target, (OLD_TIME, OLD_TIME))
    return target


def _infer(caplog: pytest.LogCaptureFixture, inputs: list[Path], out: Path, model: Path, *extra: str) -> str:
    """Run ``lungseg infer`` (it must succeed); returns its report line."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lungseg_monai"):
        assert main(["infer", *map(str, inputs), "-o", str(out), "--model", str(model), *ARGS, *extra]) == 0
    return next(message for message in caplog.messages if " segmented, " in message)


def _inputs_by_name(out: Path) -> dict[str, Path]:
    with open(out / "measurements.csv", newline="") as f:
        return {row["name"]: Path(row["input"]) for row in csv.DictReader(f)}


def _mask(out: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / f"{name}.png"))


def _files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _assert_masks_are_their_inputs_own(out: Path, segmenter: LungSegmenter) -> None:
    """Each mask equals a fresh single-image segmentation of the input its CSV row names."""
    for name, source in _inputs_by_name(out).items():
        np.testing.assert_array_equal(_mask(out, name), segmenter.segment(read_radiograph(source)) * 255, err_msg=name)


def _first_run(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, model: Path, count: int = 2
) -> tuple[list[Path], Path, dict[str, np.ndarray]]:
    """``count`` films copied with old time stamps, segmented once: (inputs, OUT_DIR, masks by name)."""
    films = [_copy_old(_film(name), tmp_path / "in" / f"{name}.png") for name in FILMS[:count]]
    out = tmp_path / "out"
    assert _infer(caplog, films, out, model).startswith(f"{count} segmented, 0 rejected, 0 already done")
    return films, out, {name: _mask(out, name) for name in _inputs_by_name(out)}


@pytest.fixture()
def model(segmenting_bundle: Path) -> Path:
    return segmenting_bundle / "models" / "model.pt"


def test_cp_p_copy_sorting_between_two_inputs_gets_a_new_name_and_its_own_mask(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, c = _copy_old(_film(FILMS[0]), tmp_path / "in" / "a" / "img.png"), tmp_path / "in" / "c" / "img.png"
    _copy_old(_film(FILMS[2]), c)
    out = tmp_path / "out"
    assert _infer(caplog, [tmp_path / "in"], out, model).startswith("2 segmented, 0 rejected, 0 already done")
    assert _inputs_by_name(out) == {"img": a, "img_2": c}
    c_mask = _mask(out, "img_2")

    b = _copy_old(_film(FILMS[1]), tmp_path / "in" / "b" / "img.png")  # sorts between a and c, older than c's mask
    assert _infer(caplog, [tmp_path / "in"], out, model).startswith("1 segmented, 0 rejected, 2 already done")
    assert _inputs_by_name(out) == {"img": a, "img_2": c, "img_3": b}
    np.testing.assert_array_equal(_mask(out, "img_2"), c_mask)
    _assert_masks_are_their_inputs_own(out, LungSegmenter.from_model(model, device="cpu"))

    # A run over b alone keeps a's and c's entries and rows: they are still theirs.
    assert _infer(caplog, [b], out, model).startswith("0 segmented, 0 rejected, 1 already done")
    assert sorted(OutputManifest.load(out).names().values()) == ["img", "img_2", "img_3"]
    assert sorted(_inputs_by_name(out)) == ["img", "img_2", "img_3"]


def test_identical_rerun_is_all_done_and_writes_nothing(model: Path, tmp_path: Path) -> None:
    films = [_copy_old(_film(name), tmp_path / "in" / f"{name}.png") for name in FILMS]
    out = tmp_path / "out"
    first = segment_files(films, out, model, formats="mask,overlay,measurements", batch_size=1, progress=False)
    assert len(first.segmented) == 3 and (out / MANIFEST_FILE) in first.written
    before = _files(out)
    again = segment_files(films, out, model, formats="mask,overlay,measurements", batch_size=1, progress=False)
    assert (len(again.segmented), len(again.up_to_date), again.written) == (0, 3, [])
    assert _files(out) == before


def test_other_postprocessing_redoes_the_masks_and_their_measurements(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    films, out, default = _first_run(caplog, tmp_path, model)

    assert _infer(caplog, films, out, model, "--keep-components", "1").startswith("2 segmented, 0 rejected, 0 already done")
    one = LungSegmenter.from_model(model, device="cpu", postprocess=CleanLungMask(num_components=1))
    _assert_masks_are_their_inputs_own(out, one)
    assert any(not np.array_equal(default[name], _mask(out, name)) for name in default), "keep-1 changed nothing"
    with open(out / "measurements.csv", newline="") as f:
        for row in csv.DictReader(f):
            assert int(row["lung_area_px"]) == np.count_nonzero(_mask(out, row["name"]))

    assert _infer(caplog, films, out, model, "--keep-components", "1").startswith("0 segmented, 0 rejected, 2 already done")
    assert _infer(caplog, films, out, model, "--no-postprocess").startswith("2 segmented, 0 rejected, 0 already done")


def test_changed_model_redoes_all_even_when_its_file_is_older_than_the_outputs(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    films, out, first = _first_run(caplog, tmp_path, model)

    other = tmp_path / "other" / "model.pt"  # "retrained": other weights, copied with an old time stamp
    other.parent.mkdir()
    shutil.copy(model.with_suffix(".json"), other.with_suffix(".json"))
    state = torch.load(model, weights_only=True)
    state = state.get("network", state) if isinstance(state, dict) else state
    last_bias = [key for key in state if key.endswith("bias")][-1]
    state[last_bias] = state[last_bias] + 0.05
    torch.save(state, other)
    os.utime(other, (OLD_TIME, OLD_TIME))

    assert _infer(caplog, films, out, other).startswith("2 segmented, 0 rejected, 0 already done")
    _assert_masks_are_their_inputs_own(out, LungSegmenter.from_model(other, device="cpu"))
    assert any(not np.array_equal(first[name], _mask(out, name)) for name in first), "the new weights changed nothing"
    identities = {entry.model for entry in OutputManifest.load(out).entries.values()}
    assert identities == {LungSegmenter.from_model(other, device="cpu").identity}


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG not json \xff\xfe", b'{"version": 1, "names": {"img": {"input": 3}}}', b"[]"],
    ids=["garbage", "malformed-entry", "not-an-object"],
)
def test_corrupt_manifest_warns_and_every_output_is_redone(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    films, out, _ = _first_run(caplog, tmp_path, model)
    (out / MANIFEST_FILE).write_bytes(content)

    assert _infer(caplog, films, out, model).startswith("2 segmented, 0 rejected, 0 already done")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"output manifest '{out / MANIFEST_FILE}' cannot be read" in m and "redone" in m for m in warnings)
    assert sorted(json.loads((out / MANIFEST_FILE).read_text())["names"]) == sorted(_inputs_by_name(out))
    assert _infer(caplog, films, out, model).startswith("0 segmented, 0 rejected, 2 already done")  # the rewritten one is used


def test_content_changed_in_place_with_the_same_size_and_mtime_is_hashed_again_synthetic(tmp_path: Path) -> None:
    """rsync-style replacement: same size, old mtime put back; the ctime gives it away."""
    path = tmp_path / "img.raw"
    path.write_bytes(b"\x00" * 64)
    os.utime(path, (OLD_TIME, OLD_TIME))
    known = input_state(path)
    assert input_state(path, known) == known  # unchanged stat: the recorded hash is reused
    path.write_bytes(b"\x01" * 64)
    os.utime(path, (OLD_TIME, OLD_TIME))
    changed = input_state(path, known)
    assert (changed.size, changed.mtime_ns) == (known.size, known.mtime_ns)
    assert changed.sha256 != known.sha256


def test_an_entry_without_a_verdict_vouches_for_no_output_synthetic(tmp_path: Path) -> None:
    """Outputs recorded without their quality verdict (a manifest of an older lungseg) are redone, never kept
    with an unknown verdict."""
    (tmp_path / "a.png").write_bytes(b"a")
    state = input_state(tmp_path / "a.png")
    manifest = OutputManifest(tmp_path / MANIFEST_FILE)
    manifest.record("a", state, "m-1", {"model": "m-1"}, ["mask"])
    assert manifest.verdict("a") is None
    assert manifest.valid_outputs("a", state, "m-1", {"model": "m-1"}) == set()


def test_manifest_round_trip_keeps_entries_and_compares_settings_as_json_synthetic(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"a")
    state = input_state(tmp_path / "a.png")
    settings = {"model": "m-1", "image_size": 64, "threshold": 0.5, "postprocess": "CleanLungMask()", "x": (1, 2)}
    manifest = OutputManifest(tmp_path / "out" / MANIFEST_FILE)
    verdict = {"qc_status": "review", "qc_score": 0.85, "qc_reasons": "estimated Dice 0.85 < 0.90"}
    manifest.record("a", state, "m-1", settings, ["mask", "measurements"], verdict)
    assert manifest.save() and not manifest.save()  # the second call has nothing new to write
    back = OutputManifest.load(tmp_path / "out")
    assert back.names() == {(tmp_path / "a.png").resolve(): "a"}
    assert back.valid_outputs("a", state, "m-1", settings) == {"mask", "measurements"}
    assert back.valid_outputs("a", state, "m-2", settings) == set()
    assert back.valid_outputs("a", state, "m-1", {**settings, "threshold": 0.4}) == set()
    assert back.verdict("a") == verdict and back.verdict("b") is None
    back.record("a", state, "m-1", settings, ())  # kept on a rerun: the verdict it was made with stays
    assert back.verdict("a") == verdict
    back.forget("a", ["mask"])
    assert back.stale("a", "mask") and not back.stale("a", "measurements") and not back.stale("b", "mask")
