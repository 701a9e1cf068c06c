"""Datalists of chest radiographs and lung masks, and reproducible train/val/test splits.

Splits keep every film of one patient on one side (:func:`split_datalist` with groups): follow-up
films and several views of one case in training and test make test scores optimistic. A film's
group comes from, in this order, a ``group_pattern`` regex over its file name, a ``group`` or
``patient`` column of a CSV/JSON datalist, the same columns of a ``manifest.csv`` beside
``images/`` (matched by ``name``), or the DICOM Patient ID of a DICOM film
(:func:`assign_groups`). Without any, the split is by image, as the log and the saved split say.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path


from lungseg_monai.io import (
    SUPPORTED_SUFFIXES,
    RadiographReadError,
    check_mask_matches,
    file_stem,
    read_mask,
    read_radiograph,
)
from lungseg_monai.utils.atomic import atomic_path

__all__ = [
    "BadPair",
    "DatalistError",
    "assign_groups",
    "MIN_IMAGE_SIDE",
    "check_pair",
    "datalist_from_folder",
    "evaluation_datalist",
    "load_datalist",
    "predefined_split",
    "prepare_splits",
    "split_datalist",
    "validate_datalist",
]

logger = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.5, 0.25, 0.25)
SPLIT_NAMES = ("training", "validation", "test")
# Smaller images cannot be chest radiographs (the smallest in the reference data is 157 px wide).
MIN_IMAGE_SIDE = 32
# Datalist or manifest columns naming the group (patient) a film belongs to, first found wins.
GROUP_COLUMNS = ("group", "patient")
# The folder datasets' table of per-film facts (name, patient, licence ...), beside images/.
MANIFEST_NAME = "manifest.csv"
BY_IMAGE = "image"
# Hex digits of a Patient ID's hash kept as its pseudonym in a split.
_PSEUDONYM_CHARS = 16


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(SUPPORTED_SUFFIXES):
            stem = file_stem(path)
            if stem in files:
                raise ValueError(f"two files share the name '{stem}' in '{folder}': {files[stem].name}, {path.name}")
            files[stem] = path
    return files


def datalist_from_folder(
    data_dir: str | os.PathLike, images: str = "images", masks: str = "masks", require_masks: bool = True
) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """Pair ``data_dir/images/*`` with ``data_dir/masks/*`` by file stem.

    Returns:
        ``(items, unpaired)``: items ``{"image", "label", "name"}`` sorted by name, and the stems
        found only among images (``"images_without_mask"``) or only among masks
        (``"masks_without_image"``).

    Raises:
        FileNotFoundError: the folder or its ``images`` subfolder is missing.
        ValueError: no image pairs were found.
    """
    root = Path(data_dir)
    image_dir, mask_dir = root / images, root / masks
    if not image_dir.is_dir():
        raise FileNotFoundError(f"'{image_dir}' does not exist; expected '{root}/{images}/' and '{root}/{masks}/'")
    image_files = _image_files(image_dir)
    mask_files = _image_files(mask_dir) if mask_dir.is_dir() else {}
    if require_masks and not mask_dir.is_dir():
        raise FileNotFoundError(f"'{mask_dir}' does not exist; every image in '{image_dir}' needs a mask there")
    unpaired = {
        "images_without_mask": sorted(set(image_files) - set(mask_files)),
        "masks_without_image": sorted(set(mask_files) - set(image_files)),
    }
    items = [
        {"image": str(image_files[s]), "label": str(mask_files[s]), "name": s}
        for s in sorted(set(image_files) & set(mask_files))
    ]
    if require_masks and not items:
        raise ValueError(
            f"no image/mask pairs in '{root}': {len(image_files)} images in '{image_dir}', "
            f"{len(mask_files)} masks in '{mask_dir}' (pairs share a file name)"
        )
    for stem in unpaired["images_without_mask"]:
        logger.warning("image '%s' has no mask in '%s'; skipped", image_files[stem], mask_dir)
    return items, unpaired


def _resolve(base: Path, value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def _json_content(path: Path) -> object | None:
    """The parsed content of a ``.json`` datalist file, None for a folder or another kind of file."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"datalist '{path}' is not valid JSON ({e}); fix the file or pass a folder or CSV") from e


def _monai_datalist_parts(path: Path, content: Mapping) -> dict[str, list[dict[str, str]]]:
    """The ``training``/``validation``/``test`` parts of a MONAI datalist JSON, read with MONAI's own loader.

    Raises:
        ValueError: the file has none of the three keys, or an entry has no ``label``.
    """
    present = [part for part in SPLIT_NAMES if part in content]
    if not present:
        raise ValueError(
            f"JSON datalist '{path}' has none of the keys {list(SPLIT_NAMES)} (found {sorted(content)}); "
            "a MONAI datalist lists its pairs under 'training' (and optionally 'validation' and 'test')"
        )
    from monai.data import load_decathlon_datalist  # here: `lungseg --help` must not import MONAI

    parts: dict[str, list[dict[str, str]]] = {}
    for part in present:
        entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key=part) if content[part] else []
        for entry in entries:
            if "label" not in entry:
                raise ValueError(
                    f"entry {entry['image']!r} under '{part}' in '{path}' has no 'label'; every pair needs a lung "
                    "mask (segment unlabelled images with lungseg infer instead)"
                )
        parts[part] = [{**entry, "name": file_stem(entry["image"]), **_group_of(entry)} for entry in entries]
    return parts


def load_datalist(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read image/mask pairs from a folder, a CSV (columns ``image``, ``label``) or a JSON datalist.

    JSON may be a list of ``{"image", "label"}`` or a MONAI datalist: every pair listed under its
    ``"training"``, ``"validation"`` and ``"test"`` keys (:func:`predefined_split` keeps the parts
    apart). Relative paths are taken relative to the list file.
    """
    path = Path(path)
    if path.is_dir():
        return datalist_from_folder(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"datalist '{path}' does not exist")
    base = path.parent
    content = _json_content(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"image", "label"} <= set(rows[0]):
            raise ValueError(f"CSV '{path}' needs columns 'image' and 'label', found {sorted(rows[0])}")
    elif isinstance(content, Mapping):
        items = [item for part in _monai_datalist_parts(path, content).values() for item in part]
        if not items:
            raise ValueError(f"datalist '{path}' lists no image/mask pairs")
        return items
    elif isinstance(content, list):
        rows = content
    else:
        raise ValueError(f"datalist '{path}' must be a folder, a .csv file or a .json list or MONAI datalist")
    items = [
        {
            "image": _resolve(base, r["image"]),
            "label": _resolve(base, r["label"]),
            "name": file_stem(r["image"]),
            **_group_of(r),
        }
        for r in rows
    ]
    if not items:
        raise ValueError(f"datalist '{path}' lists no image/mask pairs")
    return items


def _group_of(row: Mapping[str, object]) -> dict[str, str]:
    """``{"group": ...}`` from a row's ``group`` or ``patient`` value, {} when it has none."""
    for column in GROUP_COLUMNS:
        value = str(row.get(column) or "").strip()
        if value:
            return {"group": value}
    return {}


def predefined_split(dataset_dir: str | os.PathLike) -> dict[str, list[dict[str, str]]] | None:
    """The split a MONAI datalist JSON already makes, or None when there is none to honour.

    A JSON with a ``"validation"`` or ``"test"`` key is taken as the split, part for part
    (a missing part is empty); a folder, a CSV, a plain JSON list or a JSON with only
    ``"training"`` is split by ratio (:func:`split_datalist`).

    Raises:
        ValueError: an image stands in two parts, or an entry has no ``label``.

    Example:
        >>> predefined_split("bundles/lung_cxr_segmentation/sample_data") is None
        True
    """
    path = Path(dataset_dir)
    content = _json_content(path)
    if not isinstance(content, Mapping) or not {"validation", "test"} & set(content):
        return None
    parts = _monai_datalist_parts(path, content)
    splits = {part: parts.get(part, []) for part in SPLIT_NAMES}
    seen: dict[str, str] = {}
    for part, items in splits.items():
        for item in items:
            if item["image"] in seen:
                raise ValueError(
                    f"image '{item['image']}' is listed under both '{seen[item['image']]}' and '{part}' in "
                    f"'{path}'; each image belongs to one part only"
                )
            seen[item["image"]] = part
    return splits


def split_datalist(
    items: Sequence[dict[str, str]], ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Deterministic, seeded train/validation/test split (each item in exactly one part).

    The items are sorted by name before shuffling, so the split depends only on the names (and
    groups), the ratios and the seed, not on the order files were listed in. Items with a
    ``"group"`` (:func:`assign_groups`) are split by group: all items of a group land in one
    part, and the parts' sizes in images come as close to the ratios as whole groups allow
    (largest groups placed first, each where the most images are still missing). An item without
    a group is a group of its own. Without any group the split is by image.

    Example:
        >>> items = [{"name": f"f{i}", "group": f"p{i // 2}"} for i in range(8)]
        >>> parts = split_datalist(items, seed=0)
        >>> [sorted({item["group"] for item in parts[p]}) for p in ("training", "validation", "test")]
        [['p2', 'p3'], ['p0'], ['p1']]
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (train, val, test), got {list(ratios)}")
    ordered = sorted(items, key=lambda item: item["name"])
    total = sum(ratios)
    n = len(ordered)
    n_val = round(n * ratios[1] / total)
    n_test = round(n * ratios[2] / total)
    n_train = n - n_val - n_test
    if n_train < 1 or (ratios[1] > 0 and n_val < 1):
        raise ValueError(f"{n} pairs are too few for a split with ratios {list(ratios)}; need at least one per part")
    if not any("group" in item for item in ordered):
        random.Random(seed).shuffle(ordered)
        return {
            "training": ordered[:n_train],
            "validation": ordered[n_train : n_train + n_val],
            "test": ordered[n_train + n_val :],
        }
    return _split_groups(ordered, (n_train, n_val, n_test), seed, ratios)


def _split_groups(
    ordered: Sequence[dict[str, str]], targets: Sequence[int], seed: int, ratios: Sequence[float]
) -> dict[str, list[dict[str, str]]]:
    """Whole groups to the parts, largest first, each to the part furthest below its target size."""
    groups: dict[str, list[dict[str, str]]] = {}
    for item in ordered:
        groups.setdefault(str(item.get("group") or f"{BY_IMAGE}:{item['name']}"), []).append(item)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    names.sort(key=lambda g: -len(groups[g]))  # stable: the shuffle orders groups of one size
    counts = [0, 0, 0]
    parts: list[list[dict[str, str]]] = [[], [], []]
    wanted = [i for i, r in enumerate(ratios) if r > 0]
    for name in names:
        # furthest below target, relative to the target, so small parts are not starved by big ones
        part = max(wanted, key=lambda i: ((targets[i] - counts[i]) / max(targets[i], 1), -i))
        parts[part].extend(groups[name])
        counts[part] += len(groups[name])
    if not parts[0] or (ratios[1] > 0 and not parts[1]):
        raise ValueError(
            f"{len(groups)} groups are too few for a split with ratios {list(ratios)}; need at least one per part"
        )
    return dict(zip(SPLIT_NAMES, parts))


def _manifest_groups(folder: Path) -> dict[str, str]:
    """Group by film name from ``folder/manifest.csv`` (``name`` and ``group`` or ``patient`` columns); {} if none."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    groups = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            group = _group_of(row)
            if "name" in row and group:
                groups[str(row["name"])] = group["group"]
    return groups


def _dicom_patient(path: str) -> str | None:
    """A pseudonym of the Patient ID of a DICOM file (``patient-`` and 16 hex digits of its SHA-256), None for
    other files or an empty ID. The ID itself is patient data: it never reaches the saved split or a log."""
    import pydicom  # here: only DICOM datasets need it

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - not DICOM (PNG, NIfTI ...) or unreadable: no group from it
        return None
    value = str(header.get("PatientID", "") or "").strip()
    return f"patient-{hashlib.sha256(value.encode()).hexdigest()[:_PSEUDONYM_CHARS]}" if value else None


def assign_groups(
    items: Sequence[dict[str, str]], dataset_dir: str | os.PathLike, group_pattern: str | None = None
) -> tuple[list[dict[str, str]], str]:
    """Give each item its ``"group"`` (the patient its film belongs to) and say where the groups came from.

    Sources, first that applies: ``group_pattern`` (a regex searched in the file name; its first
    capture group, or the whole match, is the group), a ``group``/``patient`` value already in the
    item (CSV/JSON datalists), ``manifest.csv`` beside ``images/`` in a folder dataset, the DICOM
    Patient ID of DICOM films (kept as a pseudonym: a hash, never the ID).

    Returns:
        ``(items, grouping)``: copies of the items (with ``"group"`` where one was found) and
        ``"image"`` when no item has a group, else a description such as
        ``"patient column of manifest.csv"``.

    Raises:
        ValueError: ``group_pattern`` is not a valid regex, or matches no file name of some item.
    """
    items = [dict(item) for item in items]
    if group_pattern:
        try:
            pattern = re.compile(group_pattern)
        except re.error as e:
            raise ValueError(f"group_pattern {group_pattern!r} is not a valid regular expression ({e})") from e
        for item in items:
            found = pattern.search(Path(item["image"]).name)
            if found is None:
                raise ValueError(
                    f"group_pattern {group_pattern!r} matches nothing in the file name '{Path(item['image']).name}'; "
                    "every film needs a group (use a pattern that matches all names, e.g. '^([^_]+)_')"
                )
            item["group"] = found.group(1) if pattern.groups else found.group(0)
        return items, f"group_pattern {group_pattern!r} over file names"
    if any("group" in item for item in items):
        return items, "group/patient column of the datalist"
    folder = Path(dataset_dir)
    manifest = _manifest_groups(folder) if folder.is_dir() else {}
    if manifest:
        for item in items:
            if item["name"] in manifest:
                item["group"] = manifest[item["name"]]
        return items, f"group/patient column of {folder / MANIFEST_NAME}"
    patients = {item["image"]: _dicom_patient(item["image"]) for item in items}
    if any(patients.values()):
        for item in items:
            if patients[item["image"]]:
                item["group"] = str(patients[item["image"]])
        return items, "DICOM Patient ID"
    return items, BY_IMAGE


@dataclass(frozen=True)
class BadPair:
    """An image/mask pair that cannot be used, and why (names the file at fault)."""

    image: str
    label: str
    reason: str

    def __str__(self) -> str:
        return f"image '{self.image}', mask '{self.label}': {self.reason}"


class DatalistError(ValueError):
    """Some image/mask pairs of a datalist cannot be used; ``bad_pairs`` lists every one of them."""

    def __init__(self, bad_pairs: Sequence[BadPair], total: int) -> None:
        self.bad_pairs = list(bad_pairs)
        listing = "\n".join(f"  - {bad}" for bad in self.bad_pairs)
        super().__init__(
            f"{len(self.bad_pairs)} of {total} image/mask pairs cannot be used:\n{listing}\n"
            "fix or remove these files, or set skip_bad_files to true to leave them out with a warning"
        )


def check_pair(item: Mapping[str, str], min_side: int = MIN_IMAGE_SIDE) -> str | None:
    """Read an image and its mask the way training and evaluation will; None if usable, else why not.

    Catches what would otherwise stop a run midway: unreadable, truncated, oversized or
    unsupported files (see :mod:`lungseg_monai.io`), a mask whose size differs from its image's,
    an empty mask and an image smaller than ``min_side`` pixels a side.
    """
    try:
        image = read_radiograph(item["image"])
        mask = read_mask(item["label"])
        check_mask_matches(mask, image.shape, image.path)
    except RadiographReadError as e:
        return str(e)
    rows, cols = image.shape
    if min(rows, cols) < min_side:
        return f"image '{image.path}' is {cols}x{rows} pixels; a chest radiograph needs at least {min_side} a side"
    if not mask.pixels.any():
        return f"mask '{mask.path}' is empty (no lung pixels); a lung mask must outline the lungs"
    return None


def validate_datalist(
    items: Sequence[Mapping[str, str]],
    skip_bad_files: bool = True,
    min_side: int = MIN_IMAGE_SIDE,
    num_workers: int = 0,
) -> tuple[list[dict[str, str]], list[BadPair]]:
    """Check every image/mask pair before a run starts, so that a bad file cannot stop it midway.

    Each pair is read in full once (:func:`check_pair`), and all bad pairs are reported together.

    Args:
        items: ``{"image", "label", ...}`` dicts.
        skip_bad_files: True leaves bad pairs out with one warning each; False raises.
        min_side: smallest accepted image side in pixels.
        num_workers: read this many pairs at once in threads (0 or 1: one at a time).

    Returns:
        ``(good_items, bad_pairs)``, good items in their original order.

    Raises:
        DatalistError: ``skip_bad_files`` is False and some pairs are bad; the message lists them all.
    """
    good, bad = _partition_pairs(items, min_side, num_workers)
    _report_bad(bad, len(items), skip_bad_files)
    return good, bad


def _partition_pairs(
    items: Sequence[Mapping[str, str]], min_side: int = MIN_IMAGE_SIDE, num_workers: int = 0
) -> tuple[list[dict[str, str]], list[BadPair]]:
    check = functools.partial(check_pair, min_side=min_side)
    if num_workers > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            reasons = list(pool.map(check, items))
    else:
        reasons = [check(item) for item in items]
    good: list[dict[str, str]] = []
    bad: list[BadPair] = []
    for item, reason in zip(items, reasons):
        if reason is None:
            good.append(dict(item))
        else:
            bad.append(BadPair(image=str(item["image"]), label=str(item["label"]), reason=reason))
    return good, bad


def _report_bad(bad: Sequence[BadPair], total: int, skip_bad_files: bool) -> None:
    if bad and not skip_bad_files:
        raise DatalistError(bad, total)
    for pair in bad:
        logger.warning("leaving out %s", pair)


def _dataset_id(dataset_dir: str | os.PathLike) -> str:
    """How a split record names the dataset it was made from: its absolute path."""
    return str(Path(dataset_dir).resolve())


def _read_split_record(split_file: Path) -> dict | None:
    """The record saved by :func:`prepare_splits`, or None if there is none (or it is not one)."""
    if not split_file.is_file():
        return None
    try:
        record = json.loads(split_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(part), list) for part in SPLIT_NAMES):
        return None
    return record


def _saved_split(
    output_file: Path,
    dataset_dir: str | os.PathLike,
    ratios: list[float] | None,
    seed: int | None,
    group_pattern: str | None,
) -> dict[str, list[dict[str, str]]] | None:
    """The split recorded in ``output_file`` if it was made from the same dataset, ratios, seed and grouping."""
    record = _read_split_record(output_file)
    same = (
        record is not None
        and record.get("dataset_dir") == _dataset_id(dataset_dir)
        and record.get("ratios") == ratios
        and record.get("seed") == seed
        and record.get("group_pattern") == group_pattern
        and "grouping" in record  # a split made before grouping existed was by image: split again
    )
    return {part: record[part] for part in SPLIT_NAMES} if same else None


def prepare_splits(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    skip_bad_files: bool = True,
    check_files: bool = True,
    num_workers: int = 0,
    group_pattern: str | None = None,
) -> dict[str, list[dict[str, str]]]:
    """List ``dataset_dir``, split it, check every pair and save the split as a MONAI datalist JSON.

    The split keeps each patient's films on one side (:func:`assign_groups`, :func:`split_datalist`)
    and records how it grouped (``"grouping"``; ``"image"`` when there was no group information,
    which is also logged). It is a pure function of the file names, groups, ratios and seed, so
    re-running gives the same parts; the JSON lets other tools reuse exactly those lists, and a later run (resume)
    with the same dataset, ratios and seed reuses the saved parts as they are. A MONAI datalist
    JSON with ``"validation"`` or ``"test"`` entries is its own split (:func:`predefined_split`;
    ratios and seed are not used and are recorded as null). Files are checked after splitting,
    so a bad file never moves a good one to another part. The record names the dataset it was
    made from (``"dataset_dir"``, absolute), which is how evaluation tells it from another one.

    Args:
        dataset_dir: a folder with ``images/`` and ``masks/``, a CSV or a JSON datalist.
        output_file: where the split record goes; bad pairs are listed under ``"excluded"``.
        ratios: train/validation/test proportions.
        seed: split seed.
        skip_bad_files: leave unusable pairs out with a warning (True) or stop listing them all
            (False, :class:`DatalistError`).
        check_files: read every pair first (:func:`validate_datalist`); False trusts the files.
        num_workers: threads reading pairs during the check.
        group_pattern: a regex whose first capture group (or match) in a file name is the film's
            group, for datasets that encode the patient in names (``"^(P\\d+)_"``).

    Raises:
        DatalistError: bad pairs with ``skip_bad_files=False``.
        ValueError: no usable training (or validation) pair is left.
    """
    output_file = Path(output_file)
    predefined = predefined_split(dataset_dir)
    split_ratios, split_seed = (None, None) if predefined is not None else (list(ratios), seed)
    splits = _saved_split(output_file, dataset_dir, split_ratios, split_seed, group_pattern)
    reused = splits is not None
    grouping = "as listed" if predefined is not None else None
    if reused:
        # Resumed runs must see the parts training saw, even if files were added since.
        logger.info("reusing the split saved in '%s' (same dataset, ratios and seed)", output_file)
    elif predefined is not None:
        logger.info("using the training/validation/test parts listed in '%s'", dataset_dir)
        splits = predefined
    else:
        items, grouping = assign_groups(load_datalist(dataset_dir), dataset_dir, group_pattern)
        splits = split_datalist(items, ratios=ratios, seed=seed)
        _log_grouping(items, grouping)
    excluded: list[BadPair] = []
    if check_files:
        checked = {part: _partition_pairs(items, num_workers=num_workers) for part, items in splits.items()}
        excluded = [pair for _, bad in checked.values() for pair in bad]
        _report_bad(excluded, sum(len(items) for items in splits.values()), skip_bad_files)
        splits = {part: good for part, (good, _) in checked.items()}
    needed = SPLIT_NAMES[:2] if predefined is not None else [p for p, r in zip(SPLIT_NAMES[:2], ratios) if r > 0]
    for part in needed:
        if not splits[part]:
            raise ValueError(
                f"no usable {part} pair is left in '{dataset_dir}' after leaving out {len(excluded)} bad pairs"
            )
    if reused:
        return splits  # training's record stays as it wrote it
    record = {
        "dataset_dir": _dataset_id(dataset_dir),
        "ratios": split_ratios,
        "seed": split_seed,
        "group_pattern": group_pattern,
        "grouping": grouping,
        **splits,
        "excluded": [asdict(pair) for pair in excluded],
    }
    # a unique temporary name: in a distributed run every process writes this (identical) file
    with atomic_path(output_file) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    logger.info("split %s: %s", output_file, {k: len(v) for k, v in splits.items()})
    return splits


def _log_grouping(items: Sequence[Mapping[str, str]], grouping: str) -> None:
    if grouping == BY_IMAGE:
        logger.warning(
            "no group information (no group/patient column, manifest.csv, DICOM Patient ID or group_pattern): "
            "split by image, so films of one patient may fall in training and test"
        )
        return
    groups = {item.get("group") or f"{BY_IMAGE}:{item['name']}" for item in items}
    logger.info("split by patient: %d films of %d groups (%s)", len(items), len(groups), grouping)


def evaluation_datalist(
    dataset_dir: str | os.PathLike,
    split_file: str | os.PathLike,
    skip_bad_files: bool = True,
    num_workers: int = 0,
) -> list[dict[str, str]]:
    """The pairs an evaluation scores; reads ``split_file`` but never writes it.

    - ``dataset_dir`` is the dataset the split in ``split_file`` was made from: its ``"test"``
      part, as training saved it (ratios and seed given now do not matter: only that part was
      kept away from the model).
    - Any other dataset (an external test set): every pair it lists, whole.
    - No split file: every pair, with a warning that the model may have been trained on some.

    Every pair is checked first (:func:`validate_datalist`).

    Raises:
        DatalistError: bad pairs with ``skip_bad_files=False``.
        ValueError: no usable pair is left to score.

    Example:
        >>> items = evaluation_datalist("/data/external_cxr", "models/datalist_split.json")  # doctest: +SKIP
        >>> len(items) == len(load_datalist("/data/external_cxr"))  # doctest: +SKIP
        True
    """
    split_file = Path(split_file)
    record = _read_split_record(split_file)
    if record is not None and record.get("dataset_dir") == _dataset_id(dataset_dir):
        items = record["test"]
        logger.info("scoring the test part (%d pairs) of the split saved in '%s'", len(items), split_file)
    else:
        items = load_datalist(dataset_dir)
        if record is None:
            logger.warning(
                "no training split in '%s': scoring all %d pairs of '%s'; the scores are optimistic if the "
                "model was trained on any of them",
                split_file,
                len(items),
                dataset_dir,
            )
        else:
            logger.info(
                "'%s' is not the dataset the split in '%s' was made from ('%s'): scoring all its %d pairs",
                dataset_dir,
                split_file,
                record.get("dataset_dir"),
                len(items),
            )
            _warn_about_seen_names(items, record, split_file)
    good, _ = validate_datalist(items, skip_bad_files=skip_bad_files, num_workers=num_workers)
    if not good:
        raise ValueError(
            f"nothing to evaluate in '{dataset_dir}': {len(items)} pairs listed, none usable (split file "
            f"'{split_file}'); check the paths, or pass --dataset_dir with images/ and masks/"
        )
    return good


def _warn_about_seen_names(items: Sequence[Mapping[str, str]], record: Mapping, split_file: Path) -> None:
    """Warn when an external dataset shares file names with the training/validation parts of a split."""
    seen = {item["name"] for part in SPLIT_NAMES[:2] for item in record[part] if "name" in item}
    shared = sorted(seen & {item["name"] for item in items})
    if shared:
        logger.warning(
            "%d of %d images share a name with training/validation images in '%s' (first: '%s'); if this is "
            "the training dataset moved or copied, evaluate it at the path it was trained from",
            len(shared),
            len(items),
            split_file,
            shared[0],
        )
