"""NIfTI masks: axes (x = columns), spacing, round trip through the project's reader."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from conftest import SAMPLE_DATA

from lungseg_monai.io import ImageGeometry, read_mask
from lungseg_monai.outputs import save_nifti_mask


def test_nifti_mask_carries_spacing_and_round_trips(tmp_path) -> None:
    known = read_mask(SAMPLE_DATA / "masks" / "41182_2020_203_Fig3_HTML.png").pixels  # 512 rows x 464 columns
    path = save_nifti_mask(known, tmp_path / "m.nii.gz", ImageGeometry.from_spacing((0.15, 0.2)))
    image = nib.load(path)
    assert image.shape == (464, 512)  # (x = columns, y = rows)
    assert image.header.get_zooms() == (np.float32(0.2), np.float32(0.15))
    assert image.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(image.affine, np.diag([-0.2, -0.15, 1.0, 1.0]), rtol=1e-6)  # ITK's identity, in RAS
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1}
    np.testing.assert_array_equal(data.T, known)
    back = read_mask(path)
    np.testing.assert_array_equal(back.pixels, known)
    assert back.spacing == (np.float32(0.15), np.float32(0.2))


def test_nifti_without_spacing_says_unit_unknown(tmp_path) -> None:
    path = save_nifti_mask(np.eye(5, 7, dtype=np.uint8), tmp_path / "m.nii.gz")
    image = nib.load(path)
    assert image.header.get_xyzt_units()[0] == "unknown"
    assert image.header.get_zooms() == (1.0, 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]  # no temporary file left
