"""PET lesion measures against hand-computed values: volume, SUVmax/mean, TLG, SUVpeak, centroid, Dmax."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from h2aseg.data.io import ImageError, Volume, write_volume
from h2aseg.evaluation.quantify import (
    MAX_SUBSTEP_MM,
    MIN_SUBSAMPLES,
    SUVPEAK_RADIUS_MM,
    quantify_arrays,
    quantify_files,
    quantify_prediction,
    sphere_kernel,
    write_to_dir,
)

SPACINGS = [(2.0, 2.0, 2.0), (2.0364, 2.0364, 3.0), (4.0, 4.0, 12.0)]


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def _reference_weight(offset: tuple[int, int, int], spacing: tuple[float, float, float]) -> float:
    """Share of voxel ``offset``'s sub-points within the 1 cm³ sphere around the centre voxel's centre."""
    counts = [max(MIN_SUBSAMPLES, math.ceil(s / MAX_SUBSTEP_MM)) for s in spacing]
    axes = [
        [(o + (m + 0.5) / n - 0.5) * s for m in range(n)]
        for o, n, s in zip(offset, counts, spacing, strict=True)
    ]
    x, y, z = np.meshgrid(*[np.asarray(a) for a in axes], indexing="ij")
    return float(np.mean(x * x + y * y + z * z <= SUVPEAK_RADIUS_MM**2))


def _reference_total(spacing: tuple[float, float, float]) -> float:
    reach = [math.ceil(SUVPEAK_RADIUS_MM / s + 1) for s in spacing]
    ranges = [range(-r, r + 1) for r in reach]
    return sum(_reference_weight(o, spacing) for o in itertools.product(*ranges))


def test_radius_is_that_of_one_cubic_centimetre() -> None:
    assert pytest.approx(6.2035, abs=1e-4) == SUVPEAK_RADIUS_MM
    assert 4.0 / 3.0 * math.pi * SUVPEAK_RADIUS_MM**3 == pytest.approx(1000.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), *SPACINGS, (4.07, 4.07, 5.0), (10.0, 10.0, 12.0)])
def test_kernel_weights_sum_to_the_sphere_volume(spacing: tuple[float, float, float]) -> None:
    k = sphere_kernel(spacing)
    assert all(n % 2 == 1 for n in k.shape)
    assert k.min() >= 0.0 and k.max() <= 1.0
    np.testing.assert_allclose(k, k[::-1, ::-1, ::-1])  # point-symmetric about the centre voxel
    assert k.sum() * float(np.prod(spacing)) == pytest.approx(1000.0, rel=0.01)
    assert sphere_kernel(_affine(spacing)).shape == k.shape


@pytest.mark.parametrize("spacing", SPACINGS)
def test_cube_volume_suv_and_tlg_exact(spacing: tuple[float, float, float]) -> None:
    suv = np.ones((30, 30, 20), dtype=np.float32)
    suv[5:15, 6:14, 4:10] = 4.0
    suv[9, 9, 6] = 9.0
    mask = np.zeros(suv.shape, np.uint8)
    mask[5:15, 6:14, 4:10] = 1
    q = quantify_arrays(suv, mask, _affine(spacing))
    (les,) = q.lesions
    n = 10 * 8 * 6
    vol = n * float(np.prod(spacing)) / 1000.0
    mean = (4.0 * (n - 1) + 9.0) / n
    assert les.voxels == n
    assert les.volume_ml == pytest.approx(vol, rel=1e-12)
    assert les.suv_max == 9.0
    assert les.suv_mean == pytest.approx(mean, rel=1e-12)
    assert les.tlg == pytest.approx(mean * vol, rel=1e-12)
    assert les.detected is None
    p = q.patient
    assert (p.lesion_count, p.mtv_ml, p.tlg, p.suv_max, p.dmax_mm) == (1, les.volume_ml, les.tlg, 9.0, 0.0)
    assert p.gt_lesions is None


@pytest.mark.parametrize("spacing", SPACINGS)
def test_suv_peak_of_a_uniform_region_larger_than_the_sphere(spacing: tuple[float, float, float]) -> None:
    half = [math.ceil(SUVPEAK_RADIUS_MM / s + 1) for s in spacing]  # region reaches past the sphere
    shape = tuple(4 * h + 3 for h in half)
    suv = np.full(shape, 0.5, dtype=np.float32)
    region = tuple(slice(h, 3 * h + 3) for h in half)
    suv[region] = 6.0
    mask = np.zeros(shape, np.uint8)
    mask[region] = 1
    (les,) = quantify_arrays(suv, mask, _affine(spacing)).lesions
    assert les.suv_peak == pytest.approx(6.0, abs=1e-6)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_suv_peak_of_a_hot_voxel_is_its_weight_share(spacing: tuple[float, float, float]) -> None:
    shape = (21, 21, 15)
    c = (10, 10, 7)
    suv = np.zeros(shape, dtype=np.float32)
    suv[c] = 10.0
    mask = np.zeros(shape, np.uint8)
    mask[c] = 1
    (les,) = quantify_arrays(suv, mask, _affine(spacing)).lesions
    expected = 10.0 * _reference_weight((0, 0, 0), spacing) / _reference_total(spacing)
    assert les.suv_peak == pytest.approx(expected, rel=1e-9)
    assert les.suv_max == 10.0 and les.suv_mean == 10.0
    if spacing == (2.0, 2.0, 2.0):  # the centre voxel lies wholly in the sphere: 10 x voxel / sphere volume
        assert les.suv_peak == pytest.approx(10.0 * 8.0 / 1000.0, rel=0.01)


def test_suv_peak_uses_the_whole_image_and_the_image_border() -> None:
    suv = np.full((12, 12, 12), 3.0, dtype=np.float32)
    mask = np.zeros(suv.shape, np.uint8)
    mask[0, 0, 0] = 1  # sphere mostly outside the image: mean over the part inside
    mask[6, 6, 6] = 1  # one voxel lesion in a uniform image: the background counts
    q = quantify_arrays(suv, mask, _affine((2.0, 2.0, 2.0)))
    assert [les.suv_peak for les in q.lesions] == pytest.approx([3.0, 3.0], abs=1e-9)


def test_centroid_in_world_mm_with_a_rotated_affine() -> None:
    affine = np.array([[0.0, -2.0, 0.0, 10.0], [3.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.5, 100.0], [0, 0, 0, 1]])
    mask = np.zeros((10, 12, 8), np.uint8)
    mask[4:6, 5:8, 3] = 1  # index centroid (4.5, 6, 3)
    suv = np.ones(mask.shape, dtype=np.float32)
    (les,) = quantify_arrays(suv, mask, affine).lesions
    # x = -2*6 + 10, y = 3*4.5 - 5, z = 1.5*3 + 100
    assert (les.centroid_x_mm, les.centroid_y_mm, les.centroid_z_mm) == pytest.approx((-2.0, 8.5, 104.5))
    assert les.volume_ml == pytest.approx(6 * 9.0 / 1000.0)  # |det| = 2 x 3 x 1.5 mm³ per voxel


def test_dmax_is_the_largest_centroid_distance() -> None:
    spacing = (2.0, 3.0, 4.0)
    mask = np.zeros((20, 20, 20), np.uint8)
    suv = np.ones(mask.shape, dtype=np.float32)
    mask[2, 2, 2] = 1
    assert quantify_arrays(suv, mask, _affine(spacing)).patient.dmax_mm == 0.0
    mask[12, 2, 2] = 1  # 10 voxels along x: 20 mm
    assert quantify_arrays(suv, mask, _affine(spacing)).patient.dmax_mm == pytest.approx(20.0)
    mask[2, 10, 7] = 1  # from (12,2,2): (-20, 24, 20) mm
    expected = math.sqrt(20.0**2 + 24.0**2 + 20.0**2)
    assert quantify_arrays(suv, mask, _affine(spacing)).patient.dmax_mm == pytest.approx(expected)
    assert quantify_arrays(suv, np.zeros_like(mask), _affine(spacing)).patient.dmax_mm == 0.0


def test_edge_touching_voxels_are_one_lesion_with_18_connectivity() -> None:
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[4, 4, 4] = mask[5, 5, 4] = 1  # share an edge
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # share only a corner
    suv = np.ones(mask.shape, dtype=np.float32)
    affine = _affine((1.0, 1.0, 1.0))
    assert quantify_arrays(suv, mask, affine).patient.lesion_count == 3
    assert quantify_arrays(suv, mask, affine, connectivity=6).patient.lesion_count == 4
    assert quantify_arrays(suv, mask, affine, connectivity=26).patient.lesion_count == 2


def test_detection_flags_with_a_ground_truth() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    gt = np.zeros_like(mask)
    mask[2:5, 2:5, 2:5] = 1  # overlaps the first GT lesion by one voxel: detected
    gt[4:8, 4:8, 4:8] = 1
    mask[12:14, 12:14, 12:14] = 1  # no GT there: false positive
    gt[15:18, 2:4, 2:4] = 1  # missed
    q = quantify_arrays(np.ones(mask.shape, np.float32), mask, _affine((2.0, 2.0, 2.0)), gt)
    flags = {les.voxels: les.detected for les in q.lesions}
    assert flags == {27: 1, 8: 0}
    p = q.patient
    assert (p.gt_lesions, p.gt_detected, p.fp_lesions) == (2, 1, 1)


def test_files_grids_and_csv(tmp_path: Path) -> None:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    suv = np.ones((16, 16, 10), np.float32)
    suv[4:8, 4:8, 3:6] = 5.0
    mask = np.zeros(suv.shape, np.uint8)
    mask[4:8, 4:8, 3:6] = 1
    write_volume(tmp_path / "suv.nii.gz", suv, affine)
    write_volume(tmp_path / "mask.nii.gz", mask, affine)
    write_volume(tmp_path / "gt.nii.gz", mask, affine)
    q = quantify_files(tmp_path / "suv.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "gt.nii.gz")
    lesions_path, patient_path = write_to_dir(q, tmp_path / "out")
    rows = list(csv.DictReader(lesions_path.open()))
    assert len(rows) == 1 and rows[0]["case_id"] == "mask" and rows[0]["detected"] == "1"
    assert float(rows[0]["volume_ml"]) == pytest.approx(48 * 12 / 1000) and float(rows[0]["suv_max"]) == 5.0
    (prow,) = csv.DictReader(patient_path.open())
    assert prow["lesion_count"] == "1" and prow["gt_detected"] == "1"
    # without a GT there is no detection column; an empty mask leaves the SUV cells empty
    write_volume(tmp_path / "empty.nii.gz", np.zeros_like(mask), affine)
    q = quantify_files(tmp_path / "suv.nii.gz", tmp_path / "empty.nii.gz")
    lesions_path, patient_path = write_to_dir(q, tmp_path / "out2")
    assert lesions_path.read_text().strip().split(",")[-1] == "tta_volume_cv"
    (prow,) = csv.DictReader(patient_path.open())
    assert (prow["lesion_count"], prow["suv_max"], prow["dmax_mm"]) == ("0", "", "0")


def test_mismatched_grids_name_both_files(tmp_path: Path) -> None:
    write_volume(tmp_path / "suv.nii.gz", np.ones((8, 8, 8), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    write_volume(tmp_path / "shape.nii.gz", np.zeros((8, 8, 9), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    write_volume(tmp_path / "moved.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 2.0, 3.0, 1.0]))
    for name in ("shape.nii.gz", "moved.nii.gz"):
        with pytest.raises(ImageError, match=r"mask grid .*differs from the SUV grid") as info:
            quantify_files(tmp_path / "suv.nii.gz", tmp_path / name)
        assert name in str(info.value) and "suv.nii.gz" in str(info.value)
    write_volume(tmp_path / "mask.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ImageError, match="ground-truth grid") as info:
        quantify_files(tmp_path / "suv.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "moved.nii.gz")
    assert "moved.nii.gz" in str(info.value) and "suv.nii.gz" in str(info.value)


def test_prediction_on_another_grid_is_measured_on_the_pet_grid(tmp_path: Path) -> None:
    pet_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    suv = np.ones((10, 10, 10), np.float32)
    suv[3:6, 3:6, 3:6] = 7.0
    write_volume(tmp_path / "pet.nii.gz", suv, pet_affine)
    ct_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_affine[:3, 3] = -1.0  # same physical extent, voxel edges aligned with the PET's
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[6:12, 6:12, 6:12] = 1  # the PET voxels 3..5 in each axis
    q = quantify_prediction(mask, ct_affine, tmp_path / "pet.nii.gz", case_id="c", mask_path="m.nii.gz")
    (les,) = q.lesions
    assert les.voxels == 27 and les.volume_ml == pytest.approx(27 * 64 / 1000) and les.suv_mean == 7.0


# ------------------------------------------------------------------------------------ lesion confidence
def _two_lesions() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((12, 12, 8), np.uint8)
    mask[1:3, 1:3, 1:2] = 1  # lesion 1: 4 voxels
    mask[7:10, 7:10, 4:6] = 1  # lesion 2: 18 voxels
    return mask, np.ones(mask.shape, np.float32)


def test_prob_mean_and_max_per_lesion() -> None:
    mask, suv = _two_lesions()
    prob = np.full(mask.shape, 0.05, np.float32)  # outside the lesions: not counted
    prob[1:3, 1:3, 1:2] = [[[0.6], [0.7]], [[0.8], [0.9]]]
    prob[7:10, 7:10, 4:6] = 0.55
    prob[9, 9, 5] = 0.99
    first, second = quantify_arrays(suv, mask, _affine((2.0, 2.0, 2.0)), probability=prob).lesions
    assert first.prob_mean == pytest.approx(0.75) and first.prob_max == pytest.approx(0.9)
    assert second.prob_mean == pytest.approx((17 * 0.55 + 0.99) / 18) and second.prob_max == pytest.approx(
        0.99
    )
    assert first.tta_volume_cv is None  # no flip masks: no TTA measure


def test_tta_volume_cv_from_the_flip_masks() -> None:
    mask, suv = _two_lesions()
    bits = np.zeros(mask.shape, np.uint8)
    bits[mask > 0] = 0xFF  # every flip finds both lesions ...
    bits[1:3, 1:3, 1:2] = 0x0F  # ... except flips 4-7, which miss lesion 1 (volumes 4,4,4,4,0,0,0,0)
    bits[10, 7:10, 4:6] = 0b0000_0011  # flips 0 and 1 grow lesion 2 by 6 voxels outside the mask
    first, second = quantify_arrays(suv, mask, _affine((2.0, 2.0, 2.0)), flip_masks=bits).lesions
    v1 = np.array([4, 4, 4, 4, 0, 0, 0, 0], float)
    v2 = np.array([24, 24, 18, 18, 18, 18, 18, 18], float)
    assert first.tta_volume_cv == pytest.approx(v1.std() / v1.mean())
    assert second.tta_volume_cv == pytest.approx(v2.std() / v2.mean())
    assert first.prob_mean is None and first.prob_max is None
    steady = np.where(mask > 0, 0xFF, 0).astype(np.uint8)
    assert {
        les.tta_volume_cv for les in quantify_arrays(suv, mask, np.eye(4), flip_masks=steady).lesions
    } == {0.0}


def test_lesions_joined_by_a_flip_share_its_region() -> None:
    mask = np.zeros((10, 4, 4), np.uint8)
    mask[1:3, 1, 1] = 1
    mask[6:8, 1, 1] = 1
    bits = np.where(mask > 0, 0xFF, 0).astype(np.uint8)
    bits[3:6, 1, 1] = 0b1000_0000  # flip 7 bridges the two lesions: one region of 4 + 4 + 3 voxels
    a, b = quantify_arrays(np.ones(mask.shape), mask, np.eye(4), flip_masks=bits).lesions
    v = np.array([4] * 7 + [7], float)
    assert a.tta_volume_cv == pytest.approx(v.std() / v.mean()) == b.tta_volume_cv


def test_confidence_cells_are_empty_without_a_probability(tmp_path: Path) -> None:
    mask, suv = _two_lesions()
    q = quantify_arrays(suv, mask, _affine((2.0, 2.0, 2.0)))
    (path, _) = write_to_dir(q, tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 and all(
        (r["prob_mean"], r["prob_max"], r["tta_volume_cv"]) == ("", "", "") for r in rows
    )
    q = quantify_arrays(suv, mask, _affine((2.0, 2.0, 2.0)), probability=np.full(mask.shape, 0.5))
    (path, _) = write_to_dir(q, tmp_path / "p")
    rows = list(csv.DictReader(path.open()))
    assert [(r["prob_mean"], r["prob_max"], r["tta_volume_cv"]) for r in rows] == [("0.5", "0.5", "")] * 2


def test_probability_and_flip_masks_are_checked_naming_the_file(tmp_path: Path) -> None:
    from h2aseg.data.io import read_volume
    from h2aseg.evaluation.quantify import quantify_volumes

    mask, suv = _two_lesions()
    affine = _affine((2.0, 2.0, 2.0))
    for name, arr, aff in (
        ("suv", suv, affine),
        ("mask", mask, affine),
        ("high", np.full(mask.shape, 1.5, np.float32), affine),
        ("nan", np.full(mask.shape, np.nan, np.float32), affine),
        ("moved", np.full(mask.shape, 0.5, np.float32), _affine((2.0, 2.0, 3.0))),
        ("fraction", np.full(mask.shape, 0.5, np.float32), affine),
    ):
        write_volume(tmp_path / f"{name}.nii.gz", arr, aff)
    suv_v, mask_v = (read_volume(tmp_path / f"{n}.nii.gz", dtype=None) for n in ("suv", "mask"))

    def vol(name: str) -> Volume:
        return read_volume(tmp_path / f"{name}.nii.gz", dtype=None)

    with pytest.raises(ImageError, match=r"high\.nii\.gz: the probability map has values outside \[0, 1\]"):
        quantify_volumes(suv_v, mask_v, probability=vol("high"))
    with pytest.raises(ImageError, match=r"nan\.nii\.gz: the probability map has .*NaN"):
        quantify_volumes(suv_v, mask_v, probability=vol("nan"))
    with pytest.raises(ImageError, match=r"moved\.nii\.gz: probability-map grid .* differs") as info:
        quantify_volumes(suv_v, mask_v, probability=vol("moved"))
    assert "suv.nii.gz" in str(info.value)
    with pytest.raises(ImageError, match=r"fraction\.nii\.gz: not a flip-mask map"):
        quantify_volumes(suv_v, mask_v, flip_masks=vol("fraction"))
    assert quantify_volumes(suv_v, mask_v, probability=vol("fraction")).lesions[0].prob_mean == 0.5


def test_prediction_probability_is_mapped_onto_the_pet_grid_like_the_mask(tmp_path: Path) -> None:
    pet_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    write_volume(tmp_path / "pet.nii.gz", np.ones((10, 10, 10), np.float32), pet_affine)
    ct_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_affine[:3, 3] = -1.0
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[6:12, 6:12, 6:12] = 1
    prob = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    bits = np.where(mask > 0, 0xFF, 0).astype(np.uint8)
    (les,) = quantify_prediction(
        mask,
        ct_affine,
        tmp_path / "pet.nii.gz",
        case_id="c",
        mask_path="m.nii.gz",
        probability=prob,
        flip_masks=bits,
    ).lesions
    assert les.voxels == 27 and les.prob_mean == pytest.approx(0.8) and les.prob_max == pytest.approx(0.8)
    assert les.tta_volume_cv == 0.0
