"""Each hostile input through the readers: read correctly, or a RadiographReadError naming file and reason."""

from __future__ import annotations

import os
import resource
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungseg_monai.io import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    MaskMismatchError,
    RadiographReadError,
    UnsupportedTransferSyntaxError,
    check_mask_matches,
    read_mask,
    read_radiograph,
)
from lungseg_monai.io import dicom as dicom_module

from conftest import DICOM_J2K_MONO1
from hostile_corpus import (
    BOMB_SIDE,
    PHI_STRINGS,
    png_with_header_size,
    sample_image,
    sample_mask,
    sample_pixels,
    write_dicom_variants,
    write_mask_variants,
    write_png_variants,
)


@pytest.fixture(scope="module")
def png_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_png_variants(tmp_path_factory.mktemp("png"))


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_dicom_variants(tmp_path_factory.mktemp("dicom"))


@pytest.fixture(scope="module")
def mask_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_mask_variants(tmp_path_factory.mktemp("masks"))


def refusal(path: Path, error: type[RadiographReadError] = RadiographReadError) -> RadiographReadError:
    """Read ``path`` expecting ``error``; the message must name the file."""
    with pytest.raises(error) as info:
        read_radiograph(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "pixel data cannot be decoded (OSError: image file is truncated"),
        ("zero_bytes", "file is empty (0 bytes)"),
        ("text", "not a readable image (UnidentifiedImageError"),
    ],
)
def test_broken_png_is_refused_naming_file_and_reason(png_files: dict[str, Path], kind: str, reason: str) -> None:
    error = refusal(png_files[kind])
    assert reason in error.reason


def test_one_pixel_png_reads_as_one_pixel(png_files: dict[str, Path]) -> None:
    rg = read_radiograph(png_files["one_pixel"])
    assert rg.shape == (1, 1)
    assert rg.pixels[0, 0] == sample_pixels()[0, 0]


def test_sixteen_bit_png_keeps_its_full_range(png_files: dict[str, Path]) -> None:
    rg = read_radiograph(png_files["sixteen_bit"])
    np.testing.assert_array_equal(rg.pixels, sample_pixels().astype(np.float32) * 257)
    assert rg.meta["bits_stored"] == 16


def test_rgba_png_reads_as_its_grey_values(png_files: dict[str, Path]) -> None:
    np.testing.assert_array_equal(read_radiograph(png_files["rgba"]).pixels, sample_pixels())


def test_palette_png_reads_through_its_palette(tmp_path: Path) -> None:
    pixels = sample_pixels()
    image = Image.new("P", (pixels.shape[1], pixels.shape[0]))
    image.putdata(pixels.flatten().tolist())
    # An inverted grey ramp: reading the indices instead of the palette would give 255 - truth.
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    image.save(tmp_path / "palette.png")
    rg = read_radiograph(tmp_path / "palette.png")
    assert rg.meta["photometric"] == "PIL:P"
    np.testing.assert_array_equal(rg.pixels, 255 - pixels.astype(np.float32))


def test_decompression_bomb_png_is_refused_before_decoding(png_files: dict[str, Path]) -> None:
    error = refusal(png_files["bomb"], ImageTooLargeError)
    assert "LUNGSEG_MAX_PIXELS" in error.reason and str(DEFAULT_MAX_PIXELS) in error.reason


def test_image_above_our_limit_but_below_pillows_is_refused_with_its_size(tmp_path: Path) -> None:
    side = 9000  # 81 Mpx: over DEFAULT_MAX_PIXELS (67 Mpx), under Pillow's own refusal (179 Mpx)
    error = refusal(png_with_header_size(tmp_path / "big.png", side, side), ImageTooLargeError)
    assert error.reason == f"{side}x{side} pixels exceeds the limit of {DEFAULT_MAX_PIXELS} (LUNGSEG_MAX_PIXELS)"


def test_reading_in_threads_leaves_the_warning_filters_as_they_were(png_files: dict[str, Path]) -> None:
    # The reader silences Pillow's bomb warning with catch_warnings, which swaps process-wide state;
    # interleaved threads used to restore each other's stale filter lists.
    before = list(warnings.filters)
    paths = [sample_image(), png_files["bomb"]] * 200

    def read(path: Path) -> str:
        try:
            return str(read_radiograph(path).shape)
        except ImageTooLargeError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, paths))
    assert results.count("refused") == 200
    assert warnings.filters == before


def test_pixel_limit_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, cols = sample_pixels().shape
    monkeypatch.setenv("LUNGSEG_MAX_PIXELS", str(rows * cols - 1))
    refusal(sample_image(), ImageTooLargeError)
    monkeypatch.setenv("LUNGSEG_MAX_PIXELS", str(rows * cols))
    assert read_radiograph(sample_image()).shape == (rows, cols)


