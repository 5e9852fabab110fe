"""Lesions (``h2aseg.synth.lesions``): sizes, SUVs, sites, PET and CT contrast, labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def test_lesions(wb_les: dict, tissue_of) -> None:
    meta, lab, pet = wb_les["meta"], wb_les["label"], wb_les["pet"]
    assert len(meta["lesions"]) >= 4 and lab.any()
    for les in meta["lesions"]:
        assert 5.0 <= les["diameter_mm"] <= 50.0 and 2.0 <= les["suv"] <= 15.0 and les["voxels"] > 0
    sites = {les["site"].split(":")[0] for les in meta["lesions"]}
    assert sites <= {"node", "lung", "liver", "bone"}
    ring = ndimage.binary_dilation(lab > 0, iterations=3) & ~ndimage.binary_dilation(lab > 0, iterations=1)
    ring &= wb_les["tissue"] > 0
    assert pet[lab > 0].mean() > 1.5 * pet[ring].mean()  # PET contrast
    lung_les = lab.astype(bool) & tissue_of(wb_les, "lung")
    if lung_les.any():
        assert np.median(wb_les["ct"][lung_les]) > -300  # visible on CT in the lung
