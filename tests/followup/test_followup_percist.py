"""The PERCIST-style rules on known numbers, and the liver reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from h2aseg.data.io import Volume
from h2aseg.followup.percist import (
    LIVER_SPHERE_DIAMETER_MM,
    LiverError,
    LiverReference,
    liver_reference,
    liver_sphere,
    measurability_threshold,
    percist_category,
)

LIVER = LiverReference(mean=2.0, sd=0.25, voxels=100, source="test")  # measurable from 1.5*2 + 2*0.25 = 3.5


def _cat(base: float, fu: list[float], *, new: int = 0, tlg: tuple[float, float] = (10.0, 10.0)) -> str:
    return percist_category(base, fu, tlg[0], tlg[1], new, LIVER, LIVER).category


def test_measurability_threshold_is_1_5_liver_mean_plus_2_sd() -> None:
    assert measurability_threshold(LIVER) == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("base", "fu", "expected"),
    [
        (10.0, [6.9], "PMR"),  # -31 %, -3.1
        (10.0, [7.1], "SMD"),  # -29 %
        (3.5, [2.4], "PMR"),  # just measurable; -31 %, -1.1
        (3.6, [2.6], "SMD"),  # -27.8 %
        (10.0, [13.1], "PMD"),  # +31 %, +3.1
        (10.0, [12.9], "SMD"),  # +29 %
        (10.0, [1.9], "CMR"),  # every follow-up lesion at or below the liver mean
        (10.0, [], "CMR"),  # nothing left
    ],
)
def test_categories_on_known_numbers(base: float, fu: list[float], expected: str) -> None:
    assert _cat(base, fu) == expected


def test_the_absolute_change_must_reach_0_8_units() -> None:
    # 30 % of a small SUVpeak is under 0.8 units: measurable (>= 3.5) only from a lower liver
    low = LiverReference(mean=1.0, sd=0.1, voxels=100, source="test")  # threshold 1.7
    assert percist_category(2.0, [1.3], 5, 5, 0, low, low).category == "SMD"  # -35 % but -0.7
    assert percist_category(2.0, [2.7], 5, 5, 0, low, low).category == "SMD"  # +35 % but +0.7
    assert percist_category(3.0, [2.1], 5, 5, 0, low, low).category == "PMR"  # -30 %, -0.9


def test_new_lesions_tlg_growth_and_missing_inputs() -> None:
    assert _cat(10.0, [5.0], new=1) == "PMD"  # a new lesion wins over a response
    assert _cat(10.0, [10.5], tlg=(10.0, 18.0)) == "PMD"  # TLG +80 % without a SUVpeak decrease
    assert _cat(10.0, [9.5], tlg=(10.0, 18.0)) == "SMD"  # ... but the SUVpeak fell
    assert _cat(3.0, [5.0]) == "NE"  # not measurable at baseline (< 3.5)
    assert _cat(math.nan, [5.0]) == "NE"
    none = percist_category(10.0, [5.0], 1, 1, 0, None, None)
    assert none.category == "not available" and "no liver reference" in none.reason


def test_liver_reference_leaves_out_lesion_voxels_and_refuses_an_empty_region() -> None:
    suv = np.full((8, 8, 8), 2.0)
    suv[0, 0, 0] = 3.0
    region = np.zeros((8, 8, 8), np.uint8)
    region[:2, :2, :2] = 1
    lesion = np.zeros_like(region)
    lesion[0, 0, 0] = 1
    ref = liver_reference(suv, region, "r", lesion)
    assert ref.voxels == 7 and ref.mean == 2.0 and ref.sd == 0.0
    with pytest.raises(LiverError, match="r: the liver region has 0 voxel"):
        liver_reference(suv, np.zeros_like(region), "r", None)


def test_our_liver_sphere_is_3_cm_at_the_deepest_point() -> None:
    liver = np.zeros((40, 40, 40), np.uint8)
    liver[2:38, 5:35, 2:38] = 1  # a 72 x 60 x 72 mm box at 2 mm
    sphere = liver_sphere(Volume(liver, np.diag([2.0, 2.0, 2.0, 1.0]), "liver.nii.gz"))
    volume_ml = sphere.sum() * 8 / 1000
    assert volume_ml == pytest.approx(4 / 3 * math.pi * (LIVER_SPHERE_DIAMETER_MM / 20) ** 3, rel=0.1)
    centre = np.argwhere(sphere).mean(axis=0)
    assert np.allclose(centre, (19.5, 19.5, 19.5), atol=1.0)
    with pytest.raises(LiverError, match=r"liver\.nii\.gz: the liver mask is empty"):
        liver_sphere(Volume(np.zeros_like(liver), np.eye(4), "liver.nii.gz"))
