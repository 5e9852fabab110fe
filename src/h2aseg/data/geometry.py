"""Geometry in one place: voxel volume, reorientation and resampling between grids in world space.

A grid is ``(affine, shape)``: the 4x4 voxel-index -> world-mm matrix (NIfTI's RAS+ convention, as
:mod:`h2aseg.data.io` reads every format) and the array's shape. Preprocessing (PET onto the CT grid,
spacing), evaluation (predictions on another grid), quantification (masks onto the PET grid) and DICOM
import all resample through :func:`resample_to_grid`.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Voxel volume in ml from the spacing in mm: AutoPET's ``pixdim[1]*pixdim[2]*pixdim[3]/1000``."""
    return float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0


def affine_voxel_volume_ml(affine: np.ndarray) -> float:
    """Voxel volume in ml from a 4x4 affine (``|det|`` of its 3x3 part / 1000; sheared grids too)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _is_diagonal(m: np.ndarray, tol: float = 1e-9) -> bool:
    return bool(np.all(np.abs(m - np.diag(np.diag(m))) <= tol * max(1.0, float(np.abs(m).max()))))


def resample_to_grid(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, ...],
    *,
    order: int = 1,
    cval: float = 0.0,
    mode: str = "constant",
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``array`` (grid ``src_affine``) onto the grid (``dst_affine``, ``dst_shape``) in world space.

    Linear (``order=1``) or nearest (``order=0``) interpolation via :func:`scipy.ndimage.affine_transform`.
    With ``antialias`` and ``order > 0``, the source is Gaussian-smoothed first where the destination is
    coarser (sigma = (factor - 1) / 2 source voxels).
    """
    m = np.linalg.inv(src_affine) @ dst_affine  # destination index -> source index
    lin, off = m[:3, :3], m[:3, 3]
    src = array
    if antialias and order > 0:
        factor = np.linalg.norm(lin, axis=1)  # source voxels per destination voxel, per source axis
        sigma = np.clip((factor - 1.0) / 2.0, 0.0, None)
        if np.any(sigma > 0.1):
            src = ndimage.gaussian_filter(np.asarray(src, dtype=np.float32), sigma=sigma, mode="nearest")
    matrix = np.diag(lin) if _is_diagonal(lin) else lin
    out_dtype = array.dtype if order == 0 else np.float32
    return ndimage.affine_transform(
        src,
        matrix,
        offset=off,
        output_shape=tuple(int(v) for v in dst_shape),
        output=out_dtype,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=False,
    )


def reorient(array: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` with its axes permuted/flipped by the nibabel orientation ``ornt``, and its new affine."""
    arr = nib.orientations.apply_orientation(array, ornt)
    aff = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return np.ascontiguousarray(arr), aff


def resample_labels(
    labels: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...]
) -> np.ndarray:
    """Integer labels onto another grid by nearest neighbour (uint8; outside the source = 0)."""
    return resample_to_grid(labels.astype(np.uint8), src_affine, dst_affine, dst_shape, order=0)
