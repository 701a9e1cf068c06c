"""The one label-map writer keeps the radiograph's geometry: a NIfTI, MetaImage or NRRD input's
mask lies over it in world space, whichever format the mask is written in."""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLE_DATA
from PIL import Image
from stub_segmenter import stub_segmenter

from lungseg_monai.inference.runner import segment_files
from lungseg_monai.io import ImageGeometry, read_mask, read_radiograph
from lungseg_monai.outputs import read_measurements, save_label_map

SAMPLE = "41182_2020_203_Fig3_HTML"  # 512 rows x 464 columns
# A coronal RAS affine with both image axes flipped against ITK's identity and an origin: voxel i
# (columns) runs towards the patient's right, j (rows) towards the head, k is anterior.
CORONAL_RAS_AFFINE = np.array(
    [
        [0.2, 0.0, 0.0, -46.0],
        [0.0, 0.0, 1.0, 12.5],
        [0.0, 0.15, 0.0, -38.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _sample() -> tuple[np.ndarray, np.ndarray]:
    """The real radiograph and its lung mask from the embedded sample, as (rows, columns) arrays."""
    with Image.open(SAMPLE_DATA / "images" / f"{SAMPLE}.png") as img:
        image = np.asarray(img.convert("L"))
    return image, read_mask(SAMPLE_DATA / "masks" / f"{SAMPLE}.png").pixels


def _anatomical_nifti(path: Path) -> np.ndarray:
    """Write the sample as a NIfTI placed anatomically by CORONAL_RAS_AFFINE; return its mask in file voxels."""
    image, mask = _sample()
    # Image column 0 is the patient's right and row 0 the top: stored with i and j reversed.
    nib.save(nib.Nifti1Image(image[::-1, ::-1].T.astype(np.int16), CORONAL_RAS_AFFINE), str(path))
    return mask[::-1, ::-1].T


def _world_lung_voxels_land_on_lung(mask_file: Path, input_affine: np.ndarray, input_mask: np.ndarray) -> None:
    """Every lung voxel of the written mask maps, through both affines, onto a lung voxel of the input."""
    written = nib.load(mask_file)
    data = np.asarray(written.dataobj).reshape(input_mask.shape)
    voxels = np.argwhere(data != 0)
    homogeneous = np.c_[voxels, np.zeros(len(voxels)), np.ones(len(voxels))]
    world = homogeneous @ written.affine.T
    in_input = world @ np.linalg.inv(input_affine).T
    index = np.rint(in_input[:, :2]).astype(int)
    np.testing.assert_allclose(in_input[:, :2], index, atol=1e-3)
    assert ((index >= 0) & (index < input_mask.shape)).all()
    assert input_mask[index[:, 0], index[:, 1]].all()
    assert len(voxels) == int(input_mask.sum()) > 0


def test_nifti_mask_of_a_nifti_input_has_its_affine_and_overlays_the_lungs(tmp_path: Path) -> None:
    input_mask = _anatomical_nifti(tmp_path / "chest.nii.gz")
    radiograph = read_radiograph(tmp_path / "chest.nii.gz")
    # What a perfect segmenter returns: the lungs in the radiograph's (rows, columns).
    mask = input_mask.T
    target = save_label_map(mask, tmp_path / "mask.nii.gz", radiograph.geometry)
    written = nib.load(target)
    np.testing.assert_allclose(written.affine, CORONAL_RAS_AFFINE, atol=1e-6)
    assert written.header.get_xyzt_units()[0] == "mm"
    _world_lung_voxels_land_on_lung(target, CORONAL_RAS_AFFINE, input_mask)
    np.testing.assert_array_equal(read_mask(target).pixels, mask)


def test_one_slice_nifti_keeps_which_file_axes_are_rows_and_columns(tmp_path: Path) -> None:
    """A (1, x, y) NIfTI: its columns run along file axis 1 and its rows along axis 2."""
    image, _ = _sample()
    affine = np.array([[0.0, 0.0, -0.3, 5.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.25, 0.0, 9.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(image.T[None].astype(np.int16), affine), str(tmp_path / "slab.nii"))
    radiograph = read_radiograph(tmp_path / "slab.nii")
    assert radiograph.shape == image.shape and radiograph.spacing == pytest.approx((0.3, 0.25))
    target = save_label_map(np.ones(image.shape, np.uint8), tmp_path / "mask.nii.gz", radiograph.geometry)
    # The mask's x (columns) and y (rows) point where the input's axes 1 and 2 do.
    np.testing.assert_allclose(nib.load(target).affine[:3, :2], affine[:3, 1:3], atol=1e-6)
    np.testing.assert_allclose(nib.load(target).affine[:3, 3], affine[:3, 3], atol=1e-6)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_mask_of_an_itk_input_keeps_origin_direction_and_spacing_in_every_format(tmp_path: Path, suffix: str) -> None:
    image, mask = _sample()
    source = itk.image_from_array(image.astype(np.int16))
    source.SetSpacing((0.2, 0.15))
    source.SetOrigin((46.0, -30.0))
    source.SetDirection(itk.matrix_from_array(np.array([[-1.0, 0.0], [0.0, -1.0]])))
    itk.imwrite(source, str(tmp_path / f"chest{suffix}"))
    geometry = read_radiograph(tmp_path / f"chest{suffix}").geometry
    for out in (".mha", ".nrrd"):
        written = itk.imread(str(save_label_map(mask, tmp_path / f"mask{out}", geometry)))
        assert tuple(written.GetSpacing()) == pytest.approx((0.2, 0.15))
        assert tuple(written.GetOrigin()) == pytest.approx((46.0, -30.0))
        np.testing.assert_allclose(itk.array_from_matrix(written.GetDirection()), [[-1.0, 0.0], [0.0, -1.0]])
        np.testing.assert_array_equal(itk.array_from_image(written), mask)
    # The NIfTI mask is the same geometry in RAS: x and y negated twice over, so a diagonal affine.
    nifti = nib.load(save_label_map(mask, tmp_path / "mask.nii.gz", geometry))
    expected = np.diag([0.2, 0.15, 1.0, 1.0])
    expected[:2, 3] = (-46.0, 30.0)
    np.testing.assert_allclose(nifti.affine, expected, atol=1e-6)


def test_png_and_dicom_masks_keep_itk_identity_convention_synthetic() -> None:
    geometry = ImageGeometry.from_spacing((0.15, 0.2))
    np.testing.assert_allclose(geometry.nifti_affine(), np.diag([-0.2, -0.15, 1.0, 1.0]))
    assert (geometry.origin, geometry.direction) == ((0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


def test_unknown_suffix_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        save_label_map(np.zeros((2, 3), np.uint8), tmp_path / "mask.jpg")
    assert str(info.value) == (
        "cannot write a label map as 'mask.jpg'; use one of ['.png', '.nii', '.nii.gz', '.nrrd', '.mha']"
    )


def test_lungseg_infer_nifti_output_of_a_nifti_input_has_the_input_affine(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _anatomical_nifti(tmp_path / "in" / "chest.nii.gz")
    summary = segment_files(
        [tmp_path / "in"], tmp_path / "out", stub_segmenter(), formats="mask,nifti,measurements", progress=False
    )
    assert summary.ok and len(summary.segmented) == 1
    written = nib.load(tmp_path / "out" / "nifti" / "chest.nii.gz")
    np.testing.assert_allclose(written.affine, CORONAL_RAS_AFFINE, atol=1e-6)
    with Image.open(tmp_path / "out" / "masks" / "chest.png") as img:
        png_mask = np.asarray(img) // 255
    assert 0 < png_mask.sum() < png_mask.size
    np.testing.assert_array_equal(np.asarray(written.dataobj).T, png_mask)  # same pixels as the PNG mask
    row = read_measurements(tmp_path / "out" / "measurements.csv")["chest"]
    assert row["spacing_source"] == "NIfTI header"
    assert (float(row["row_spacing_mm"]), float(row["column_spacing_mm"])) == pytest.approx((0.15, 0.2))
