"""Classic PET baselines: fixed SUV 2.5 and 41 % of SUVmax per region."""

from __future__ import annotations

import numpy as np
import pytest

from h2aseg.inference.thresholding import relative_threshold, suv_threshold, threshold_mask


def test_suv_threshold_inclusive_and_nan():
    suv = np.array([[[1.0, 2.5, 3.0, np.nan]]])
    assert suv_threshold(suv).tolist() == [[[False, True, True, False]]]
    assert suv_threshold(suv, 3.0).dtype == bool


def _two_lesions() -> np.ndarray:
    suv = np.full((30, 20, 20), 1.0, np.float32)
    suv[5:10, 5:10, 5:10] = 4.0  # hot lesion: SUVmax 10 at its centre, threshold 4.1
    suv[7, 7, 7] = 10.0
    suv[20:24, 5:9, 5:9] = 3.0  # faint lesion: SUVmax 3, threshold 1.23 < 2.5
    suv[19, 5:9, 5:9] = 2.0  # rim below the seed threshold but above 41 % of 3
    suv[16, 5:9, 5:9] = 2.0  # same values 4 voxels away: beyond the margin
    return suv


def test_relative_threshold_per_region():
    suv = _two_lesions()
    m = relative_threshold(suv, 0.41, 2.5, margin=3.0)
    # hot region shrinks to its 41 % isocontour: only the 10.0 voxel survives (4.0 < 4.1)
    assert m[5:10, 5:10, 5:10].sum() == 1 and m[7, 7, 7]
    # faint region keeps itself and grows into the 2.0 rim within the margin; background 1.0 < 1.23 stays out
    assert m[20:24, 5:9, 5:9].all() and m[19, 5:9, 5:9].all()
    assert not m[16].any()
    assert m.sum() == 1 + 4 * 16 + 16
    # a margin of 0 allows no growth; a lower fraction brings the whole hot lesion back
    assert not relative_threshold(suv, margin=0)[19].any()
    assert relative_threshold(suv, 0.4)[5:10, 5:10, 5:10].all()


def test_relative_threshold_margin_in_mm_and_nearest_region():
    suv = _two_lesions()
    # spacing 2 mm along axis 0: the rim 1 voxel away is 2 mm away, the slab at 16 is 8 mm away
    m = relative_threshold(suv, spacing=(2.0, 1.0, 1.0), margin=2.5)
    assert m[19].sum() == 16 and not m[16].any()
    assert relative_threshold(suv, spacing=(2.0, 1.0, 1.0), margin=1.5)[19].sum() == 0


def test_relative_threshold_edge_cases():
    assert not relative_threshold(np.ones((5, 5, 5))).any()
    suv = np.ones((8, 8, 8), np.float32)
    suv[2, 2, 2] = 5.0
    assert relative_threshold(suv, min_seed_voxels=2).sum() == 0
    assert relative_threshold(suv).sum() == 1
    with pytest.raises(ValueError, match="fraction"):
        relative_threshold(suv, 1.5)
    with pytest.raises(ValueError, match="spacing"):
        relative_threshold(suv, spacing=(1, 1))


def test_relative_threshold_on_128_cube():
    rng = np.random.default_rng(0)
    suv = (rng.gamma(4, 0.25, (128, 128, 128))).astype(np.float32)
    x, y, z = np.ogrid[:128, :128, :128]
    for c, a in (((30, 40, 50), 12.0), ((90, 80, 60), 4.0), ((64, 64, 100), 6.0)):
        suv += a * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 32.0).astype(np.float32)
    m = relative_threshold(suv, spacing=(2.0, 2.0, 3.0), margin=6.0)
    assert m[30, 40, 50] and m[90, 80, 60] and m[64, 64, 100]


def test_threshold_mask_by_name():
    suv = _two_lesions()
    np.testing.assert_array_equal(threshold_mask(suv, "suv_2.5"), suv_threshold(suv, 2.5))
    spacing = (2.0, 2.0, 3.0)
    np.testing.assert_array_equal(
        threshold_mask(suv, "suv_41pct", spacing=spacing), relative_threshold(suv, 0.41, 2.5, spacing=spacing)
    )
    with pytest.raises(ValueError, match="unknown threshold method 'suv_3'"):
        threshold_mask(suv, "suv_3")
