"""``h2aseg compare``'s steps on phantom patients with two studies (``h2aseg synth --followup``): the lesions
are matched as the phantom's record says they correspond (its ground truth masks standing in for
predictions), and the alignment finds the phantom's repositioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from h2aseg.data.layouts import discover
from h2aseg.evaluation.quantify import label_lesions
from h2aseg.followup.comparison import compare_studies
from h2aseg.followup.registration import register_rigid
from h2aseg.followup.studies import Study, check_same_patient, load_study
from h2aseg.synth import followup_pairs, write_cohort
from h2aseg.synth.followup import FollowupPair

SHAPE, SPACING = (48, 48, 64), (6.0, 6.0, 8.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "c"
    write_cohort(out, 6, "autopet", seed=3, shape=SHAPE, spacing=SPACING, followup=True)
    return out


def _component(labels: np.ndarray, affine: np.ndarray, point_mm: tuple[float, float, float] | None) -> int:
    if point_mm is None:
        return 0
    ijk = np.round(np.linalg.solve(affine, np.append(point_mm, 1.0))[:3]).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= labels.shape):
        return 0
    return int(labels[tuple(ijk)])


def _own(labels: np.ndarray, affine: np.ndarray, point: object, others: list) -> int:
    """The component at ``point`` when no other lesion centre of the study is in it, else 0."""
    comp = _component(labels, affine, point)  # type: ignore[arg-type]
    return comp if comp and comp not in {_component(labels, affine, o) for o in others if o != point} else 0


def _studies(root: Path, pair: FollowupPair) -> tuple[Study, Study]:
    cases = {c.case_id: c for c in discover(root)}
    b, f = cases[pair.baseline], cases[pair.followup]
    assert b.label is not None and f.label is not None
    return (
        load_study("baseline", folder=b.ct.parent, ct=None, pet=None, mask=b.label),
        load_study("follow-up", folder=f.ct.parent, ct=None, pet=None, mask=f.label),
    )


def test_phantom_lesions_are_matched_as_the_record_says(cohort: Path) -> None:
    checked = {"matched": 0, "vanished": 0, "new": 0}
    pairs = followup_pairs(cohort)
    assert pairs
    for pair in pairs:
        base, fu = _studies(cohort, pair)
        assert check_same_patient(base, fu) == f"same patient ({pair.patient_id})"
        rigid = register_rigid(base.ct, fu.ct)
        body = np.array([[x, y, z] for x in (-50, 50) for y in (-30, 30) for z in (-80, 80)], dtype=float)
        err = np.linalg.norm(rigid.to_followup(body) - pair.to_followup(body), axis=1)
        assert err.max() < 4.0, (pair.followup, err)  # under the voxel size (6 x 6 x 8 mm)
        c = compare_studies(base, fu, rigid)
        got = {(p.baseline_id, p.followup_id): p.status for p in c.pairs}
        lb, lf = label_lesions(base.mask.array)[0], label_lesions(fu.mask.array)[0]
        b_centres = [k.baseline_center_mm for k in pair.links if k.baseline_center_mm is not None]
        f_centres = [k.center_mm for k in pair.links if k.followup_lesion is not None]
        for link in pair.links:
            bid = _own(lb, base.mask.affine, link.baseline_center_mm, b_centres)
            fid = (
                _own(lf, fu.mask.affine, link.center_mm, f_centres) if link.followup_lesion is not None else 0
            )
            if link.change == "vanished" and bid:
                assert got.get((bid, None)) == "vanished", (pair.followup, link, got)
                checked["vanished"] += 1
            elif link.change == "new" and fid:
                assert got.get((None, fid)) == "new", (pair.followup, link, got)
                checked["new"] += 1
            elif bid and fid:
                assert got.get((bid, fid)) == "matched", (pair.followup, link, got)
                checked["matched"] += 1
    assert checked["matched"] >= 3 and checked["new"] >= 2 and checked["vanished"] >= 1, (
        checked
    )  # not vacuous
