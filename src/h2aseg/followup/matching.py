"""Lesions matched across time: overlap after the rigid alignment, a distance fallback, one-to-one.

Both masks are labelled as ``h2aseg quantify`` labels them (18-connected components, ids 1..N). The
follow-up labels are mapped onto the baseline grid through the rigid transform (nearest neighbour,
:func:`~h2aseg.data.geometry.resample_to_grid`), and the follow-up centroids into baseline world mm.

A baseline lesion ``i`` and a follow-up lesion ``j`` are **candidates** when the mapped masks share a voxel
(cost ``1 - Dice``, in [0, 1)) or, failing that, when their centroids are closer than
``max(MIN_DISTANCE_MM, r_i, r_j)`` with ``r`` the radius of the sphere of the lesion's volume (cost
``1 + distance / threshold``, in [1, 2), so that any overlap beats any distance). The pairs are chosen
one-to-one by the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) over the candidates
(the least total cost). Lesions left over are **vanished** (baseline only) or **new** (follow-up only).

Splits and merges stay one-to-one: the fragment that pairs best is matched; a left-over lesion that was a
candidate of a lesion on the other side gets a ``note`` (``split from baseline lesion i`` /
``merged into follow-up lesion j``), and a new lesion with such a note is not counted as an unequivocal new
lesion by :mod:`h2aseg.followup.percist`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from h2aseg.data.geometry import resample_to_grid

MIN_DISTANCE_MM = 10.0
_NO_PAIR = 1e6


@dataclass(frozen=True)
class LesionPair:
    """One row of the comparison: ``number`` is the lesion's number on both pictures."""

    number: int
    status: str  # matched / vanished / new
    baseline_id: int | None
    followup_id: int | None
    matched_by: str | None = None  # overlap / distance
    dice: float | None = None
    distance_mm: float | None = None
    note: str = ""


def sphere_radius_mm(volume_ml: float) -> float:
    """Radius of the sphere of ``volume_ml``."""
    return (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


def mapped_labels(
    followup_labels: np.ndarray,
    followup_in_baseline: np.ndarray,
    baseline_affine: np.ndarray,
    baseline_shape: tuple[int, ...],
) -> np.ndarray:
    """Follow-up labels on the baseline grid; ``followup_in_baseline`` is the follow-up grid's voxel ->
    baseline-world affine (:meth:`~h2aseg.followup.registration.Rigid.followup_affine_in_baseline`)."""
    labels = np.asarray(followup_labels, dtype=np.int32)
    return resample_to_grid(labels, followup_in_baseline, baseline_affine, baseline_shape, order=0)


def overlap_counts(baseline_labels: np.ndarray, mapped: np.ndarray, n_b: int, n_f: int) -> np.ndarray:
    """``(n_b + 1, n_f + 1)`` voxel counts of each (baseline label, mapped follow-up label) pair."""
    pairs = np.asarray(baseline_labels, np.int64).ravel() * (n_f + 1) + np.asarray(mapped, np.int64).ravel()
    return np.bincount(pairs, minlength=(n_b + 1) * (n_f + 1)).reshape(n_b + 1, n_f + 1)


def match_lesions(
    counts: np.ndarray,
    baseline_centroids: np.ndarray,
    followup_centroids: np.ndarray,
    baseline_volumes_ml: np.ndarray,
    followup_volumes_ml: np.ndarray,
    *,
    min_distance_mm: float = MIN_DISTANCE_MM,
) -> list[LesionPair]:
    """Pair lesions (see the module docstring). ``counts`` from :func:`overlap_counts`; centroids ``(n, 3)``
    in baseline world mm (the follow-up's mapped). Rows: matched (baseline id order), vanished, new."""
    n_b, n_f = counts.shape[0] - 1, counts.shape[1] - 1
    inter = counts[1:, 1:].astype(np.float64)
    size_b, size_f = counts[1:, :].sum(axis=1), counts[:, 1:].sum(axis=0)
    denom = np.maximum(size_b[:, None] + size_f[None, :], 1)
    dice = 2.0 * inter / denom
    dist = np.linalg.norm(
        np.asarray(baseline_centroids).reshape(n_b, 1, 3) - np.asarray(followup_centroids).reshape(1, n_f, 3),
        axis=-1,
    )
    radius_b = np.array([sphere_radius_mm(v) for v in baseline_volumes_ml]).reshape(n_b, 1)
    radius_f = np.array([sphere_radius_mm(v) for v in followup_volumes_ml]).reshape(1, n_f)
    limit = np.maximum(np.maximum(radius_b, radius_f), min_distance_mm)
    near = dist < limit
    cost = np.full((n_b, n_f), _NO_PAIR)
    cost[near] = 1.0 + dist[near] / limit[near]
    cost[inter > 0] = 1.0 - dice[inter > 0]
    rows, cols = linear_sum_assignment(cost) if n_b and n_f else (np.zeros(0, int), np.zeros(0, int))
    pairs = {int(i): int(j) for i, j in zip(rows, cols, strict=True) if cost[i, j] < _NO_PAIR}
    candidate = cost < _NO_PAIR
    out: list[LesionPair] = []
    for i, j in sorted(pairs.items()):
        by = "overlap" if inter[i, j] > 0 else "distance"
        out.append(
            LesionPair(len(out) + 1, "matched", i + 1, j + 1, by, float(dice[i, j]), float(dist[i, j]))
        )
    matched_f = set(pairs.values())
    for i in (i for i in range(n_b) if i not in pairs):
        near_f = [j + 1 for j in np.flatnonzero(candidate[i])]
        note = f"merged into follow-up lesion {near_f[0]}" if near_f else ""
        out.append(LesionPair(len(out) + 1, "vanished", i + 1, None, note=note))
    for j in (j for j in range(n_f) if j not in matched_f):
        near_b = [i + 1 for i in np.flatnonzero(candidate[:, j])]
        note = f"split from baseline lesion {near_b[0]}" if near_b else ""
        out.append(LesionPair(len(out) + 1, "new", None, j + 1, note=note))
    return out
