"""Readers for raster (PNG/JPEG/TIFF/BMP) and medical-volume (MetaImage, NRRD, NIfTI) radiographs.

All readers return ``(pixels, meta)`` with pixels of shape (rows, columns): the same orientation
PIL and pydicom use, so an image and a mask read here never disagree about orientation. A raster's
EXIF orientation tag (cameras and phones write it into JPEGs) is applied, so the pixels come out
the way viewers display the file.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from lungseg_monai.io.errors import ImageTooLargeError, RadiographReadError
from lungseg_monai.io.geometry import ImageGeometry

__all__ = ["read_raster", "read_volume_file", "RASTER_SUFFIXES", "VOLUME_SUFFIXES", "LOSSY_FORMATS"]

# warnings.catch_warnings swaps process-wide filters: readers in other threads must not interleave
# with it, or one of them restores a stale filter list. Only the header-reading open is guarded.
_WARNING_FILTER_LOCK = threading.Lock()

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_NIFTI_SPATIAL_AXES = 3  # the affine places x, y and z; later axes (time ...) have no position
# Pillow formats whose compression changes pixel values (MPO: the multi-picture JPEG of some cameras).
LOSSY_FORMATS = ("JPEG", "MPO")
# TIFF compressions that are JPEG inside.
_LOSSY_TIFF_COMPRESSIONS = ("jpeg", "tiff_jpeg")
# EXIF Orientation values: 1 is stored the way it is displayed, 2-8 rotated and/or mirrored.
_UPRIGHT = 1
_EXIF_ORIENTATIONS = range(1, 9)


def _is_lossy(img: Image.Image) -> bool:
    """True when the file's compression altered pixel values (JPEG, JPEG inside TIFF)."""
    if img.format in LOSSY_FORMATS:
        return True
    return img.format == "TIFF" and img.info.get("compression") in _LOSSY_TIFF_COMPRESSIONS


def _exif_orientation(img: Image.Image) -> int:
    """The file's EXIF Orientation value, 1 (upright) when it has none or an invalid one."""
    value = img.getexif().get(ExifTags.Base.Orientation, _UPRIGHT)
    return value if value in _EXIF_ORIENTATIONS else _UPRIGHT


