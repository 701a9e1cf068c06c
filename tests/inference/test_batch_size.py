"""The batch size ``lungseg infer`` picks when none is given: the fastest measured for the input size."""

from __future__ import annotations

import pytest

from lungseg_monai.inference.options import CPU_BATCH_PIXELS, DEFAULT_BATCH_SIZE, MAX_CPU_BATCH_SIZE, auto_batch_size


@pytest.mark.parametrize(("image_size", "expected"), [(1024, 1), (512, 1), (384, 1), (256, 4), (128, 8), (64, 8)])
def test_cpu_batch_holds_about_one_512px_image_of_pixels(image_size: int, expected: int) -> None:
    batch = auto_batch_size(image_size, "cpu")
    assert batch == expected
    assert batch == 1 or batch * image_size**2 <= CPU_BATCH_PIXELS
    assert 1 <= batch <= MAX_CPU_BATCH_SIZE


def test_gpu_keeps_the_fixed_default() -> None:
    assert auto_batch_size(512, "cuda") == auto_batch_size(128, "cuda") == DEFAULT_BATCH_SIZE
