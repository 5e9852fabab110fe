"""Random fields shared by the CT and PET models: smooth texture and voxel-scale correlated noise."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, corr_mm: float
) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~``corr_mm`` (coarse noise, upsampled)."""
    f = np.maximum(1.0, corr_mm / spacing)
    cshape = tuple(math.ceil(n / fi) + 2 for n, fi in zip(shape, f, strict=True))
    c = ndimage.gaussian_filter(rng.standard_normal(cshape).astype(np.float32), 0.8)
    c /= max(float(c.std()), 1e-6)
    out = c
    for axis, n in enumerate(shape):
        pos = (np.arange(n, dtype=np.float32) + 0.5) / f[axis] + 0.5
        i0 = np.clip(np.floor(pos).astype(int), 0, cshape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        wshape = [1] * len(shape)
        wshape[axis] = n
        w = w.reshape(wshape)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
    return np.ascontiguousarray(out, dtype=np.float32)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Unit-variance white noise, blurred by a Gaussian of ``sigma_vox`` voxels (periodic edges)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox > 0.05:
        n = ndimage.gaussian_filter(n, sigma_vox, mode="wrap")
        n /= max(float(n.std()), 1e-6)
    return n
