"""Property-based fuzzing of the readers: whatever the bytes, only the documented errors come out.

Random bytes, and real PNG and DICOM files with flipped bits, truncations and overwritten header
fields, go through ``read_radiograph`` and ``read_mask``. Each either returns a finite (rows,
columns) image or raises :class:`~lungseg_monai.io.RadiographReadError` (or a subclass) naming
the file; any other exception, hang or crash fails the test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lungseg_monai.io import RadiographReadError, read_mask, read_radiograph

from conftest import DICOM_JPEG_SIIM
from hostile_corpus import sample_image, write_dicom

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)
PNG_IHDR_FIELDS = range(16, 29)  # width, height, bit depth, colour type, compression, filter, interlace
_counter = itertools.count()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def smallest_sample() -> bytes:
    """The smallest embedded sample PNG (a real radiograph), to keep each example fast."""
    return sample_image(0).read_bytes()


def check_reader(path: Path) -> None:
    """Both readers either succeed with a finite 2D image or raise RadiographReadError naming ``path``."""
    for reader in (read_radiograph, read_mask):
        try:
            rg = reader(path)
        except RadiographReadError as e:
            assert e.path == str(path)
            continue
        assert rg.pixels.ndim == 2 and min(rg.shape) >= 1
        assert np.isfinite(rg.pixels).all()


def write_case(folder: Path, data: bytes, suffix: str) -> Path:
    path = folder / f"case_{next(_counter)}{suffix}"
    path.write_bytes(data)
    return path


def mutate(data: bytes, flips: list[tuple[int, int]], overwrite: list[tuple[int, int]], cut: int | None) -> bytes:
    """Flip bits, overwrite bytes (positions are taken modulo the length) and optionally truncate."""
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    for position, value in overwrite:
        out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


flips = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), max_size=8)
overwrites = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=4)


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".png", ".dcm", ".jpg", ".tif", ""]))
def test_random_bytes_raise_only_documented_errors(fuzz_dir: Path, data: bytes, suffix: str) -> None:
    check_reader(write_case(fuzz_dir, data, suffix))


@FUZZ
@given(
    flips=flips,
    header=st.lists(st.tuples(st.sampled_from(PNG_IHDR_FIELDS), st.integers(0, 255)), max_size=3),
    cut=st.none() | st.integers(0, 200_000),
)
def test_mutated_real_png_raises_only_documented_errors(
    fuzz_dir: Path, flips: list[tuple[int, int]], header: list[tuple[int, int]], cut: int | None
) -> None:
    check_reader(write_case(fuzz_dir, mutate(smallest_sample(), flips, header, cut), ".png"))


@pytest.fixture(scope="module")
def real_dicoms(fuzz_dir: Path) -> list[bytes]:
    """The real JPEG-compressed SIIM file and an uncompressed DICOM made from a sample radiograph."""
    pixels = np.asarray(read_radiograph(sample_image(0)).pixels, dtype=np.uint8)[:128, :128]
    uncompressed = write_dicom(fuzz_dir / "uncompressed_source.dcm", pixels)
    return [DICOM_JPEG_SIIM.read_bytes(), uncompressed.read_bytes()]


HEADER_BYTES = 1024  # most DICOM header fields sit in the first kilobyte of these files


@FUZZ
@given(
    which=st.integers(0, 1),
    flips=flips,
    header=st.lists(st.tuples(st.integers(128, HEADER_BYTES), st.integers(0, 255)), max_size=4),
    cut=st.none() | st.integers(0, 140_000),
    suffix=st.sampled_from([".dcm", ""]),
)
def test_mutated_real_dicom_raises_only_documented_errors(
    fuzz_dir: Path,
    real_dicoms: list[bytes],
    which: int,
    flips: list[tuple[int, int]],
    header: list[tuple[int, int]],
    cut: int | None,
    suffix: str,
) -> None:
    check_reader(write_case(fuzz_dir, mutate(real_dicoms[which], flips, header, cut), suffix))
