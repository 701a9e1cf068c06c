"""A MONAI Label local datastore for chest radiographs: PNG, JPEG, TIFF, BMP, DICOM and 2D volumes.

MONAI Label's ``LocalDatastore`` lists only the extensions it is given (by default NIfTI, NRRD,
JPEG, PNG, TIFF, SVS), so DICOM files would not appear in ``/datastore``. This one lists every
format ``lungseg_monai.io`` reads (lower- and upper-case suffixes) and DICOM files without a suffix
(``IM0001``, ``1.2.840....``, as PACS exports name them), and checks what clients send:
an uploaded image must be a readable radiograph, and a label must be a readable mask of exactly the
image's size, or the request is refused with a 4xx answer naming the problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from lungseg_monai.io import SUPPORTED_SUFFIXES, RadiographReadError, is_dicom_file, read_mask, read_radiograph
from lungseg_monai.label.errors import BadRequestError, ImageNotFoundError

__all__ = ["RadiographDatastore", "IMAGE_PATTERNS", "read_label"]

logger = logging.getLogger(__name__)

IMAGE_PATTERNS = tuple(dict.fromkeys(f"*{s}" for suffix in SUPPORTED_SUFFIXES for s in (suffix, suffix.upper())))


def read_label(image_id: str, image_path: str | os.PathLike, label_filename: str | os.PathLike) -> np.ndarray:
    """A saved label's (rows, columns) 0/1 mask (any non-zero pixel is lung), checked against its image.

    Raises:
        BadRequestError: the label is not a readable image, its image cannot be read, or their sizes
            differ (the message gives both as width x height).
    """
    try:
        mask = read_mask(label_filename)
    except RadiographReadError as e:
        raise BadRequestError(f"label for image '{image_id}' was not saved: {e.reason}") from e
    try:
        image_shape = read_radiograph(image_path, polarity="header").shape
    except RadiographReadError as e:
        raise BadRequestError(
            f"label for image '{image_id}' was not saved: its image cannot be read ({e.reason})"
        ) from e
    if mask.shape != image_shape:
        (mr, mc), (ir, ic) = mask.shape, image_shape
        raise BadRequestError(
            f"label for image '{image_id}' is {mc}x{mr} pixels but the image is {ic}x{ir}; "
            "a label must have exactly its image's size (width x height)"
        )
    return mask.pixels


class RadiographDatastore(LocalDatastore):
    """Images are the radiograph files directly in ``studies``; labels go to ``studies/labels/<tag>/``.

    An image's id is its file name without the suffix (``chest.dcm`` -> ``chest``); a DICOM file
    without a suffix keeps its whole name (``1.2.840.1.5`` -> ``1.2.840.1.5``). Those are found when
    the folder is scanned (at start, and on each change to a file with a suffix): the folder watcher
    only matches suffixes.

    Args:
        studies: the folder of images.
        auto_reload: watch the folder and pick up added or removed files.
        read_only: do not reconcile the datastore file with the folder at start.
    """

    def __init__(self, studies: str, auto_reload: bool = True, read_only: bool = False) -> None:
        super().__init__(studies, extensions=IMAGE_PATTERNS, auto_reload=auto_reload, read_only=read_only)

    def _list_files(self, path: str, patterns: Any) -> dict[str, str]:
        files = super()._list_files(path, patterns)
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if name not in files and not name.startswith(".") and os.path.isfile(full) and is_dicom_file(full):
                files[name] = name
        return files

    def _to_id(self, file: str) -> tuple[str, str]:
        # MONAI Label would take everything after the first dot as the suffix: "1.2.840.5" -> id "1".
        if not file.lower().endswith(SUPPORTED_SUFFIXES):
            return file, ""
        return super()._to_id(file)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded image after checking that it reads as a radiograph.

        Raises:
            BadRequestError: the file is not a readable radiograph.
        """
        try:
            read_radiograph(image_filename)
        except RadiographReadError as e:
            raise BadRequestError(f"image '{image_id or image_filename}' was not added: {e.reason}") from e
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Save a label (any non-zero pixel is lung) after checking it against its image.

        Raises:
            ImageNotFoundError: no image has this id.
            BadRequestError: the label is not a readable image, or its size differs from the image's.
        """
        image_path = self.get_image_uri(image_id)
        if not image_path:
            raise ImageNotFoundError(image_id)
        read_label(image_id, image_path, label_filename)
        return super().save_label(image_id, label_filename, label_tag, label_info)


def import_training_masks(folder: str | os.PathLike) -> tuple[int, int]:
    """Make a training dataset's folder (``images/`` + ``masks/``) servable: each mask becomes its image's
    ``final`` label in ``images/labels/final/`` (saved through the datastore, checked against its image), unless
    the image has a final label already (one saved in the app is never replaced).

    Returns:
        (masks imported, images without a mask).

    Raises:
        FileNotFoundError: no ``images/`` folder.
        BadRequestError: a mask does not match its image (the message names it).
    """
    from lungseg_monai.data import datalist_from_folder

    folder = Path(folder)
    items, unpaired = datalist_from_folder(folder, require_masks=False)
    store = RadiographDatastore(str(folder / "images"), auto_reload=False)
    imported = 0
    for item in items:
        image_id = store._to_id(Path(item["image"]).name)[0]
        if store.get_label_by_image_id(image_id, DefaultLabelTag.FINAL.value):
            continue
        store.save_label(image_id, item["label"], DefaultLabelTag.FINAL.value, {"source": "masks/"})
        imported += 1
    return imported, len(unpaired["images_without_mask"])
