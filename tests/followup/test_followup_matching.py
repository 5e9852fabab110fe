"""Lesion matching with known correspondences: shrinking, growing, vanished, new and stable lesions of a
patient moved between the scans (the transform given, so that only the matching is tested)."""

from __future__ import annotations

import numpy as np
import pytest
from followup_fixtures import LESIONS, affine, lesion_at, rigid_matrix, study_arrays

from h2aseg.data.io import Volume
from h2aseg.evaluation.quantify import label_lesions
from h2aseg.followup.comparison import compare_studies, lesion_rows
from h2aseg.followup.matching import match_lesions, overlap_counts
from h2aseg.followup.registration import from_matrix
from h2aseg.followup.studies import Study


def _study(role: str, matrix: np.ndarray, time: int) -> Study:
    ct, suv, mask, _ = study_arrays(matrix, time)
    a = affine()
    return Study(
        role, "PETCT_1", Volume(ct, a, f"{role}-ct"), Volume(suv, a, f"{role}-pet"), Volume(mask, a, "m"), "m"
    )


@pytest.mark.parametrize("shift", [(6.0, 0.0, 0.0), (20.0, -12.0, 16.0)])
def test_lesions_are_matched_as_they_correspond(shift: tuple[float, float, float]) -> None:
    truth = rigid_matrix(3.0, shift)
    base, fu = _study("baseline", np.eye(4), 0), _study("follow-up", truth, 1)
    c = compare_studies(base, fu, from_matrix(truth, "known", base.ct, fu.ct))
    labels_b, _ = label_lesions(base.mask.array)
    labels_f, _ = label_lesions(fu.mask.array)
    expected = {}
    for name, (b, f) in LESIONS.items():
        bid = None if b is None else lesion_at(labels_b, b.centre, np.eye(4))
        fid = None if f is None else lesion_at(labels_f, f.centre, truth)
        expected[name] = (bid, fid)
    got = {(p.baseline_id, p.followup_id): p for p in c.pairs}
    assert len(c.pairs) == len(LESIONS) and set(got) == set(expected.values())
    status = {name: got[ids].status for name, ids in expected.items()}
    assert status == {
        "shrinks": "matched",
        "grows": "matched",
        "stable": "matched",
        "vanishes": "vanished",
        "new": "new",
    }
    assert all(got[expected[n]].matched_by == "overlap" for n in ("shrinks", "grows", "stable"))
    rows = {(r["baseline_lesion_id"], r["followup_lesion_id"]): r for r in lesion_rows(c)}
    shrinks, grows, stable = (rows[expected[n]] for n in ("shrinks", "grows", "stable"))
    assert shrinks["delta_volume_ml_pct"] < -50 and shrinks["followup_suv_max"] == pytest.approx(4.0)
    assert grows["delta_volume_ml_pct"] > 100 and grows["delta_suv_max"] == pytest.approx(3.0)
    assert abs(stable["delta_volume_ml_pct"]) < 15 and stable["delta_suv_max"] == pytest.approx(0.0)
    assert rows[expected["vanishes"]]["delta_volume_ml_pct"] == pytest.approx(-100.0)
    assert rows[expected["new"]]["baseline_suv_max"] is None
    # the numbers on the pictures: a matched pair carries one number on both grids
    for name in ("shrinks", "grows", "stable"):
        b, f = LESIONS[name]
        assert b is not None and f is not None
        number = got[expected[name]].number
        assert lesion_at(c.numbered_baseline, b.centre, np.eye(4)) == number
        assert lesion_at(c.numbered_followup, f.centre, truth) == number


def test_without_the_alignment_a_large_shift_breaks_the_matching() -> None:
    truth = rigid_matrix(0.0, (60.0, 0.0, 0.0))
    base, fu = _study("baseline", np.eye(4), 0), _study("follow-up", truth, 1)
    aligned = compare_studies(base, fu, from_matrix(truth, "known", base.ct, fu.ct))
    naive = compare_studies(base, fu, from_matrix(np.eye(4), "identity", base.ct, fu.ct))
    assert [p.status for p in aligned.pairs].count("matched") == 3
    assert {(p.baseline_id, p.followup_id) for p in naive.pairs} != {
        (p.baseline_id, p.followup_id) for p in aligned.pairs
    }


def test_a_split_is_matched_once_and_its_other_fragment_noted() -> None:
    base = np.zeros((20, 10, 10), np.int32)
    base[2:14, 3:7, 3:7] = 1  # one long lesion...
    fu = np.zeros_like(base)
    fu[2:7, 3:7, 3:7], fu[9:14, 3:7, 3:7] = 1, 2  # ...split in two
    counts = overlap_counts(base, fu, 1, 2)
    cents = np.array([[7.5, 4.5, 4.5]]), np.array([[4.0, 4.5, 4.5], [11.0, 4.5, 4.5]])
    pairs = match_lesions(counts, *cents, np.array([0.2]), np.array([0.08, 0.08]))
    assert [(p.status, p.baseline_id, p.followup_id) for p in pairs] == [
        ("matched", 1, 1),
        ("new", None, 2),
    ]
    assert pairs[1].note == "split from baseline lesion 1"


def test_distance_fallback_pairs_lesions_that_no_longer_overlap() -> None:
    counts = np.zeros((2, 2), np.int64)
    counts[1, 0], counts[0, 1] = 50, 50  # no shared voxel
    near = match_lesions(counts, np.zeros((1, 3)), np.array([[0.0, 0.0, 9.0]]), np.ones(1), np.ones(1))
    far = match_lesions(counts, np.zeros((1, 3)), np.array([[0.0, 0.0, 30.0]]), np.ones(1), np.ones(1))
    assert [(p.status, p.matched_by) for p in near] == [("matched", "distance")]
    assert [p.status for p in far] == ["vanished", "new"]
