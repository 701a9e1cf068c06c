"""Reading real chest radiographs: the shared DICOM files, the embedded PNGs, and format variants."""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DICOM_FAKE_MONO1, DICOM_J2K_MONO1, DICOM_JPEG_SIIM, SAMPLE_DATA, SHARED_CXR, require_shared
from PIL import ExifTags, Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg_monai.io import MaskMismatchError, RadiographReadError, check_mask_matches, read_mask, read_radiograph

SAMPLE_IMAGE = sorted((SAMPLE_DATA / "images").glob("*.png"))[0]
SAMPLE_MASK = SAMPLE_DATA / "masks" / SAMPLE_IMAGE.name


def _lung_vs_mediastinum(pixels: np.ndarray) -> float:
    """Mean of the lateral lung fields minus the central strip (negative on a correctly displayed film)."""
    rows, cols = pixels.shape
    band = pixels[int(rows * 0.3) : int(rows * 0.6)]
    lungs = np.concatenate([band[:, int(cols * 0.2) : int(cols * 0.3)], band[:, int(cols * 0.7) : int(cols * 0.8)]], 1)
    centre = band[:, int(cols * 0.45) : int(cols * 0.55)]
    return float(lungs.mean() - centre.mean())


def test_jpeg2000_monochrome1_cr_is_decoded_and_inverted() -> None:
    require_shared()
    rg = read_radiograph(DICOM_J2K_MONO1)
    assert rg.shape == (1955, 1841)
    assert rg.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    assert rg.meta["photometric"] == "MONOCHROME1"
    assert rg.meta["polarity_corrected"] is False
    assert rg.spacing is None  # the file's PixelSpacing is 0\0, which means unknown
    assert _lung_vs_mediastinum(rg.pixels) < 0  # lungs dark after inversion
    assert 500 < float(np.median(rg.pixels)) < 30000


def test_jpeg_baseline_secondary_capture_with_spacing() -> None:
    require_shared()
    rg = read_radiograph(DICOM_JPEG_SIIM)
    assert rg.shape == (1024, 1024)
    assert rg.spacing == pytest.approx((0.168, 0.168))
    assert rg.meta["photometric"] == "MONOCHROME2"
    assert rg.pixels.min() == 0 and rg.pixels.max() == 254
    assert rg.pixels.mean() == pytest.approx(160.398, abs=0.01)
    assert _lung_vs_mediastinum(rg.pixels) < 0


def test_false_monochrome1_tag_is_detected_and_undone() -> None:
    require_shared()
    honest = read_radiograph(DICOM_JPEG_SIIM)
    fake = read_radiograph(DICOM_FAKE_MONO1)
    assert fake.meta["polarity_corrected"] is True
    np.testing.assert_array_equal(fake.pixels, honest.pixels)
    trusting = read_radiograph(DICOM_FAKE_MONO1, polarity="header")
    assert _lung_vs_mediastinum(trusting.pixels) > 0  # what a header-trusting loader shows


def test_embedded_png_and_mask_are_read_in_pil_orientation() -> None:
    rg = read_radiograph(SAMPLE_IMAGE)
    with Image.open(SAMPLE_IMAGE) as im:
        expected = np.asarray(im.convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(rg.pixels, expected)
    mask = read_mask(SAMPLE_MASK)
    assert mask.shape == rg.shape and set(np.unique(mask.pixels)) == {0, 1}


def _asymmetric(rows: int = 40, cols: int = 60) -> np.ndarray:
    arr = np.zeros((rows, cols), np.uint16)
    arr[2:10, 3:8] = 1000  # a block near the top-left corner only
    arr[rows - 5 :, cols - 20 :] = 400
    return arr


def _write_dicom(path: Path, pixels: np.ndarray, spacing: tuple[float, float] | None = (0.2, 0.3)) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if spacing is not None:
        ds.ImagerPixelSpacing = list(spacing)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(path, write_like_original=False)


def test_asymmetric_image_has_the_same_orientation_from_png_and_dicom(tmp_path: Path) -> None:
    arr = _asymmetric()
    Image.fromarray(arr).save(tmp_path / "a.png")
    _write_dicom(tmp_path / "a.dcm", arr)
    png, dcm = read_radiograph(tmp_path / "a.png"), read_radiograph(tmp_path / "a.dcm")
    assert png.shape == dcm.shape == (40, 60)
    np.testing.assert_array_equal(png.pixels, arr.astype(np.float32))
    np.testing.assert_array_equal(dcm.pixels, arr.astype(np.float32))
    assert dcm.spacing == pytest.approx((0.2, 0.3))
    assert png.meta["bits_stored"] == 16


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_and_palette_pngs_become_grey(mode: str, tmp_path: Path) -> None:
    with Image.open(SAMPLE_IMAGE) as im:
        grey = im.convert("L")
        grey.convert(mode).save(tmp_path / "x.png")
    rg = read_radiograph(tmp_path / "x.png")
    assert rg.shape == (grey.height, grey.width)
    diff = np.abs(rg.pixels - np.asarray(grey, np.float32))
    assert float(diff.mean()) < 2.0  # palette quantisation may move a few levels


def test_jpeg_is_read(tmp_path: Path) -> None:
    with Image.open(SAMPLE_IMAGE) as im:
        im.convert("L").save(tmp_path / "x.jpg", quality=95)
    assert read_radiograph(tmp_path / "x.jpg").shape == read_radiograph(SAMPLE_IMAGE).shape


# A real pair that is not square (1024 wide, 763 high), so a rotation also shows in the shape.
WIDE_CASE = "01E392EE-69F9-4E33-BFCE-E5C968654078"
# JPEG leaves a mask a few pixels off along the outline at most: a fraction of all pixels.
MAX_JPEG_MASK_DISAGREEMENT = 0.001
# Mean grey-level difference allowed between a quality-95 JPEG and its PNG original.
MAX_JPEG_GREY_ERROR = 2.0


def _wide_case_pngs() -> tuple[Path, Path]:
    require_shared()
    return SHARED_CXR / "images" / f"{WIDE_CASE}.png", SHARED_CXR / "masks" / f"{WIDE_CASE}.png"


def _disagreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a != b).mean())


