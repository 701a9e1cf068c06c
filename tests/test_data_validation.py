"""Datalist checks before a run: every bad pair found and named, good pairs kept where the split put them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from lungseg_monai.data import (
    DatalistError,
    datalist_from_folder,
    assign_groups,
    prepare_splits,
    split_datalist,
    validate_datalist,
)

from conftest import SAMPLE_DATA, TRAIN_CONFIG
from hostile_corpus import PHI_STRINGS, build_hostile_dataset

# The reason each unusable pair of the hostile dataset must be reported with.
EXPECTED_REASONS = {
    "truncated": "pixel data cannot be decoded (OSError: image file is truncated",
    "zero_bytes": "file is empty (0 bytes)",
    "text": "not a readable image (UnidentifiedImageError",
    "bomb": "LUNGSEG_MAX_PIXELS",
    "one_pixel": "is 1x1 pixels; a chest radiograph needs at least 32 a side",
    "wrong_size_mask": "masks must match their image",
    "empty_mask": "is empty (no lung pixels); a lung mask must outline the lungs",
    "dicom_no_pixel_data": "DICOM object has no PixelData",
    "dicom_jpeg_xl": "JPEG XL Lossless (1.2.840.10008.1.2.4.110), which no installed plugin decodes",
    "dicom_multi_frame": "multi-frame DICOM (3 frames)",
}


@pytest.fixture(scope="module")
def hostile_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bool]]:
    root = tmp_path_factory.mktemp("hostile_dataset")
    pairs = build_hostile_dataset(root, with_dicom=True)
    return root, {p.name: p.usable for p in pairs}


def test_validate_datalist_finds_every_bad_pair_with_file_and_reason(
    hostile_dataset: tuple[Path, dict[str, bool]], caplog: pytest.LogCaptureFixture
) -> None:
    root, usable = hostile_dataset
    items, _ = datalist_from_folder(root)
    with caplog.at_level(logging.WARNING, logger="lungseg_monai.data"):
        good, bad = validate_datalist(items)
    assert sorted(i["name"] for i in good) == sorted(n for n, ok in usable.items() if ok)
    by_name = {Path(b.image).name.split(".")[0]: b for b in bad}
    assert sorted(by_name) == sorted(EXPECTED_REASONS)
    for name, reason in EXPECTED_REASONS.items():
        assert reason in by_name[name].reason, (name, by_name[name].reason)
        assert any(by_name[name].image in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    # The bad file itself is named: the image, or the mask when the mask is at fault.
    assert str(root / "masks" / "empty_mask.png") in by_name["empty_mask"].reason
    assert str(root / "images" / "truncated.png") in by_name["truncated"].reason


def test_strict_validation_lists_all_bad_pairs_in_one_error(hostile_dataset: tuple[Path, dict[str, bool]]) -> None:
    root, usable = hostile_dataset
    items, _ = datalist_from_folder(root)
    with pytest.raises(DatalistError) as info:
        validate_datalist(items, skip_bad_files=False)
    message = str(info.value)
    assert message.startswith(f"{len(EXPECTED_REASONS)} of {len(usable)} image/mask pairs cannot be used:\n")
    assert message.count("\n  - image '") == len(EXPECTED_REASONS)
    assert message.endswith("fix or remove these files, or set skip_bad_files to true to leave them out with a warning")
    for phi in PHI_STRINGS:
        assert phi not in message


def test_prepare_splits_records_excluded_pairs_and_keeps_good_ones_in_place(
    hostile_dataset: tuple[Path, dict[str, bool]], tmp_path: Path
) -> None:
    root, usable = hostile_dataset
    splits = prepare_splits(root, tmp_path / "split.json", seed=3)
    record = json.loads((tmp_path / "split.json").read_text())
    assert sorted(Path(b["image"]).name.split(".")[0] for b in record["excluded"]) == sorted(EXPECTED_REASONS)
    assert all(set(b) == {"image", "label", "reason"} for b in record["excluded"])
    # Each good pair sits where the split of the whole folder (by name and DICOM Patient ID) put it.
    unchecked = split_datalist(assign_groups(datalist_from_folder(root)[0], root)[0], seed=3)
    for part, items in splits.items():
        assert [i["name"] for i in items] == [i["name"] for i in unchecked[part] if usable[i["name"]]]
        assert record[part] == items


def test_prepare_splits_strict_mode_raises_before_writing(
    hostile_dataset: tuple[Path, dict[str, bool]], tmp_path: Path
) -> None:
    root, _ = hostile_dataset
    with pytest.raises(DatalistError):
        prepare_splits(root, tmp_path / "split.json", skip_bad_files=False)
    assert not (tmp_path / "split.json").exists()


def test_validation_in_threads_gives_the_same_result(hostile_dataset: tuple[Path, dict[str, bool]]) -> None:
    items, _ = datalist_from_folder(hostile_dataset[0])
    assert validate_datalist(items, num_workers=4) == validate_datalist(items)


def test_no_usable_training_pair_is_a_clear_error(tmp_path: Path) -> None:
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(4):
        (tmp_path / "images" / f"broken_{i}.png").write_bytes(b"")
        shutil.copyfile(next((SAMPLE_DATA / "masks").iterdir()), tmp_path / "masks" / f"broken_{i}.png")
    with pytest.raises(ValueError, match="no usable training pair is left in .* after leaving out 4 bad pairs"):
        prepare_splits(tmp_path, tmp_path / "split.json")


def test_same_seed_same_split_whatever_the_listing_order() -> None:
    items, _ = datalist_from_folder(SAMPLE_DATA)
    first = split_datalist(items, seed=5)
    assert split_datalist(list(reversed(items)), seed=5) == first
    assert split_datalist(items, seed=6) != first


@pytest.mark.parametrize(("flag", "strict"), [("false", True), ("False", True), ("true", False)])
def test_bundle_skip_bad_files_flag_from_the_command_line(
    hostile_dataset: tuple[Path, dict[str, bool]], tmp_path: Path, flag: str, strict: bool
) -> None:
    """``--skip_bad_files false`` arrives as the string "false" and must still mean strict."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["bundle_root"], parser["dataset_dir"], parser["skip_bad_files"] = (
        str(tmp_path),
        str(hostile_dataset[0]),
        flag,
    )
    if strict:  # MONAI wraps what a config expression raises; the DatalistError is its cause
        with pytest.raises(RuntimeError) as info:
            parser.get_parsed_content("datalists")
        assert isinstance(info.value.__cause__, DatalistError)
    else:
        assert parser.get_parsed_content("datalists")["training"]
