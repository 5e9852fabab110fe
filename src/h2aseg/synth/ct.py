"""CT model: Hounsfield units per tissue with smooth texture, lesion contrast, slight blur and noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from h2aseg.synth.lesions import Lesion
from h2aseg.synth.noise import smooth_noise
from h2aseg.synth.shapes import Grid, mask_on
from h2aseg.synth.tissues import IS_BODY, IS_BONE, IS_LOW, LUT_HU, LUT_TEX


def render_ct(
    rng: np.random.Generator,
    grid: Grid,
    tissue: np.ndarray,
    lesions: list[Lesion],
    noise_hu: float,
    blur_vox: float,
) -> np.ndarray:
    """int16 HU on ``grid``; lesions are soft tissue in low-density tissue, shifted HU elsewhere."""
    tex = smooth_noise(rng, grid.shape, grid.spacing, 10.0)
    hu = LUT_HU[tissue] + LUT_TEX[tissue] * tex
    for les in lesions:
        r = mask_on(grid, les.shape)
        if r is None:
            continue
        sl, m = r
        t = tissue[sl]
        m = m & IS_BODY[t]
        sub = hu[sl]
        soft = np.where(IS_BONE[t], sub + les.bone_delta, sub + les.ct_delta)
        sub[m] = np.where(IS_LOW[t], 35.0 + 6.0 * tex[sl], soft)[m]
    if blur_vox > 0:
        hu = ndimage.gaussian_filter(hu, blur_vox)
    hu += noise_hu * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)