def test_jpeg_mask_is_thresholded_at_mid_range_not_at_any_nonzero(tmp_path: Path) -> None:
    _, mask_png = _wide_case_pngs()
    with Image.open(mask_png) as im:
        im.save(tmp_path / "mask.jpg", quality=75)  # Pillow's default quality: ringing along the outline
    reference = read_mask(mask_png).pixels
    assert _disagreement(read_mask(tmp_path / "mask.jpg").pixels, reference) < MAX_JPEG_MASK_DISAGREEMENT
    with Image.open(tmp_path / "mask.jpg") as im:  # the noise is there: any-non-zero would be far off
        assert _disagreement((np.asarray(im) > 0).astype(np.uint8), reference) > 5 * MAX_JPEG_MASK_DISAGREEMENT


# EXIF Orientation value -> how the pixels are stored so that applying the tag shows the original.
STORED_ROTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED_ROTATION))
def test_jpeg_exif_orientation_is_applied_to_image_and_mask(orientation: int, tmp_path: Path) -> None:
    image_png, mask_png = _wide_case_pngs()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    for source, target in ((image_png, "image.jpg"), (mask_png, "mask.jpg")):
        with Image.open(source) as im:
            im.transpose(STORED_ROTATION[orientation]).save(tmp_path / target, quality=95, exif=exif)
    original = read_radiograph(image_png)
    rotated = read_radiograph(tmp_path / "image.jpg")
    assert rotated.shape == original.shape == (763, 1024)
    assert float(np.abs(rotated.pixels - original.pixels).mean()) < MAX_JPEG_GREY_ERROR
    assert rotated.meta["exif_orientation"] == orientation
    mask = read_mask(tmp_path / "mask.jpg")
    assert _disagreement(mask.pixels, read_mask(mask_png).pixels) < MAX_JPEG_MASK_DISAGREEMENT
    check_mask_matches(read_mask(mask_png), rotated.shape, rotated.path)  # the PNG mask fits the JPEG image


def test_metaimage_nrrd_and_nifti_keep_orientation_and_spacing(tmp_path: Path) -> None:
    arr = _asymmetric().astype(np.float32)
    for suffix in (".mha", ".nrrd"):
        img = itk.image_from_array(arr)
        img.SetSpacing((0.3, 0.2))  # ITK spacing is (x=column, y=row)
        itk.imwrite(img, str(tmp_path / f"a{suffix}"))
        rg = read_radiograph(tmp_path / f"a{suffix}")
        np.testing.assert_array_equal(rg.pixels, arr)
        assert rg.spacing == pytest.approx((0.2, 0.3))
    nifti = nib.Nifti1Image(arr.T[..., None], np.diag([0.3, 0.2, 1.0, 1.0]))  # NIfTI x = columns
    nib.save(nifti, tmp_path / "a.nii.gz")
    rg = read_radiograph(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(rg.pixels, arr)
    assert rg.spacing == pytest.approx((0.2, 0.3))


def test_dicom_without_file_meta_header_is_read(tmp_path: Path) -> None:
    arr = _asymmetric()
    _write_dicom(tmp_path / "a.dcm", arr)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.file_meta
    ds.preamble = None
    ds.is_little_endian, ds.is_implicit_VR = True, True
    ds.save_as(tmp_path / "old", write_like_original=True)  # no preamble, no meta, no suffix
    rg = read_radiograph(tmp_path / "old")
    np.testing.assert_array_equal(rg.pixels, arr.astype(np.float32))


def test_mask_values_any_nonzero_is_lung(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 2], [255, 0, 7]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png").pixels, (arr > 0).astype(np.uint8))


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    with pytest.raises(MaskMismatchError) as info:
        check_mask_matches(mask, (20, 30), "images/a.png")
    assert str(info.value).endswith(
        f"mask '{tmp_path / 'm.png'}' is 12x10 but image 'images/a.png' is 30x20; masks must match their image"
    )


def test_unreadable_file_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(RadiographReadError) as info:
        read_radiograph(bad)
    assert info.value.path == str(bad)
    assert str(info.value).startswith(f"cannot read '{bad}': not a readable image")
