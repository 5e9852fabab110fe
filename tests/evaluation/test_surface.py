"""HD95 and surface distances: hand-computed cases and equality with medpy / MONAI on random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from h2aseg.evaluation.surface import (
    border_voxels,
    bounding_box,
    hd95,
    surface_distances,
    union_bounding_box,
)


def _random_pair(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Blobby masks that overlap partly, with stray voxels, some touching the array border."""
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.25
    b = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.25
    b |= np.roll(a, 2, axis=int(rng.integers(0, 3)))
    a |= rng.random(shape) > 0.995
    return a, b


def _cases(n: int = 12):
    rng = np.random.default_rng(1234)
    out = []
    while len(out) < n:
        shape = tuple(int(s) for s in rng.integers(10, 26, 3))
        a, b = _random_pair(rng, shape)
        if a.any() and b.any():
            sp = tuple(float(s) for s in rng.uniform(0.6, 4.0, 3))
            out.append((a, b, sp))
    out.append((*out[0][:2], (2.0364201068878174, 2.0364201068878174, 3.0)))  # AutoPET FDG spacing
    return out


CASES = _cases()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation notices


def test_hand_computed_single_voxels_anisotropic():
    gt = np.zeros((5, 5, 9), bool)
    pred = np.zeros_like(gt)
    gt[2, 2, 2] = True
    pred[2, 2, 2] = pred[2, 2, 6] = True
    sp = (1.0, 1.0, 2.5)
    d_pg, d_gp = surface_distances(pred, gt, sp)
    assert sorted(d_pg.tolist()) == [0.0, 10.0] and d_gp.tolist() == [0.0]
    # pooled [0, 0, 10]: position 0.95 * 2 = 1.9 -> 0 + 0.9 * 10
    assert hd95(pred, gt, sp, convention="medpy") == pytest.approx(9.0, abs=1e-12)
    # directed: percentile([0, 10]) = 9.5, percentile([0]) = 0 -> max 9.5
    assert hd95(pred, gt, sp, convention="monai") == pytest.approx(9.5, abs=1e-12)
    # the spacing is per array axis: the same offset along axis 0 is 2.5 times shorter
    assert hd95(pred, gt, (2.5, 1.0, 1.0)) == pytest.approx(0.9 * 4.0, abs=1e-12)


def test_border_is_six_neighbourhood_erosion_and_array_edge_is_background():
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    assert int(border_voxels(cube).sum()) == 125 - 27
    full = np.ones((4, 4, 4), bool)  # touches every array face: all but the 2x2x2 core are border
    assert int(border_voxels(full).sum()) == 64 - 8


def test_shifted_cube_distance():
    gt = np.zeros((12, 12, 12), bool)
    gt[2:7, 2:7, 2:7] = True
    pred = np.roll(gt, 3, axis=2)
    sp = (0.8, 0.8, 2.0)
    # every border voxel of a cube shifted by 3 voxels along z has its nearest partner within 3 voxels (6 mm)
    d_pg, d_gp = surface_distances(pred, gt, sp)
    assert d_pg.max() == pytest.approx(6.0) and d_gp.max() == pytest.approx(6.0)
    assert hd95(pred, gt, sp) == hd95(gt, pred, sp)  # medpy's convention is symmetric


@pytest.mark.parametrize("case", range(len(CASES)))
def test_medpy_convention_equals_medpy(case):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    a, b, sp = CASES[case]
    ref = medpy_binary.hd95(a, b, voxelspacing=sp)
    for method in ("edt", "kdtree", "auto"):
        assert hd95(a, b, sp, method=method) == pytest.approx(ref, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_monai_convention_equals_monai(case):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    a, b, sp = CASES[case]
    ta, tb = (torch.from_numpy(x[None, None].astype(np.float32)) for x in (a, b))
    ref = float(monai_metrics.compute_hausdorff_distance(ta, tb, percentile=95, spacing=list(sp))[0, 0])
    assert hd95(a, b, sp, convention="monai") == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_crop_changes_nothing():
    a, b, sp = CASES[2]
    big_a = np.zeros((60, 50, 40), bool)
    big_b = np.zeros_like(big_a)
    sl = tuple(slice(5, 5 + s) for s in a.shape)
    big_a[sl], big_b[sl] = a, b
    assert hd95(big_a, big_b, sp) == pytest.approx(hd95(a, b, sp), abs=1e-9)


def test_empty_masks_give_nan():
    a = np.zeros((6, 6, 6), bool)
    b = a.copy()
    b[2, 2, 2] = True
    for x, y in ((a, b), (b, a), (a, a)):
        assert math.isnan(hd95(x, y, (1, 1, 1)))
        d1, d2 = surface_distances(x, y, (1, 1, 1))
        assert d1.size == 0 and d2.size == 0


def test_bounding_boxes():
    m = np.zeros((10, 8, 6), bool)
    assert bounding_box(m) is None
    m[2:4, 5, 1:6] = True
    assert bounding_box(m) == (slice(2, 4), slice(5, 6), slice(1, 6))
    assert bounding_box(m, margin=1) == (slice(1, 5), slice(4, 7), slice(0, 6))
    n = np.zeros_like(m)
    n[8, 0, 0] = True
    assert union_bounding_box(m, n) == (slice(2, 9), slice(0, 6), slice(0, 6))


def test_bad_arguments():
    a = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="convention"):
        hd95(a, a, convention="deepmind")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        hd95(a, np.ones((3, 3, 4), bool))
