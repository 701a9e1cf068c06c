"""Hostile inputs made from real files: broken, odd and oversized PNGs and DICOMs, and bad masks.

Every file starts from a real radiograph (the embedded sample data, or the SIIM DICOM in
../shared/data when present) and is damaged or re-encoded the way archives and exports damage
them. DICOMs carry a distinctive, made-up patient name, ID and birth date so tests can check that
none of it reaches logs, reports or error messages.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import DICOM_JPEG_SIIM, SAMPLE_DATA

# Made-up identifiers, distinctive enough that any leak is found by a plain substring search.
PATIENT_NAME = "Quixotic^Zebulon"
PATIENT_ID = "PID7Q3X9ZK"
PATIENT_BIRTH_DATE = "19230405"
PHI_STRINGS = ("Quixotic", "Zebulon", PATIENT_ID, PATIENT_BIRTH_DATE)

JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
MPEG2_VIDEO = "1.2.840.10008.1.2.4.100"
BOMB_SIDE = 100_000  # a PNG header claiming 100000 x 100000 pixels (10 GB decoded)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SAMPLE_NAMES = sorted(p.name for p in (SAMPLE_DATA / "images").iterdir())


def sample_image(index: int = 0) -> Path:
    return SAMPLE_DATA / "images" / SAMPLE_NAMES[index]


def sample_mask(index: int = 0) -> Path:
    return SAMPLE_DATA / "masks" / SAMPLE_NAMES[index]


def sample_pixels(index: int = 0) -> np.ndarray:
    """(rows, columns) uint8 pixels of an embedded sample radiograph."""
    return np.asarray(Image.open(sample_image(index)).convert("L"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A valid-looking 8-bit grey PNG whose header announces ``width`` x ``height`` pixels (tiny file)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    path.write_bytes(PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


def write_png_variants(folder: Path, index: int = 0) -> dict[str, Path]:
    """PNGs from one sample radiograph: broken ones and odd-but-valid encodings."""
    folder.mkdir(parents=True, exist_ok=True)
    src = sample_image(index)
    raw = src.read_bytes()
    pixels = sample_pixels(index)
    files = {
        "truncated": folder / "truncated.png",
        "zero_bytes": folder / "zero_bytes.png",
        "text": folder / "text.png",
        "one_pixel": folder / "one_pixel.png",
        "bomb": folder / "bomb.png",
        "sixteen_bit": folder / "sixteen_bit.png",
        "rgba": folder / "rgba.png",
        "palette": folder / "palette.png",
    }
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["zero_bytes"].write_bytes(b"")
    files["text"].write_text("patient list exported from the RIS\nthis is not an image\n")
    Image.fromarray(pixels[:1, :1]).save(files["one_pixel"])
    png_with_header_size(files["bomb"], BOMB_SIDE, BOMB_SIDE)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(files["sixteen_bit"])
    alpha = np.full_like(pixels, 255)
    Image.fromarray(np.stack([pixels, pixels, pixels, alpha], axis=-1), mode="RGBA").save(files["rgba"])
    Image.fromarray(pixels).convert("P").save(files["palette"])
    return files


def _save_dicom(ds: pydicom.Dataset, path: Path) -> Path:
    """Write ``ds`` as Explicit VR Little Endian with pydicom 2 or 3."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def dicom_template() -> pydicom.Dataset:
    """The header of a real chest PA (the SIIM file) with the made-up patient identifiers."""
    ds = pydicom.dcmread(DICOM_JPEG_SIIM)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    for keyword in ("LossyImageCompression", "LossyImageCompressionMethod"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def write_dicom(path: Path, frames: np.ndarray, spacing: bool = True, pixel_data: bool = True) -> Path:
    """An uncompressed 8-bit MONOCHROME2 DICOM of ``frames`` ((rows, cols) or (n, rows, cols) uint8)."""
    ds = dicom_template()
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    ds.Rows, ds.Columns = int(frames.shape[-2]), int(frames.shape[-1])
    if frames.ndim == 3:
        ds.NumberOfFrames = int(frames.shape[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.PixelData
    if pixel_data:
        ds.PixelData = frames.tobytes()
        ds["PixelData"].VR = "OB"
    if not spacing:
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            if keyword in ds:
                delattr(ds, keyword)
    return _save_dicom(ds, path)


def retag_transfer_syntax(src: Path, dst: Path, uid: str) -> Path:
    """Copy a DICOM file, changing only its Transfer Syntax UID bytes (pydicom may not know ``uid``)."""
    data = bytearray(src.read_bytes())
    start = data.index(b"\x02\x00\x10\x00UI")
    old_length = struct.unpack_from("<H", data, start + 6)[0]
    value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    data[start + 6 : start + 8 + old_length] = struct.pack("<H", len(value)) + value
    group = data.index(b"\x02\x00\x00\x00UL")
    struct.pack_into("<I", data, group + 8, struct.unpack_from("<I", data, group + 8)[0] + len(value) - old_length)
    dst.write_bytes(bytes(data))
    return dst


def write_dicom_variants(folder: Path, index: int = 0) -> dict[str, Path]:
    """DICOMs built from a sample radiograph and the SIIM header (sample_data/dicom)."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = sample_pixels(index)
    files = {
        "good": write_dicom(folder / "good.dcm", pixels),
        "no_spacing": write_dicom(folder / "no_spacing.dcm", pixels, spacing=False),
        "no_pixel_data": write_dicom(folder / "no_pixel_data.dcm", pixels, pixel_data=False),
        "multi_frame": write_dicom(folder / "multi_frame.dcm", np.stack([pixels, pixels, pixels])),
    }
    # The real JPEG-compressed file, with identifiers replaced, relabelled as JPEG XL and as video.
    jpeg = dicom_template()
    jpeg.save_as(folder / "jpeg_baseline.dcm")
    files["jpeg_xl"] = retag_transfer_syntax(folder / "jpeg_baseline.dcm", folder / "jpeg_xl.dcm", JPEG_XL_LOSSLESS)
    files["mpeg2"] = retag_transfer_syntax(folder / "jpeg_baseline.dcm", folder / "mpeg2.dcm", MPEG2_VIDEO)
    (folder / "jpeg_baseline.dcm").unlink()
    bomb = dicom_template()
    bomb.Rows = bomb.Columns = 65535
    files["bomb"] = folder / "bomb.dcm"
    bomb.save_as(files["bomb"])
    return files


def write_mask_variants(folder: Path, index: int = 0) -> dict[str, Path]:
    """Masks for sample ``index``: wrong size, empty, and labelled 0/1/2 (left/right lung)."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(Image.open(sample_mask(index))) > 0
    rows, cols = mask.shape
    labelled = np.zeros(mask.shape, np.uint8)
    labelled[:, : cols // 2][mask[:, : cols // 2]] = 1
    labelled[:, cols // 2 :][mask[:, cols // 2 :]] = 2
    files = {
        "wrong_size": folder / "wrong_size.png",
        "empty": folder / "empty.png",
        "labels_0_1_2": folder / "labels_0_1_2.png",
    }
    Image.fromarray((mask[: rows // 2, : cols // 2] * 255).astype(np.uint8)).save(files["wrong_size"])
    Image.fromarray(np.zeros(mask.shape, np.uint8)).save(files["empty"])
    Image.fromarray(labelled).save(files["labels_0_1_2"])
    return files


@dataclass(frozen=True)
class Pair:
    """One image/mask pair of the hostile dataset and whether training may use it."""

    name: str
    usable: bool


def build_hostile_dataset(root: Path, with_dicom: bool) -> list[Pair]:
    """``root/images`` + ``root/masks``: real sample pairs mixed with every hostile case.

    Usable pairs: plain sample PNGs, 16-bit/RGBA/palette re-encodings, a 0/1/2 mask and (with
    ``with_dicom``) DICOMs with and without spacing. Unusable: truncated, empty, text, 1x1,
    decompression bomb, wrong-size mask, empty mask, and DICOMs without pixel data, in JPEG XL or
    multi-frame.
    """
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    pairs: list[Pair] = []

    def add(name: str, image: Path, mask: Path, usable: bool) -> None:
        shutil.copyfile(image, images / f"{name}{image.suffix}")
        shutil.copyfile(mask, masks / f"{name}.png")
        pairs.append(Pair(name, usable))

    for i in range(6):
        add(f"plain_{i}", sample_image(i), sample_mask(i), True)
    png = write_png_variants(root / "work" / "png", index=6)
    for kind in ("sixteen_bit", "rgba", "palette"):
        add(kind, png[kind], sample_mask(6), True)
    for kind in ("truncated", "zero_bytes", "text", "bomb"):
        add(kind, png[kind], sample_mask(6), False)
    one_pixel_mask = root / "work" / "one_pixel_mask.png"
    Image.fromarray(np.full((1, 1), 255, np.uint8)).save(one_pixel_mask)
    add("one_pixel", png["one_pixel"], one_pixel_mask, False)
    bad_masks = write_mask_variants(root / "work" / "masks", index=7)
    add("labels_0_1_2", sample_image(7), bad_masks["labels_0_1_2"], True)
    add("wrong_size_mask", sample_image(7), bad_masks["wrong_size"], False)
    add("empty_mask", sample_image(7), bad_masks["empty"], False)
    if with_dicom:
        dcm = write_dicom_variants(root / "work" / "dicom", index=8)
        for kind in ("good", "no_spacing"):
            add(f"dicom_{kind}", dcm[kind], sample_mask(8), True)
        for kind in ("no_pixel_data", "jpeg_xl", "multi_frame"):
            add(f"dicom_{kind}", dcm[kind], sample_mask(8), False)
    shutil.rmtree(root / "work")
    return pairs
