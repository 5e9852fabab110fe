"""PET physics (``h2aseg.synth.pet``): physiological uptake that fools SUV thresholds; PSF partial volume."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from h2aseg.synth import synth_case


def test_physiological_uptake_fools_suv_thresholds(wb_free: dict, tissue_of) -> None:
    pet = wb_free["pet"]
    assert not wb_free["label"].any()
    fp = pet >= 2.5  # every voxel is a false positive in a lesion-free study
    assert fp.sum() > 20
    hot_organs = sum(
        tissue_of(wb_free, n) for n in ("brain_gm", "bladder", "kidney", "urine_kidney", "myocardium")
    )
    assert (fp & ndimage.binary_dilation(hot_organs > 0, iterations=2)).sum() > 0.7 * fp.sum()
    suv = wb_free["meta"]["suv"]
    assert 6 <= suv["brain_gm"] <= 10 and 5 <= suv["bladder"] <= 30 and 3 <= suv["kidney"] <= 6
    assert 1.5 <= suv["myocardium"] <= 8 and 1.9 <= suv["liver"] <= 2.5
    liver = pet[ndimage.binary_erosion(tissue_of(wb_free, "liver"), iterations=1)]
    assert 1.7 < liver.mean() < 2.7 and liver.std() > 0.05  # noisy liver around SUV 2-2.5


def test_partial_volume_loss_of_small_lesions() -> None:
    small, large = [], []
    for seed in range(6):
        r = synth_case(
            "wholebody",
            seed=100 + seed,
            shape=(64, 64, 80),
            spacing=(4.0, 4.0, 4.0),
            n_lesions=6,
            lesion_free=False,
        )
        lab = ndimage.label(r["label"] > 0)[0]
        for les in r["meta"]["lesions"]:
            c = np.round(
                np.linalg.solve(r["ct_affine"][:3, :3], np.array(les["center_mm"]) - r["ct_affine"][:3, 3])
            )
            i = tuple(int(v) for v in c)
            if not all(0 <= v < n for v, n in zip(i, lab.shape, strict=True)) or lab[i] == 0:
                continue
            rec = float(r["pet"][lab == lab[i]].max()) / les["suv"]
            (small if les["diameter_mm"] < 10 else large if les["diameter_mm"] > 20 else []).append(rec)
    assert small and large
    assert np.median(small) < np.median(large)
