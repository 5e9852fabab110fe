"""The CT model (``h2aseg.synth.ct``): plausible Hounsfield units per tissue."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def test_plausible_hu(wb_les: dict, tissue_of) -> None:
    ct = wb_les["ct"]
    near_air = ndimage.binary_dilation(tissue_of(wb_les, "air") | tissue_of(wb_les, "table"))
    med = {
        n: float(np.median(ct[tissue_of(wb_les, n) & ~near_air]))
        for n in ("lung", "fat", "liver", "muscle", "cortical_bone")
    }
    assert (
        med["lung"] < -700 and -140 < med["fat"] < -60 and 30 < med["liver"] < 80 and 20 < med["muscle"] < 70
    )
    assert med["cortical_bone"] > 250 and ct.min() >= -1024 and ct.dtype == np.int16
