"""A PERCIST-style response category from the two studies' lesions (``docs/followup.md``).

After PERCIST 1.0 (Wahl RL, Jacene H, Kasamon Y, Lodge MA. From RECIST to PERCIST: evolving considerations
for PET response criteria in solid tumors. J Nucl Med 2009;50 Suppl 1:122S-150S), simplified:

* **Liver reference**: mean and SD of the SUV in a liver region: a region the user gives (used as given), or
  **ours**: a 3 cm sphere (PERCIST's liver ROI) centred on the deepest point of a whole-liver mask the user
  gives (the maximum of its Euclidean distance transform). Without either there is **no category**
  (``not available: no liver reference``); h2aseg does not guess where the liver is.
* **Measurable**: the hottest baseline lesion's SUVpeak >= 1.5 x liver mean + 2 x liver SD (baseline
  liver); otherwise ``NE`` (not evaluable).
* **PMD** when there is an unequivocal new lesion (``new`` and not a split fragment, see
  :mod:`h2aseg.followup.matching`); **CMR** when no follow-up lesion's SUVpeak is above the follow-up liver
  mean (an empty follow-up mask included); else with the hottest lesion's SUVpeak at each time point (not
  necessarily the same lesion): **PMR** for a decrease of >= 30 % and >= 0.8 units, **PMD** for an increase
  of >= 30 % and >= 0.8 units, or for a TLG increase of >= 75 % without a decrease of the SUVpeak; else
  **SMD**.

PERCIST measures SUL (SUV normalised by lean body mass); h2aseg's images are SUV normalised by **body
weight**, so the thresholds are applied to SUVbw. That is a deviation from PERCIST, said in every output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from h2aseg.data.io import Volume
from h2aseg.errors import InputError

LIVER_SPHERE_DIAMETER_MM = 30.0
MEASURABLE_LIVER_FACTOR, MEASURABLE_SD_FACTOR = 1.5, 2.0
RESPONSE_FRACTION, RESPONSE_UNITS = 0.30, 0.8
TLG_PROGRESSION_FRACTION = 0.75
SUV_NOTE = "SUV normalised by body weight, not PERCIST's SUL (lean body mass)"
SOURCE = "PERCIST 1.0, Wahl et al., J Nucl Med 2009;50 Suppl 1:122S-150S (simplified, docs/followup.md)"


class LiverError(InputError):
    """A liver region that cannot be used (empty, off the image)."""


@dataclass(frozen=True)
class LiverReference:
    mean: float
    sd: float
    voxels: int
    source: str  # "user region FILE" / "ours: 3 cm sphere at the deepest point of the liver mask FILE"


@dataclass(frozen=True)
class Category:
    category: str  # CMR / PMR / SMD / PMD / NE / not available
    reason: str


def liver_reference(
    suv: np.ndarray, region: np.ndarray, source: str, exclude: np.ndarray | None
) -> LiverReference:
    """Mean and SD (``ddof=1``) of ``suv`` in ``region > 0`` minus the lesion voxels ``exclude > 0``."""
    sel = np.asarray(region) > 0
    if exclude is not None:
        sel &= ~(np.asarray(exclude) > 0)
    n = int(sel.sum())
    if n < 2:
        raise LiverError(f"{source}: the liver region has {n} voxel(s) on the PET grid outside the lesions")
    values = np.asarray(suv, dtype=np.float64)[sel]
    return LiverReference(float(values.mean()), float(values.std(ddof=1)), n, source)


def liver_sphere(liver: Volume) -> np.ndarray:
    """Ours: a 3 cm sphere centred on the deepest voxel of the liver mask (its EDT maximum; of a plateau of
    maxima, the voxel nearest the plateau's centroid), clipped to the mask, on the mask's grid (bool)."""
    mask = np.asarray(liver.array) > 0
    if not mask.any():
        raise LiverError(f"{liver.path}: the liver mask is empty")
    spacing = liver.spacing
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    deepest = np.argwhere(depth >= depth.max() - 0.5 * min(spacing))  # a plateau: take its middle voxel
    centre = deepest[np.argmin(np.linalg.norm((deepest - deepest.mean(axis=0)) * spacing, axis=1))]
    grids = np.meshgrid(*(np.arange(n) for n in mask.shape), indexing="ij", sparse=True)
    offsets = [(g - c) * s for g, c, s in zip(grids, centre, spacing, strict=True)]
    r = LIVER_SPHERE_DIAMETER_MM / 2.0
    return (sum(o * o for o in offsets) <= r * r) & mask


def measurability_threshold(liver: LiverReference) -> float:
    return MEASURABLE_LIVER_FACTOR * liver.mean + MEASURABLE_SD_FACTOR * liver.sd


def percist_category(
    baseline_peak: float,
    followup_peaks: list[float],
    baseline_tlg: float,
    followup_tlg: float,
    new_lesions: int,
    baseline_liver: LiverReference | None,
    followup_liver: LiverReference | None,
) -> Category:
    """The category and a one-line reason (the rules of the module docstring). ``baseline_peak``: the
    hottest baseline lesion's SUVpeak (NaN without lesions); ``followup_peaks``: every follow-up lesion's."""
    if baseline_liver is None or followup_liver is None:
        return Category(
            "not available", "not available: no liver reference (give --liver-roi or --liver-mask)"
        )
    threshold = measurability_threshold(baseline_liver)
    if math.isnan(baseline_peak) or baseline_peak < threshold:
        if math.isnan(baseline_peak):
            return Category("NE", "not evaluable: no baseline lesion")
        return Category(
            "NE",
            f"not evaluable: no measurable baseline lesion (hottest SUVpeak {baseline_peak:.2f} < "
            f"{threshold:.2f} = 1.5 x liver mean + 2 x SD)",
        )
    if new_lesions:
        return Category("PMD", f"{new_lesions} new lesion(s)")
    if not any(p > followup_liver.mean for p in followup_peaks):
        return Category("CMR", f"no follow-up lesion above the liver mean {followup_liver.mean:.2f}")
    fu_peak = max(followup_peaks)
    change = fu_peak - baseline_peak
    pct = 100.0 * change / baseline_peak
    shown = f"hottest SUVpeak {baseline_peak:.2f} -> {fu_peak:.2f} ({pct:+.1f} %, {change:+.2f})"
    if change <= -RESPONSE_UNITS and change <= -RESPONSE_FRACTION * baseline_peak:
        return Category("PMR", shown)
    if change >= RESPONSE_UNITS and change >= RESPONSE_FRACTION * baseline_peak:
        return Category("PMD", shown)
    if change >= 0 and followup_tlg >= (1.0 + TLG_PROGRESSION_FRACTION) * baseline_tlg:
        tlg_pct = 100.0 * (followup_tlg / baseline_tlg - 1.0)
        return Category("PMD", f"{shown}; TLG {tlg_pct:+.0f} % without a SUVpeak decrease")
    return Category("SMD", shown)
