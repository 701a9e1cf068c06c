"""Datalists and splits on the embedded real sample and the shared dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA, SHARED_CXR, require_shared

from lungseg_monai.data import (
    datalist_from_folder,
    evaluation_datalist,
    load_datalist,
    predefined_split,
    prepare_splits,
    split_datalist,
)


def test_folder_pairs_images_and_masks_by_name() -> None:
    items, unpaired = datalist_from_folder(SAMPLE_DATA)
    assert len(items) == 36
    assert unpaired == {"images_without_mask": [], "masks_without_image": []}
    for item in items:
        assert Path(item["image"]).name == Path(item["label"]).name
        assert Path(item["image"]).parent.name == "images" and Path(item["label"]).parent.name == "masks"


def test_split_is_deterministic_disjoint_and_follows_ratios() -> None:
    require_shared()
    items = load_datalist(SHARED_CXR)
    assert len(items) == 322
    a = split_datalist(items, (0.5, 0.25, 0.25), seed=0)
    b = split_datalist(list(reversed(items)), (0.5, 0.25, 0.25), seed=0)
    assert a == b  # independent of listing order
    sizes = {k: len(v) for k, v in a.items()}
    assert sizes == {"training": 162, "validation": 80, "test": 80}
    names = [set(i["name"] for i in part) for part in a.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == {i["name"] for i in items}
    c = split_datalist(items, (0.5, 0.25, 0.25), seed=1)
    assert c["test"] != a["test"]


def test_prepare_splits_writes_a_monai_datalist(tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    splits = prepare_splits(SAMPLE_DATA, out, ratios=(0.5, 0.25, 0.25), seed=0)
    saved = json.loads(out.read_text())
    assert saved["training"] == splits["training"] and saved["seed"] == 0
    assert [len(saved[k]) for k in ("training", "validation", "test")] == [18, 9, 9]


def test_csv_and_json_datalists_resolve_relative_paths(tmp_path: Path) -> None:
    items, _ = datalist_from_folder(SAMPLE_DATA)
    (tmp_path / "list.csv").write_text(
        "image,label\n" + "".join(f"{i['image']},{i['label']}\n" for i in items[:3])
    )
    assert [i["name"] for i in load_datalist(tmp_path / "list.csv")] == [i["name"] for i in items[:3]]
    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    (tmp_path / "data" / "list.json").write_text(
        json.dumps(
            {"training": [{"image": f"images/{i['name']}.png", "label": f"masks/{i['name']}.png"} for i in items[:2]]}
        )
    )
    loaded = load_datalist(tmp_path / "data" / "list.json")
    assert loaded[0]["image"] == str(tmp_path / "data" / "images" / f"{items[0]['name']}.png")


def test_missing_mask_is_reported_and_skipped(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    victim = sorted((tmp_path / "data" / "masks").glob("*.png"))[0]
    victim.unlink()
    items, unpaired = datalist_from_folder(tmp_path / "data")
    assert len(items) == 35
    assert unpaired["images_without_mask"] == [victim.stem]


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"no image/mask pairs in '.*': 0 images in '.*images', 0 masks"):
        datalist_from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected '.*/images/' and '.*/masks/'"):
        datalist_from_folder(tmp_path / "nowhere")


def test_too_few_pairs_for_a_split_is_a_clear_error() -> None:
    items, _ = datalist_from_folder(SAMPLE_DATA)
    with pytest.raises(ValueError, match="2 pairs are too few"):
        split_datalist(items[:2], (0.5, 0.25, 0.25))


def test_reused_split_is_still_checked_file_by_file(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    record = tmp_path / "split.json"
    first = prepare_splits(tmp_path / "data", record)
    saved = record.read_text()
    good = first["training"][0]
    shutil.copy(good["image"], tmp_path / "data" / "images" / "zz_new.png")  # a pair added after training
    shutil.copy(good["label"], tmp_path / "data" / "masks" / "zz_new.png")
    broken = Path(first["test"][0]["image"])
    broken.write_bytes(b"broken after training")
    again = prepare_splits(tmp_path / "data", record)
    assert again["training"] == first["training"]  # same parts: the added pair is not mixed in
    assert "zz_new" not in {i["name"] for part in again.values() for i in part}
    assert [i["name"] for i in again["test"]] == [i["name"] for i in first["test"][1:]]  # broken pair left out
    assert record.read_text() == saved


def _monai_datalist(folder: Path, parts: dict[str, list[str]]) -> Path:
    """Write ``folder/datalist.json`` with relative image/mask paths under the given MONAI keys."""
    content = {
        part: [{"image": f"images/{name}.png", "label": f"masks/{name}.png"} for name in names]
        for part, names in parts.items()
    }
    path = folder / "datalist.json"
    path.write_text(json.dumps({"name": "cxr", **content}))
    return path


def test_monai_datalist_with_validation_and_test_is_the_split(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    names = sorted(p.stem for p in (tmp_path / "data" / "images").glob("*.png"))
    parts = {"training": names[:4], "validation": names[4:6], "test": names[6:9]}
    datalist = _monai_datalist(tmp_path / "data", parts)
    assert [i["name"] for i in load_datalist(datalist)] == names[:9]  # every part, none lost
    splits = prepare_splits(datalist, tmp_path / "split.json")
    assert {part: [i["name"] for i in items] for part, items in splits.items()} == parts
    assert splits["test"][0]["image"] == str(tmp_path / "data" / "images" / f"{names[6]}.png")
    record = json.loads((tmp_path / "split.json").read_text())
    assert record["dataset_dir"] == str(datalist) and record["ratios"] is None and record["seed"] is None
    assert prepare_splits(datalist, tmp_path / "split.json") == splits  # reused as saved


def test_monai_datalist_with_only_training_is_split_by_ratio(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    names = sorted(p.stem for p in (tmp_path / "data" / "images").glob("*.png"))
    datalist = _monai_datalist(tmp_path / "data", {"training": names})
    assert predefined_split(datalist) is None
    splits = prepare_splits(datalist, tmp_path / "split.json")
    assert [len(splits[k]) for k in ("training", "validation", "test")] == [18, 9, 9]


def test_monai_datalist_errors_name_the_file_and_the_entry(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    names = sorted(p.stem for p in (tmp_path / "data" / "images").glob("*.png"))
    twice = _monai_datalist(tmp_path / "data", {"training": names[:3], "validation": names[2:4]})
    with pytest.raises(ValueError, match=rf"image '.*{names[2]}.png' is listed under both 'training' and 'validation'"):
        predefined_split(twice)
    no_validation = _monai_datalist(tmp_path / "data", {"training": names[:3], "test": names[3:5]})
    with pytest.raises(ValueError, match=r"no usable validation pair is left in '.*datalist.json'"):
        prepare_splits(no_validation, tmp_path / "split.json")
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"training": [], "test": ["images/a.png"]}))
    with pytest.raises(ValueError, match=r"entry '.*images/a.png' under 'test' in '.*datalist.json' has no 'label'"):
        load_datalist(tmp_path / "data" / "datalist.json")
    (tmp_path / "data" / "datalist.json").write_text('{"training": [')
    with pytest.raises(ValueError, match=r"datalist '.*datalist.json' is not valid JSON"):
        load_datalist(tmp_path / "data" / "datalist.json")
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"labels": {"1": "lung"}}))
    with pytest.raises(ValueError, match=r"has none of the keys \['training', 'validation', 'test'\]"):
        load_datalist(tmp_path / "data" / "datalist.json")


def copy_smallest_shared_pairs(folder: Path, n: int) -> list[str]:
    """Copy the ``n`` smallest image/mask pairs of the shared dataset into ``folder``; their sorted names."""
    images = sorted((SHARED_CXR / "images").glob("*.png"), key=lambda p: (p.stat().st_size, p.name))[:n]
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for image in images:
            shutil.copy(SHARED_CXR / sub / image.name, folder / sub / image.name)
    return sorted(p.stem for p in images)


def test_evaluation_of_the_training_dataset_scores_its_saved_test_part(tmp_path: Path) -> None:
    split_file = tmp_path / "split.json"
    splits = prepare_splits(SAMPLE_DATA, split_file, ratios=(0.5, 0.25, 0.25), seed=0)
    saved = split_file.read_bytes()
    items = evaluation_datalist(SAMPLE_DATA, split_file)
    assert [i["name"] for i in items] == [i["name"] for i in splits["test"]]
    assert split_file.read_bytes() == saved


def test_evaluation_of_another_dataset_scores_it_whole_and_leaves_the_split(tmp_path: Path, caplog) -> None:
    require_shared()
    split_file = tmp_path / "split.json"
    prepare_splits(SAMPLE_DATA, split_file)
    saved = split_file.read_bytes()
    names = copy_smallest_shared_pairs(tmp_path / "external", 5)
    caplog.set_level("INFO")
    items = evaluation_datalist(tmp_path / "external", split_file)
    assert [i["name"] for i in items] == names
    assert split_file.read_bytes() == saved
    assert f"is not the dataset the split in '{split_file}' was made from" in caplog.text


def test_evaluation_without_a_split_file_scores_everything_and_writes_nothing(tmp_path: Path, caplog) -> None:
    items = evaluation_datalist(SAMPLE_DATA, tmp_path / "models" / "datalist_split.json")
    assert len(items) == 36
    assert not (tmp_path / "models").exists()
    assert "scores are optimistic if the model was trained on any of them" in caplog.text


def _groups(splits: dict) -> list[set[str]]:
    return [{item["group"] for item in splits[part]} for part in ("training", "validation", "test")]


def test_split_keeps_each_patients_films_on_one_side_with_the_ratios_in_images(tmp_path: Path) -> None:
    """322 real films of 199 patients (76 with 2-7 films): no patient in two parts, sizes still 162/80/80."""
    require_shared()
    splits = prepare_splits(SHARED_CXR, tmp_path / "split.json", seed=0, check_files=False)
    training, validation, test = _groups(splits)
    assert not (training & validation or training & test or validation & test)
    assert len(training | validation | test) == 199
    assert [len(splits[p]) for p in ("training", "validation", "test")] == [162, 80, 80]
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["grouping"] == f"group/patient column of {SHARED_CXR / 'manifest.csv'}"
    assert all("group" in item for item in saved["test"])
    by_image = split_datalist([{k: v for k, v in i.items() if k != "group"} for i in load_datalist(SHARED_CXR)])
    assert by_image["test"] != splits["test"]


def test_sample_data_is_split_by_patient_from_its_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="lungseg_monai")
    splits = prepare_splits(SAMPLE_DATA, tmp_path / "split.json", check_files=False)
    training, validation, test = _groups(splits)
    assert not (training & validation or training & test or validation & test)
    assert "split by patient: 36 films of 29 groups" in caplog.text


def test_groups_from_a_csv_column_a_name_pattern_or_dicom_patient_id(tmp_path: Path) -> None:
    from lungseg_monai.data import assign_groups

    items, _ = datalist_from_folder(SAMPLE_DATA)
    rows = "".join(f"{i['image']},{i['label']},P{n // 3}\n" for n, i in enumerate(items))
    (tmp_path / "list.csv").write_text("image,label,patient\n" + rows)
    listed, grouping = assign_groups(load_datalist(tmp_path / "list.csv"), tmp_path / "list.csv")
    assert grouping == "group/patient column of the datalist"
    assert [item["group"] for item in listed[:4]] == ["P0", "P0", "P0", "P1"]
    named, grouping = assign_groups(items, SAMPLE_DATA, group_pattern=r"^(\w{3})")
    assert grouping == "group_pattern '^(\\\\w{3})' over file names"
    assert named[0]["group"] == Path(items[0]["image"]).name[:3]
    with pytest.raises(ValueError, match="matches nothing in the file name"):
        assign_groups(items, SAMPLE_DATA, group_pattern=r"^zzz")
    dicom = _dicom_items(tmp_path)
    grouped, grouping = assign_groups(dicom, tmp_path / "dicom")
    assert grouping == "DICOM Patient ID"
    groups = [item["group"] for item in grouped]
    assert groups[0] == groups[1] != groups[2] and all(g.startswith("patient-") for g in groups)
    assert not any("PAT-" in g for g in groups)  # a pseudonym: the ID is patient data


def _dicom_items(tmp_path: Path) -> list[dict[str, str]]:
    """Three tiny DICOM films of two patients (synthetic: only their Patient IDs matter here)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    folder = tmp_path / "dicom"
    folder.mkdir()
    items = []
    for n, patient in enumerate(["PAT-A", "PAT-A", "PAT-B"]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = SecondaryCaptureImageStorage, generate_uid(), patient
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 7, 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.zeros((8, 8), np.uint8).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        path = folder / f"film{n}.dcm"
        ds.save_as(path, write_like_original=False)
        items.append({"image": str(path), "label": str(path), "name": f"film{n}"})
    return items


def test_without_group_information_the_split_is_by_image_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA / "images", root / "images")
    shutil.copytree(SAMPLE_DATA / "masks", root / "masks")
    splits = prepare_splits(root, tmp_path / "split.json", check_files=False)
    assert "split by image, so films of one patient may fall in training and test" in caplog.text
    assert json.loads((tmp_path / "split.json").read_text())["grouping"] == "image"
    assert splits == split_datalist(datalist_from_folder(root)[0])


def test_a_split_saved_before_grouping_is_made_again_by_patient(tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    first = prepare_splits(SAMPLE_DATA, out, check_files=False)
    record = json.loads(out.read_text())
    del record["grouping"]  # as an older lungseg wrote it: split by image
    record["test"] = record["training"][:2]
    out.write_text(json.dumps(record))
    assert prepare_splits(SAMPLE_DATA, out, check_files=False) == first
    assert prepare_splits(SAMPLE_DATA, out, check_files=False) == first  # now reused as saved
