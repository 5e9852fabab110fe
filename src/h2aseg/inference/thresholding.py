"""Clinicians' classic PET segmentation baselines on a volume in SUV (no training involved).

* :func:`suv_threshold`: fixed threshold, ``SUV >= 2.5`` by default (the usual FDG "SUV 2.5" rule).
* :func:`relative_threshold`: the "41 % of SUVmax" isocontour, done per lesion candidate, exactly as
  described in its docstring.

Both return boolean masks of the input's shape; NaN voxels are never foreground. The baselines the demo
and the experiments run, by name (``suv_2.5``, ``suv_41pct``): :func:`threshold_mask`; written as a
prediction in the CT's geometry: :func:`write_threshold_mask`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from h2aseg.data.io import write_volume
from h2aseg.data.preprocess import PreprocessedCase, restore_to_ct_grid


def _as_suv(suv: np.ndarray) -> np.ndarray:
    suv = np.asarray(suv)
    if suv.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D SUV array, got shape {suv.shape}")
    if suv.dtype.kind not in "fiu":
        raise ValueError(f"expected a numeric SUV array, got dtype {suv.dtype}")
    return suv


def suv_threshold(suv: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """Foreground where ``suv >= threshold`` (inclusive). Shape as ``suv``, dtype bool."""
    suv = _as_suv(suv)
    with np.errstate(invalid="ignore"):
        return np.asarray(suv >= threshold)


def relative_threshold(
    suv: np.ndarray,
    fraction: float = 0.41,
    seed_threshold: float = 2.5,
    *,
    margin: float = 3.0,
    spacing: Sequence[float] | None = None,
    connectivity: int = 18,
    min_seed_voxels: int = 1,
) -> np.ndarray:
    """Per-region relative threshold: keep voxels ``>= fraction * SUVmax`` of their region.

    Exactly:

    1. Seeds = ``suv >= seed_threshold``; regions = connected components of the seeds (``connectivity``
       6/18/26 in 3D, 4/8 in 2D); regions smaller than ``min_seed_voxels`` voxels are dropped.
    2. Each region ``r`` has ``SUVmax_r`` = its largest SUV.
    3. Each voxel within ``margin`` (in mm when ``spacing`` is given, else in voxels; Euclidean distance) of
       some seed voxel belongs to the neighbourhood of the region of its **nearest** seed voxel (ties broken
       by the distance transform). Voxels farther than ``margin`` from every seed are background.
    4. A voxel is foreground iff it lies in a neighbourhood and ``suv >= fraction * SUVmax_r``.

    So a hot region (``fraction * SUVmax > seed_threshold``) shrinks to its 41 % isocontour, and a faint one
    may grow by up to ``margin`` into voxels below ``seed_threshold``. Kept voxels need not be connected
    to the seed. Vectorised: one labelling, one per-label maximum, one distance transform on the seeds'
    bounding box.
    """
    suv = _as_suv(suv)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    vals = np.nan_to_num(suv.astype(np.float32, copy=False), nan=-np.inf)
    seeds = vals >= seed_threshold
    out = np.zeros(suv.shape, dtype=bool)
    if not seeds.any():
        return out
    sp = np.ones(suv.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if sp.shape != (suv.ndim,) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {suv.ndim} positive numbers, got {spacing!r}")
    labels, n = cc3d.connected_components(seeds, connectivity=connectivity, return_N=True)
    if min_seed_voxels > 1:
        sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
        small = sizes < min_seed_voxels
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
            if not labels.any():
                return out
    # crop to the seeds' bounding box grown by the margin in voxels
    grow = [math.ceil(margin / s) for s in sp]
    nz = np.nonzero(labels)
    box = tuple(
        slice(max(int(i.min()) - g, 0), min(int(i.max()) + 1 + g, size))
        for i, g, size in zip(nz, grow, labels.shape, strict=True)
    )
    lab = labels[box]
    suvmax = np.full(int(labels.max()) + 1, np.inf, dtype=np.float64)
    present = np.unique(lab)
    present = present[present > 0]
    suvmax[present] = ndimage.maximum(vals[box], lab, index=present)
    dist, idx = ndimage.distance_transform_edt(lab == 0, sampling=sp, return_indices=True)
    nearest = lab[tuple(idx)]
    keep = (dist <= margin) & (vals[box] >= fraction * suvmax[nearest])
    out[box] = keep
    return out


def threshold_mask(suv: np.ndarray, method: str, *, spacing: Sequence[float] | None = None) -> np.ndarray:
    """The named baseline's mask of ``suv``: ``suv_2.5`` (:func:`suv_threshold` at 2.5) or ``suv_41pct``
    (:func:`relative_threshold`: 41 % of each region's SUVmax, seeds at SUV 2.5, ``spacing`` in mm)."""
    if method == "suv_2.5":
        return suv_threshold(suv, 2.5)
    if method == "suv_41pct":
        return relative_threshold(suv, 0.41, 2.5, spacing=spacing)
    raise ValueError(f"unknown threshold method {method!r} (suv_2.5, suv_41pct)")


def write_threshold_mask(pc: PreprocessedCase, method: str, path: str | Path) -> Path:
    """:func:`threshold_mask` of a preprocessed case's SUV, put back onto its original CT grid (nearest
    neighbour) and written as a uint8 NIfTI with the CT's affine, atomically (as ``h2aseg predict`` writes
    its masks); returns the path."""
    mask = threshold_mask(pc.suv, method, spacing=pc.geometry.spacing)
    on_ct = restore_to_ct_grid(mask.astype(np.uint8), pc.geometry, order=0)
    return write_volume(path, on_ct, pc.geometry.ct_affine)
