"""One study (``h2aseg.synth.study``): determinism, grids of both kinds, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from h2aseg.synth import DEFAULT_SHAPE, PhantomError, synth_case


def test_same_seed_same_case_and_different_seed_differs() -> None:
    a = synth_case("wholebody", seed=3, shape=(24, 24, 32))
    b = synth_case("wholebody", seed=3, shape=(24, 24, 32))
    c = synth_case("wholebody", seed=4, shape=(24, 24, 32))
    for k in ("ct", "pet", "label", "ct_affine", "pet_affine"):
        assert np.array_equal(a[k], b[k])
    assert a["meta"] == b["meta"]
    assert not np.array_equal(a["pet"], c["pet"])


def test_default_case_shape() -> None:  # speed: benchmarks/bench_phantom.py, not a test
    r = synth_case("wholebody", seed=0)
    assert r["ct"].shape == (128, 128, 160) == DEFAULT_SHAPE
    assert r["pet"].shape == r["label"].shape == r["ct"].shape


def test_headneck_grids_and_labels() -> None:
    r = synth_case("headneck", seed=5, shape=(48, 48, 56))
    assert r["ct"].shape == r["label"].shape == (48, 48, 56)
    ct_sp, pet_sp = np.abs(np.diag(r["ct_affine"])[:3]), np.abs(np.diag(r["pet_affine"])[:3])
    assert np.all(pet_sp > ct_sp) and not np.allclose(r["ct_affine"][:3, 3], r["pet_affine"][:3, 3])
    assert np.allclose(r["label_affine"], r["ct_affine"]) and r["pet"].shape != r["ct"].shape
    vals = set(np.unique(r["label"]).tolist())
    assert vals <= {0, 1, 2} and len(vals) > 1
    for les in r["meta"]["lesions"]:
        assert les["label"] == (1 if les["site"].startswith("primary") else 2)


def test_bad_arguments() -> None:
    with pytest.raises(PhantomError, match="unknown phantom kind"):
        synth_case("brain", seed=0)
    with pytest.raises(PhantomError, match="shape must be"):
        synth_case(seed=0, shape=(4, 4, 4))
    with pytest.raises(PhantomError, match="spacing must be"):
        synth_case(seed=0, spacing=(1.0, -1.0, 1.0))
