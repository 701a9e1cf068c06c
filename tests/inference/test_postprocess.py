"""Mask post-processing (CleanLungMask) and the mask PNG writer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA, SHARED_CXR, require_shared
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, RemoveSmallObjects
from PIL import Image
from scipy import ndimage

from lungseg_monai.inference import CleanLungMask, CleanLungMaskd, SaveLungMask, SaveLungMaskd, clean_lung_mask
from lungseg_monai.inference.transforms import DEFAULT_MIN_SIZE_FRACTION, fill_mask_holes, mask_postprocessing
from lungseg_monai.io import read_mask


def _two_lungs_with_speck_and_hole() -> np.ndarray:
    """Synthetic 200x160 mask: two 'lungs', a 3x3 speck and a 4x4 hole in the right one."""
    mask = np.zeros((200, 160), np.uint8)
    mask[30:170, 15:70] = 1  # image left = patient's right lung
    mask[40:160, 95:145] = 1
    mask[100:104, 30:34] = 0  # hole
    mask[5:8, 150:153] = 1  # speck
    return mask


def test_clean_removes_planted_speck_and_fills_planted_hole_synthetic() -> None:
    mask = _two_lungs_with_speck_and_hole()
    out = CleanLungMask()(mask)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    assert out[5:8, 150:153].sum() == 0  # speck gone
    assert out[100:104, 30:34].all()  # hole filled
    expected = np.zeros_like(mask)
    expected[30:170, 15:70] = 1
    expected[40:160, 95:145] = 1
    np.testing.assert_array_equal(out, expected)


def test_clean_keeps_only_the_two_largest_regions_synthetic() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:60, 5:30] = True  # 1250 px
    mask[10:60, 60:90] = True  # 1500 px
    mask[70:95, 40:55] = True  # 375 px: large enough to survive the size rule, third largest
    out = clean_lung_mask(mask)
    assert out[10:60, 5:30].all() and out[10:60, 60:90].all()
    assert not out[70:95, 40:55].any()
    assert clean_lung_mask(mask, num_components=None)[70:95, 40:55].all()


def test_clean_settings_can_switch_each_step_off_synthetic() -> None:
    mask = _two_lungs_with_speck_and_hole()
    kept_speck = clean_lung_mask(mask, num_components=None, min_size_fraction=0.0)
    assert kept_speck[5:8, 150:153].all()
    kept_hole = clean_lung_mask(mask, fill_holes=False)
    assert not kept_hole[100:104, 30:34].any()


def test_clean_empty_mask_stays_empty() -> None:
    assert clean_lung_mask(np.zeros((32, 32), np.uint8)).sum() == 0


def test_clean_dict_version_keeps_metatensor_meta_and_dtype_synthetic() -> None:
    mask = MetaTensor(
        torch.as_tensor(_two_lungs_with_speck_and_hole()[None], dtype=torch.float32), meta={"filename_or_obj": "a.png"}
    )
    out = CleanLungMaskd(keys="pred")({"pred": mask})["pred"]
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, 200, 160)
    assert out.meta["filename_or_obj"] == "a.png"
    assert float(out[0, 5:8, 150:153].sum()) == 0.0 and bool(out[0, 100:104, 30:34].all())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_components": 0}, "num_components must be a positive integer or None (keep all), got 0"),
        ({"min_size_fraction": 1.5}, "min_size_fraction must be in [0, 1), got 1.5"),
    ],
)
def test_clean_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        CleanLungMask(**kwargs)
    assert str(info.value) == message


def test_clean_rejects_multichannel_input() -> None:
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8\)"):
        CleanLungMask()(np.zeros((2, 8, 8)))


def test_mask_postprocessing_is_sigmoid_resize_threshold_clean_with_the_given_settings() -> None:
    """The one post-processing chain: logits -> probabilities -> the reference size -> >= threshold -> cleaned with
    the cleaner's own settings; the size comes from an image's original_shape meta or a plain (rows, columns)."""
    from monai.transforms import Compose

    mask = _two_lungs_with_speck_and_hole()
    logits = torch.as_tensor(np.where(mask > 0, 3.0, -3.0), dtype=torch.float32)[None, ::2, ::2]  # 100 x 80
    image = MetaTensor(torch.zeros(1, 100, 80), meta={"original_shape": mask.shape})
    chain = Compose(mask_postprocessing("pred", threshold=0.5, ref_key="image"))
    out = chain({"pred": logits, "image": image})["pred"]
    assert tuple(out.shape) == (1, *mask.shape)
    assert out[0, 102, 32] == 1 and out[0, 6, 151] == 0  # hole filled, speck dropped, at the original size
    keep_all = CleanLungMask(num_components=None, min_size_fraction=0.0, fill_holes=False)
    raw = Compose(mask_postprocessing("pred", threshold=0.5, ref_key="shape", clean=keep_all))
    raw_out = raw({"pred": logits, "shape": mask.shape})["pred"]
    assert raw_out[0, 102, 32] == 0 and raw_out[0, 6, 151] == 1  # the given settings, not the defaults
    probabilities = torch.sigmoid(logits)
    no_sigmoid = Compose(mask_postprocessing("pred", threshold=0.5, ref_key="shape", sigmoid=False))
    assert torch.equal(no_sigmoid({"pred": probabilities, "shape": mask.shape})["pred"], out.as_tensor())
    with pytest.raises(RuntimeError, match="ResizeToOriginald") as failed:  # Compose names the failing step
        chain({"pred": logits, "image": torch.zeros(1, 100, 80)})
    assert "'image' is neither an image with 'original_shape' meta" in str(failed.value.__cause__)


def test_known_mask_round_trips_pixel_exact_through_png_writer(tmp_path) -> None:
    """A real annotated (non-square) mask: written as 0/255 and read back identical, not transposed."""
    source = SAMPLE_DATA / "masks" / "41182_2020_203_Fig3_HTML.png"
    known = read_mask(source).pixels
    assert known.shape[0] != known.shape[1], "pick a non-square mask so a transposition would show"
    written = SaveLungMask(tmp_path)(known, "41182_2020_203_Fig3_HTML")
    back = np.asarray(Image.open(written))
    assert back.dtype == np.uint8 and back.shape == known.shape
    assert set(np.unique(back)) == {0, 255}
    np.testing.assert_array_equal(back == 255, known == 1)
    np.testing.assert_array_equal(back, np.asarray(Image.open(source)))


def test_save_dict_version_names_file_from_name_key_or_meta(tmp_path) -> None:
    mask = MetaTensor(torch.ones(1, 6, 9), meta={"filename_or_obj": "/x/chest_7.png"})
    SaveLungMaskd(keys="pred", output_dir=tmp_path)({"pred": mask, "name": "uid.1.2"})
    SaveLungMaskd(keys="pred", output_dir=tmp_path)({"pred": mask})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chest_7.png", "uid.1.2.png"]
    assert np.asarray(Image.open(tmp_path / "chest_7.png")).shape == (6, 9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_mask_holes_equals_scipy_binary_fill_holes_random_synthetic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((120, 90)) > 0.45)  # blobs with holes, some touching the border
    filled = fill_mask_holes(mask)
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))
    assert filled.sum() > mask.sum()  # there were holes to fill


def _with_noise(mask: np.ndarray, seed: int) -> np.ndarray:
    """A real mask with specks outside and holes inside the lungs, some touching each other or the border."""
    rng = np.random.default_rng(seed)
    return mask ^ ndimage.binary_dilation(rng.random(mask.shape) > 0.9995, iterations=2)


def _monai_clean(mask: np.ndarray, num_components: int, min_size_fraction: float, fill_holes: bool) -> np.ndarray:
    """MONAI's transforms in CleanLungMask's order and connectivity (8-connected lungs, 4-connected holes)."""
    x = torch.as_tensor(mask[None].astype(np.uint8))
    x = KeepLargestConnectedComponent(num_components=num_components, connectivity=2)(x)
    x = RemoveSmallObjects(min_size=math.ceil(min_size_fraction * mask.size), connectivity=2)(x)
    if fill_holes:
        x = FillHoles(connectivity=1)(x)
    return x[0].numpy() != 0


@pytest.mark.filterwarnings("ignore:Parameter `min_size` is deprecated:FutureWarning")  # MONAI 1.6 + skimage 0.26
@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("00870a9c", (2, DEFAULT_MIN_SIZE_FRACTION, True)),  # 1024 x 1024
        ("01E392EE-69F9-4E33-BFCE-E5C968654078", (2, DEFAULT_MIN_SIZE_FRACTION, True)),  # 1024 x 763
        ("01E392EE-69F9-4E33-BFCE-E5C968654078", (1, 0.02, False)),
    ],
)
def test_clean_equals_monai_transforms_on_real_masks_with_noise(name: str, settings: tuple) -> None:
    require_shared()
    mask = _with_noise(read_mask(SHARED_CXR / "masks" / f"{name}.png").pixels != 0, seed=len(name))
    assert ndimage.label(mask, np.ones((3, 3)))[1] > 50, "the noise should add many regions"
    ours = clean_lung_mask(mask, *settings)
    np.testing.assert_array_equal(ours, _monai_clean(mask, *settings))
    assert 0 < ours.sum() != mask.sum()  # something was removed or filled, the lungs are still there
