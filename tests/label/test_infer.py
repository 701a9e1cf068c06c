"""Label maps written by the MONAI Label app: rows stay rows, columns stay columns, geometry is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="needs the 'label' extra (pip install 'lungseg_monai[label]')")
sitk = pytest.importorskip("SimpleITK")

from PIL import Image  # noqa: E402

from lungseg_monai.io import Radiograph, read_mask  # noqa: E402
from lungseg_monai.label.errors import BadRequestError  # noqa: E402
from lungseg_monai.label.infer import LungSegInferTask, default_result_extension, label_geometry  # noqa: E402
from lungseg_monai.label.models import ModelStore, ReloadingSegmenter  # noqa: E402
from lungseg_monai.outputs.label_map import save_label_map  # noqa: E402


def _synthetic_asymmetric_mask() -> np.ndarray:
    mask = np.zeros((30, 50), np.uint8)  # 30 rows, 50 columns
    mask[2:10, 5:40] = 1  # a wide block near the top
    mask[20:28, 44:48] = 1  # a small block at the bottom right
    return mask


def _radiograph(path: Path, spacing: tuple[float, float] | None = None) -> Radiograph:
    """A radiograph of ``path`` as the reader would give it, without its pixels (label_geometry reads headers)."""
    return Radiograph(pixels=np.zeros((1, 1), np.float32), path=str(path), spacing=spacing)


def _read_back(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        with Image.open(path) as img:
            return np.asarray(img)
    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


@pytest.mark.parametrize("suffix", [".png", ".nrrd", ".nii.gz", ".mha"])
def test_write_label_map_keeps_orientation_of_synthetic_asymmetric_mask(tmp_path: Path, suffix: str) -> None:
    mask = _synthetic_asymmetric_mask()
    target = save_label_map(mask, tmp_path / f"mask{suffix}")
    np.testing.assert_array_equal(_read_back(target), mask)
    if suffix in (".png", ".nii.gz"):  # what clients upload as corrected labels (3D Slicer: .nii.gz)
        np.testing.assert_array_equal(read_mask(target).pixels, mask)


def test_write_label_map_copies_the_reference_geometry_synthetic(tmp_path: Path) -> None:
    mask = _synthetic_asymmetric_mask()
    reference = sitk.GetImageFromArray(np.zeros((1, *mask.shape), np.int16))  # a single-slice volume
    reference.SetSpacing((0.25, 0.5, 2.0))
    reference.SetOrigin((10.0, -3.0, 7.0))
    sitk.WriteImage(reference, str(tmp_path / "image.nrrd"))

    geometry = label_geometry(_radiograph(tmp_path / "image.nrrd"))
    written = sitk.ReadImage(str(save_label_map(mask, tmp_path / "mask.nrrd", geometry)))
    assert written.GetSize() == (50, 30, 1)
    assert written.GetSpacing() == (0.25, 0.5, 2.0)
    assert written.GetOrigin() == (10.0, -3.0, 7.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written)[0], mask)


def test_write_label_map_uses_the_radiograph_spacing_without_a_readable_header(tmp_path: Path) -> None:
    geometry = label_geometry(_radiograph(tmp_path / "missing.dcm", spacing=(0.2, 0.1)))
    written = sitk.ReadImage(str(save_label_map(_synthetic_asymmetric_mask(), tmp_path / "m.nrrd", geometry)))
    assert written.GetSpacing() == pytest.approx((0.1, 0.2))  # (x = column, y = row)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", ".png"),
        ("a.PNG", ".png"),
        ("a.jpg", ".nrrd"),
        ("a.dcm", ".nrrd"),
        ("a.nii.gz", ".nrrd"),
        ("a", ".nrrd"),
    ],
)
def test_default_result_extension(name: str, expected: str) -> None:
    assert default_result_extension(name) == expected


def test_infer_refuses_an_unsupported_result_extension(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"never loaded")
    task = LungSegInferTask(ReloadingSegmenter(ModelStore(tmp_path / "model.pt", tmp_path / "work")), "test")
    with pytest.raises(BadRequestError) as info:
        task({"image": str(tmp_path / "x.png"), "result_extension": ".jpg"})
    assert info.value.status_code == 400
    assert (
        info.value.detail == "result_extension '.jpg' is not supported; use one of ['.png', '.nrrd', '.nii.gz', '.mha']"
    )


def test_infer_refuses_a_blank_film_before_the_network_like_lungseg_infer_synthetic(tmp_path: Path) -> None:
    """A blank image is no radiograph: refused with the reason lungseg infer gives, the model never loaded."""
    (tmp_path / "model.pt").write_bytes(b"never loaded")
    Image.fromarray(np.full((256, 256), 128, np.uint8)).save(tmp_path / "blank.png")
    task = LungSegInferTask(ReloadingSegmenter(ModelStore(tmp_path / "model.pt", tmp_path / "work")), "test")
    with pytest.raises(BadRequestError) as info:
        task({"image": str(tmp_path / "blank.png")})
    assert info.value.status_code == 400
    assert info.value.detail.startswith("'blank.png' is refused before the network: ")


def test_write_label_map_takes_a_jpeg_resolution_like_3d_slicer_synthetic(tmp_path: Path) -> None:
    mask = _synthetic_asymmetric_mask()
    Image.fromarray(mask * 200).save(tmp_path / "image.jpg", dpi=(72, 72))  # ITK reads 25.4 / 72 mm pixels
    geometry = label_geometry(_radiograph(tmp_path / "image.jpg"))
    written = sitk.ReadImage(str(save_label_map(mask, tmp_path / "mask.nrrd", geometry)))
    assert written.GetSpacing() == pytest.approx((25.4 / 72, 25.4 / 72))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
