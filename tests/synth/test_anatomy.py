"""The anatomy (``h2aseg.synth.anatomy``): the canonical body fills any field of view."""

from __future__ import annotations

import numpy as np

from h2aseg.synth import synth_case


def test_anatomy_scales_with_the_field_of_view(tissue_of) -> None:
    for shape, spacing in (((32, 32, 40), (12.0, 12.0, 16.0)), ((40, 40, 48), (6.0, 6.0, 8.0))):
        r = synth_case("wholebody", seed=2, shape=shape, spacing=spacing, lesion_free=True)
        body = r["tissue"] > 0
        z = np.nonzero(body.any(axis=(0, 1)))[0]
        assert (z.max() - z.min() + 1) / shape[2] > 0.9  # vertex to thigh fill the field of view
        for organ in ("brain_gm", "lung", "liver", "kidney", "bladder", "myocardium"):
            assert tissue_of(r, organ).any(), organ
        x = np.nonzero(body.any(axis=(1, 2)))[0]
        assert (x.max() - x.min() + 1) < shape[0]  # the body fits laterally
