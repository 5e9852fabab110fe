"""PET physics: physiological uptake (SUV per tissue), lesion uptake, Gaussian PSF, count-dependent noise."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from h2aseg.synth.lesions import Lesion, body_masks
from h2aseg.synth.noise import correlated_noise, smooth_noise
from h2aseg.synth.shapes import Grid
from h2aseg.synth.tissues import LUT_HET, TISSUE_NAMES


def study_suvs(rng: np.random.Generator, prng: np.random.Generator) -> dict[str, float]:
    """SUV per tissue: patient-level (``prng``) and study-level (``rng``) physiology."""
    liver = prng.uniform(1.9, 2.5)
    gm = rng.uniform(6.0, 10.0)
    return {
        "air": 0.0,
        "fat": 0.35,
        "muscle": 0.75,
        "viscera": rng.uniform(1.0, 1.6),
        "lung": 0.45,
        "mediastinum": 0.6,
        "blood": rng.uniform(1.4, 2.0),
        "myocardium": 1.5 + 6.5 * rng.uniform(0, 1) ** 1.5,
        "liver": liver,
        "spleen": liver * prng.uniform(0.8, 0.92),
        "kidney": rng.uniform(3.0, 6.0),
        "urine_kidney": rng.uniform(4.0, 15.0),
        "bladder": float(math.exp(rng.uniform(math.log(5.0), math.log(30.0)))),
        "brain_gm": gm,
        "brain_wm": 0.45 * gm,
        "csf": 0.3,
        "cortical_bone": 0.35,
        "marrow": prng.uniform(1.0, 1.6),
        "airway": 0.05,
        "salivary": rng.uniform(1.5, 3.5),
        "tonsil": rng.uniform(2.0, 5.0),
        "thyroid": rng.uniform(1.0, 2.0),
        "table": 0.0,
        "eye": 0.3,
    }


def _activity(
    rng: np.random.Generator, grid: Grid, tissue: np.ndarray, lesions: list[Lesion], suvs: dict[str, float]
) -> np.ndarray:
    """True activity (SUV): heterogeneous tissue uptake, lesions at least 1.25x their host, necrotic cores."""
    lut = np.array([suvs[n] for n in TISSUE_NAMES], dtype=np.float32)
    tex = smooth_noise(rng, grid.shape, grid.spacing, 15.0)
    het = LUT_HET[tissue]
    act = lut[tissue] * np.exp(het * tex - 0.5 * het * het)
    for les, sl, m in body_masks(grid, tissue, lesions):
        host = float(np.median(act[sl][m])) if m.any() else 0.0
        val = max(les.suv, 1.25 * host) * np.exp(0.15 * tex[sl] - 0.011)
        if les.necrosis < 1.0:
            lo, _ = les.shape.bounds()
            x, y, z = grid.window(lo, les.shape.bounds()[1])[1]  # type: ignore[index]
            dist = np.sqrt((x - les.center[0]) ** 2 + (y - les.center[1]) ** 2 + (z - les.center[2]) ** 2)
            val = np.where(dist < 0.3 * les.diameter_mm, val * les.necrosis, val)
        act[sl][m] = np.broadcast_to(val, m.shape)[m]
    return act


def render_pet(
    rng: np.random.Generator,
    grid: Grid,
    tissue: np.ndarray,
    lesions: list[Lesion],
    suvs: dict[str, float],
    fwhm_mm: float,
    count_k: float,
) -> np.ndarray:
    """float32 SUV on ``grid``: activity blurred by a Gaussian PSF (``fwhm_mm``) plus correlated noise.

    The noise variance is proportional to the activity and to ``count_k``, scaled with the voxel volume.
    """
    act = _activity(rng, grid, tissue, lesions, suvs)
    sigma = fwhm_mm / 2.3548 / grid.spacing
    act = ndimage.gaussian_filter(act, sigma, mode="constant")
    scale = count_k * 64.0 / float(np.prod(grid.spacing))  # variance per SUV for this voxel size
    noise = correlated_noise(rng, grid.shape, 0.6)
    act += np.sqrt(np.maximum(act, 0.0) * scale + 1e-4) * noise
    return np.maximum(act, 0.0).astype(np.float32)