def _peak_memory_of_child_reading(path: Path, headroom: int) -> tuple[str, int]:
    """Fork, cap the child's address space at its current size + ``headroom``, read ``path`` there.

    Returns the child's outcome (error class name, or "read") and its peak RSS growth in bytes.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, report through the pipe and _exit
        outcome = "crashed"
        try:
            with open("/proc/self/statm") as f:
                size = int(f.read().split()[0]) * resource.getpagesize()
            resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                read_radiograph(path)
                outcome = "read"
            except Exception as e:
                outcome = type(e).__name__
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
            os.write(write_end, f"{outcome} {grown}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end) as pipe:
            outcome, grown = pipe.read().split()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child reading {path} died with {status}"
    return outcome, int(grown)


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_bomb_is_refused_without_allocating_its_pixels(
    png_files: dict[str, Path], dicom_files: dict[str, Path], kind: str
) -> None:
    """10 GB (PNG) and 4 GB (DICOM) announced; the reader may use at most 64 MB more than it had."""
    headroom = 64 * 2**20
    path = png_files["bomb"] if kind == "png" else dicom_files["bomb"]
    outcome, grown = _peak_memory_of_child_reading(path, headroom)
    assert outcome == "ImageTooLargeError"
    assert grown < headroom
    assert BOMB_SIDE**2 > 100 * headroom  # the cap is far below what decoding would need


def test_good_dicom_reads_with_spacing_and_uids_but_no_patient_data(dicom_files: dict[str, Path]) -> None:
    rg = read_radiograph(dicom_files["good"])
    np.testing.assert_array_equal(rg.pixels, sample_pixels())
    assert rg.spacing == (0.168, 0.168)
    assert rg.meta["sop_instance_uid"] and rg.meta["transfer_syntax"] == "1.2.840.10008.1.2.1"
    for phi in PHI_STRINGS:
        assert phi not in repr(rg.meta)


def test_dicom_without_spacing_reads_with_spacing_none(dicom_files: dict[str, Path]) -> None:
    rg = read_radiograph(dicom_files["no_spacing"])
    assert rg.spacing is None
    assert rg.shape == sample_pixels().shape


@pytest.mark.parametrize(
    ("kind", "error", "reason"),
    [
        ("no_pixel_data", RadiographReadError, "DICOM object has no PixelData (CR); it is not an image"),
        ("multi_frame", RadiographReadError, "multi-frame DICOM (3 frames); expected a single radiograph"),
        ("bomb", ImageTooLargeError, "65535x65535x1 pixels exceeds the limit of 67108864 (LUNGSEG_MAX_PIXELS)"),
        (
            "jpeg_xl",
            UnsupportedTransferSyntaxError,
            "pixel data is compressed as JPEG XL Lossless (1.2.840.10008.1.2.4.110), which no installed plugin "
            "decodes; no pydicom plugin decodes JPEG XL yet; export the image from the archive as JPEG 2000 or "
            "uncompressed",
        ),
        (
            "mpeg2",
            UnsupportedTransferSyntaxError,
            "which no installed plugin decodes; no pydicom plugin decodes video",
        ),
    ],
)
def test_unusable_dicom_is_refused_naming_file_and_reason(
    dicom_files: dict[str, Path], kind: str, error: type[RadiographReadError], reason: str
) -> None:
    message = refusal(dicom_files[kind], error)
    assert reason in message.reason
    for phi in PHI_STRINGS:
        assert phi not in str(message)


def test_missing_decoder_names_the_plugin_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG 2000 radiograph on a machine without pylibjpeg-openjpeg (simulated)."""
    monkeypatch.setattr(dicom_module, "_decoder_available", lambda ts: False)
    error = refusal(DICOM_J2K_MONO1, UnsupportedTransferSyntaxError)
    assert error.reason == (
        "pixel data is compressed as JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91), which no installed "
        "plugin decodes; install pylibjpeg with pylibjpeg-openjpeg"
    )


def test_mask_of_another_size_is_refused_naming_both_files(mask_files: dict[str, Path]) -> None:
    image = read_radiograph(sample_image())
    mask = read_mask(mask_files["wrong_size"])
    with pytest.raises(MaskMismatchError) as info:
        check_mask_matches(mask, image.shape, image.path)
    (rows, cols), (mrows, mcols) = image.shape, mask.shape
    assert str(info.value) == (
        f"cannot read '{mask.path}': mask '{mask.path}' is {mcols}x{mrows} but image '{image.path}' is "
        f"{cols}x{rows}; masks must match their image"
    )


def test_empty_mask_reads_as_all_background(mask_files: dict[str, Path]) -> None:
    mask = read_mask(mask_files["empty"])
    assert mask.shape == sample_pixels().shape and not mask.pixels.any()


def test_mask_labelled_0_1_2_merges_both_lungs(mask_files: dict[str, Path]) -> None:
    """Left lung 1, right lung 2: both are lung; the binary mask equals the original one."""
    labelled = np.asarray(Image.open(mask_files["labels_0_1_2"]))
    assert set(np.unique(labelled)) == {0, 1, 2}
    mask = read_mask(mask_files["labels_0_1_2"])
    assert mask.pixels.dtype == np.uint8 and set(np.unique(mask.pixels)) == {0, 1}
    np.testing.assert_array_equal(mask.pixels, (np.asarray(Image.open(sample_mask())) > 0).astype(np.uint8))


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path / "absent.png").reason == "file does not exist"
    assert refusal(tmp_path).reason == "is a folder, not a file"