def read_raster(path: str | Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an 8/16-bit grey, RGB, RGBA or palette raster image as grey float32 (rows, columns).

    The size in the header is checked against ``max_pixels`` before any pixel is decoded. An
    EXIF orientation tag is applied (``meta["exif_orientation"]`` keeps the value found), and
    ``meta["lossy"]`` says whether the compression altered pixel values (JPEG).

    Raises:
        ImageTooLargeError: the header announces more than ``max_pixels`` pixels.
        RadiographReadError: anything else wrong with the file; no other exception type escapes.
    """
    try:
        return _read_raster(path, max_pixels)
    except RadiographReadError:
        raise
    except Exception as e:  # a hostile file can make Pillow raise almost anything
        raise RadiographReadError(path, f"malformed image file ({type(e).__name__}: {e})") from e


def _read_raster(path: str | Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        with _WARNING_FILTER_LOCK, warnings.catch_warnings():
            # PIL's own bomb warning would fire before our clearer error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        # Pillow refuses above twice its own MAX_IMAGE_PIXELS, before our limit could be checked.
        raise ImageTooLargeError(
            path,
            f"the header announces more pixels than Pillow allows ({e}); the limit here is {max_pixels} "
            "pixels (LUNGSEG_MAX_PIXELS)",
        ) from e
    except Exception as e:
        raise RadiographReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                path, f"{width}x{height} pixels exceeds the limit of {max_pixels} (LUNGSEG_MAX_PIXELS)"
            )
        if width < 1 or height < 1:
            raise RadiographReadError(path, f"image has no pixels ({width}x{height})")
        mode, lossy = img.mode, _is_lossy(img)
        # Decoding needs no warning filter: for these formats Pillow checks the size in open() only,
        # and the default limit here (8192**2) is below the size at which Pillow warns.
        try:
            orientation = _exif_orientation(img)
            if orientation != _UPRIGHT:
                img = ImageOps.exif_transpose(img)  # decodes; rotation keeps the pixel count checked above
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                pixels = np.asarray(img).astype(np.float32)
                bits = 16 if mode.startswith("I;16") or pixels.max(initial=0) > 255 else 8
            elif mode == "L":
                pixels, bits = np.asarray(img).astype(np.float32), 8
            else:  # RGB, RGBA, P, LA, CMYK, 1: luminance
                pixels, bits = np.asarray(img.convert("L")).astype(np.float32), 8
        except Exception as e:  # truncated or corrupt pixel data
            raise RadiographReadError(path, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    if pixels.ndim != 2:
        raise RadiographReadError(path, f"expected a 2D image, got shape {pixels.shape} (mode {mode})")
    return pixels, {
        "spacing": None,
        "spacing_source": "none",
        "photometric": f"PIL:{mode}",
        "bits_stored": bits,
        "lossy": lossy,
        "exif_orientation": orientation,
    }


def _squeeze_2d(path: str | Path, data: np.ndarray) -> np.ndarray:
    data = np.squeeze(np.asarray(data))
    if data.ndim != 2:
        raise RadiographReadError(path, f"expected a 2D radiograph, got an array of shape {data.shape}")
    return data


def _image_axes(size: tuple[int, ...]) -> tuple[int, int]:
    """File axes (in x, y, z order) of the (columns, rows) of a radiograph: the axes longer than 1."""
    axes = [axis for axis, n in enumerate(size) if n > 1]
    return (axes[0], axes[1]) if len(axes) == 2 else (0, 1)  # other shapes are refused by _squeeze_2d


def _nifti_geometry(img: Any, axes: tuple[int, int]) -> ImageGeometry | None:
    """The geometry of a NIfTI image when its header states one (qform or sform code above 0)."""
    header = img.header
    coded = int(header.get("sform_code", 0)) > 0 or int(header.get("qform_code", 0)) > 0
    if not coded or max(axes) >= _NIFTI_SPATIAL_AXES:
        return None  # nibabel would make an affine up; the file gives none
    geometry = ImageGeometry.from_nifti_affine(img.affine)
    return geometry.with_axes_first(axes) if geometry is not None else None


def _itk_geometry(img: Any, axes: tuple[int, int]) -> ImageGeometry | None:
    import itk

    geometry = ImageGeometry.from_arrays(
        tuple(img.GetSpacing()), tuple(img.GetOrigin()), itk.array_from_matrix(img.GetDirection())
    )
    return geometry.with_axes_first(axes) if geometry is not None else None


def read_volume_file(path: str | Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 2D radiograph stored as MetaImage/NRRD (through ITK) or NIfTI (through nibabel).

    NIfTI stores the first axis as x (columns); it is transposed to (rows, columns). Spacing is
    returned as (row, column) millimetres; ``meta["geometry"]`` is the file's
    :class:`~lungseg_monai.io.geometry.ImageGeometry` (None for a NIfTI file that states none),
    ``meta["spacing_source"]`` names the header the spacing came from.
    """
    name = str(path).lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            if int(np.prod(img.shape)) > max_pixels:
                raise ImageTooLargeError(path, f"{img.shape} exceeds the limit of {max_pixels} pixels")
            data = _squeeze_2d(path, img.get_fdata(dtype=np.float32)).T
            axes = _image_axes(tuple(img.shape))
            zooms = tuple(float(z) for z in img.header.get_zooms())
            geometry, header_name = _nifti_geometry(img, axes), "NIfTI"
        else:
            import itk

            img = itk.imread(str(path))
            size = tuple(int(s) for s in img.GetLargestPossibleRegion().GetSize())
            if int(np.prod(size)) > max_pixels:
                raise ImageTooLargeError(path, f"{size} exceeds the limit of {max_pixels} pixels")
            data = _squeeze_2d(path, itk.array_from_image(img)).astype(np.float32)
            axes = _image_axes(size)
            zooms = tuple(float(s) for s in img.GetSpacing())
            geometry, header_name = _itk_geometry(img, axes), "NRRD" if name.endswith(_NRRD_SUFFIXES) else "MetaImage"
        spacing: tuple[float, float] | None = (zooms[axes[1]], zooms[axes[0]])
    except RadiographReadError:
        raise
    except Exception as e:
        raise RadiographReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        spacing = None
    meta = {
        "spacing": spacing,
        "spacing_source": f"{header_name} header" if spacing is not None else "none",
        "geometry": geometry,
        "photometric": "MONOCHROME2",
        "bits_stored": 16,
    }
    return data.astype(np.float32), meta
