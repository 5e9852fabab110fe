"""Geometry helpers: voxel volumes, reorientation, resampling between grids in world space."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from h2aseg.data.geometry import (
    affine_voxel_volume_ml,
    reorient,
    resample_labels,
    resample_to_grid,
    voxel_volume_ml,
)


def test_voxel_volume_from_spacing_and_from_affine_agree() -> None:
    aff = np.diag([2.0, 3.0, 5.0, 1.0])
    assert voxel_volume_ml((2.0, 3.0, 5.0)) == pytest.approx(0.03)
    assert affine_voxel_volume_ml(aff) == pytest.approx(0.03)
    rot = np.eye(4)
    rot[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ aff[:3, :3]
    assert affine_voxel_volume_ml(rot) == pytest.approx(0.03)  # rotation keeps the volume


def test_reorient_to_canonical_keeps_world_positions() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    aff = np.diag([-2.0, 3.0, 4.0, 1.0])  # first axis runs right-to-left
    aff[:3, 3] = (10.0, -5.0, 1.0)
    ornt = nib.orientations.io_orientation(aff)
    out, out_aff = reorient(arr, aff, ornt)
    assert out.shape == arr.shape and out_aff[0, 0] > 0
    for idx in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
        world = aff @ np.array([*idx, 1.0])
        new_idx = np.round(np.linalg.inv(out_aff) @ world)[:3].astype(int)
        assert out[tuple(new_idx)] == arr[idx]


def test_resample_identity_and_shift() -> None:
    rng = np.random.default_rng(0)
    lab = (rng.random((6, 7, 8)) > 0.7).astype(np.uint8)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    np.testing.assert_array_equal(resample_labels(lab, aff, aff, lab.shape), lab)
    shifted = aff.copy()
    shifted[:3, 3] = (2.0, 0.0, 0.0)  # one voxel along the first axis
    out = resample_labels(lab, aff, shifted, lab.shape)
    np.testing.assert_array_equal(out[:-1], lab[1:])
    assert not out[-1].any()  # outside the source: 0
    smooth = resample_to_grid(lab.astype(np.float32), aff, aff, lab.shape, order=1)
    np.testing.assert_allclose(smooth, lab, atol=1e-6)
