"""Rigid alignment recovers a known small rotation and translation of a tiny synthetic CT."""

from __future__ import annotations

import numpy as np
from followup_fixtures import affine, rigid_matrix, study_arrays

from h2aseg.data.io import Volume
from h2aseg.followup.registration import identity, register_rigid


def test_registration_recovers_3_degrees_and_6_mm() -> None:
    truth = rigid_matrix(3.0, (6.0, -2.0, 4.0))  # baseline world -> follow-up world
    base = Volume(study_arrays(np.eye(4), 0)[0], affine(), "base.nii.gz")
    fu = Volume(study_arrays(truth, 0)[0], affine(), "fu.nii.gz")
    r = register_rigid(base, fu)
    assert abs(r.rotation_deg - 3.0) < 0.5
    # where the transform sends points of the body (a box of +-60 mm) is within 1.5 mm of the truth
    pts = np.array([[x, y, z] for x in (-60, 60) for y in (-40, 40) for z in (-60, 60)], dtype=float)
    err = np.linalg.norm(r.to_followup(pts) - (pts @ truth[:3, :3].T + truth[:3, 3]), axis=1)
    assert err.max() < 1.5, err
    assert (
        r.body_dice_after > r.body_dice_before and r.body_dice_after > 0.95
    )  # the moved body leaves the small field of view a little
    assert np.allclose(r.to_baseline(r.to_followup(pts)), pts)
    assert r.iterations is not None and r.stop_condition


def test_identity_is_the_no_register_transform() -> None:
    base = Volume(study_arrays(np.eye(4), 0)[0], affine(), "base.nii.gz")
    r = identity(base, base)
    assert r.array.tolist() == np.eye(4).tolist() and r.body_dice_after == 1.0
