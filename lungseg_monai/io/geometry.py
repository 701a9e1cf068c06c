"""Where a radiograph's pixels lie in patient space, kept from its file so that its mask can say the same.

One convention, ITK's: LPS millimetres (x towards the patient's left, y towards the back, z towards
the head), image axis 0 (x) along the columns and axis 1 (y) along the rows. The centre of pixel
(row ``r``, column ``c``) is at ``origin + direction @ (spacing * (c, r[, 0]))``. A NIfTI affine is
the same mapping written in RAS (x and y negated); :meth:`ImageGeometry.from_nifti_affine` and
:meth:`ImageGeometry.nifti_affine` convert exactly.

Files without a geometry (PNG, JPEG, DICOM radiographs) get ITK's identity convention: origin 0,
identity direction, the pixel spacing (:meth:`ImageGeometry.from_spacing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ImageGeometry"]

# NIfTI is RAS, ITK is LPS: the first two world axes point the other way.
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
_NIFTI_DIMENSION = 3


@dataclass(frozen=True)
class ImageGeometry:
    """Spacing, origin and direction of a 2D image (or a one-slice volume), in ITK's LPS convention.

    Attributes:
        spacing: mm per pixel along x (columns), y (rows)[, z].
        origin: LPS position (mm) of the centre of the first pixel.
        direction: the ``dimension x dimension`` direction matrix, row-major; column ``k`` is the
            LPS direction of image axis ``k``.

    Example:
        >>> g = ImageGeometry.from_spacing((0.2, 0.1))  # (row, column) mm
        >>> g.spacing, g.nifti_affine()[0, 0]
        ((0.1, 0.2), -0.1)
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.spacing)
        if n not in (2, 3) or len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(
                f"a geometry needs 2 or 3 spacings, as many origin values and a square direction matrix, got "
                f"spacing {self.spacing}, origin {self.origin}, direction {self.direction}"
            )

    @property
    def dimension(self) -> int:
        """2 for a 2D image, 3 for a one-slice volume."""
        return len(self.spacing)

    @classmethod
    def from_spacing(cls, spacing: tuple[float, float]) -> ImageGeometry:
        """ITK's identity convention for a (row, column) spacing in mm: origin 0, identity direction."""
        row_mm, col_mm = (float(s) for s in spacing)
        return cls((col_mm, row_mm), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))

    @classmethod
    def from_arrays(
        cls, spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray | Sequence[float]
    ) -> ImageGeometry | None:
        """A geometry from ITK-style values, or None when they do not place pixels (zero, NaN, singular)."""
        spacing_a = np.asarray(spacing, dtype=np.float64)
        origin_a = np.asarray(origin, dtype=np.float64)
        n = spacing_a.size
        direction_a = np.asarray(direction, dtype=np.float64).reshape(n, n)
        usable = (
            np.isfinite(spacing_a).all()
            and (spacing_a > 0).all()
            and np.isfinite(origin_a).all()
            and np.isfinite(direction_a).all()
            and abs(np.linalg.det(direction_a)) > 1e-6
        )
        if not usable:
            return None
        return cls(tuple(spacing_a.tolist()), tuple(origin_a.tolist()), tuple(direction_a.ravel().tolist()))

    @classmethod
    def from_nifti_affine(cls, affine: np.ndarray) -> ImageGeometry | None:
        """The geometry of a NIfTI (RAS) 4x4 affine, or None when it is degenerate."""
        affine = np.asarray(affine, dtype=np.float64)
        lps = _RAS_FROM_LPS @ affine[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        if not (spacing > 0).all():
            return None
        return cls.from_arrays(spacing, _RAS_FROM_LPS @ affine[:3, 3], lps / spacing)

    def matrix(self) -> np.ndarray:
        """The direction as a ``dimension x dimension`` array."""
        return np.asarray(self.direction, dtype=np.float64).reshape(self.dimension, self.dimension)

    def as_3d(self) -> ImageGeometry:
        """This geometry with a third axis (1 mm, along LPS z) when it is 2D."""
        if self.dimension == _NIFTI_DIMENSION:
            return self
        direction = np.eye(_NIFTI_DIMENSION)
        direction[:2, :2] = self.matrix()
        return ImageGeometry((*self.spacing, 1.0), (*self.origin, 0.0), tuple(direction.ravel().tolist()))

    def nifti_affine(self) -> np.ndarray:
        """The 4x4 NIfTI (RAS) affine mapping voxel (x = column, y = row, z) to world millimetres."""
        g = self.as_3d()
        affine = np.eye(4)
        affine[:3, :3] = _RAS_FROM_LPS @ g.matrix() @ np.diag(g.spacing)
        affine[:3, 3] = _RAS_FROM_LPS @ np.asarray(g.origin)
        return affine

    def with_axes_first(self, axes: Sequence[int]) -> ImageGeometry:
        """The geometry with image axes ``axes`` (e.g. the two that are not of size 1) moved first, in order.

        A (1, x, y) volume read as a (y, x) radiograph keeps its pixels' positions: its columns run
        along file axis 1 and its rows along axis 2.
        """
        order = [*axes, *(a for a in range(self.dimension) if a not in axes)]
        return ImageGeometry(
            tuple(self.spacing[a] for a in order),
            self.origin,  # pixel 0 stays pixel 0: the dropped axes have size 1
            tuple(self.matrix()[:, order].ravel().tolist()),
        )
