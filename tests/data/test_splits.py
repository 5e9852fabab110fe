"""Patient-level, stratified, seeded splits and their JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from h2aseg.data.layouts import Case
from h2aseg.data.splits import Split, SplitError, check_split, load_split, make_split, save_split
from h2aseg.synth import write_cohort


def _cohort(n_patients: int = 60, seed: int = 0) -> tuple[list[Case], dict[str, bool]]:
    rng = np.random.default_rng(seed)
    cases, lesion = [], {}
    for p in range(n_patients):
        for s in range(int(rng.choice([1, 1, 1, 2, 3]))):
            cid = f"pat{p:03d}_study{s}"
            cases.append(Case(cid, f"pat{p:03d}", Path(f"{cid}_ct.nii.gz"), Path(f"{cid}_pet.nii.gz"), None))
            lesion[cid] = bool(rng.random() < 0.5)
    return cases, lesion


def _parts(split: Split) -> list[list[str]]:
    return [split.train, split.val, split.test]


def test_split_is_patient_level_complete_and_stratified() -> None:
    cases, lesion = _cohort()
    split = make_split(cases, seed=7, has_lesion=lesion)
    check_split(split, cases)
    ids = [c.case_id for c in cases]
    assert sorted(split.all_ids()) == sorted(ids) and len(set(split.all_ids())) == len(ids)
    patient = {c.case_id: c.patient_id for c in cases}
    owners = [{patient[c] for c in part} for part in _parts(split)]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])  # no leak
    n_pat = [len(o) for o in owners]
    assert abs(n_pat[0] - 36) <= 1 and abs(n_pat[1] - 12) <= 1 and abs(n_pat[2] - 12) <= 1
    for part in _parts(split):
        free = sum(not lesion[c] for c in part)
        assert 0.2 < free / len(part) < 0.8  # lesion-free studies in every part


def test_split_is_reproducible_and_order_independent() -> None:
    cases, lesion = _cohort()
    a = make_split(cases, seed=1, has_lesion=lesion)
    b = make_split(list(reversed(cases)), seed=1, has_lesion=lesion)
    c = make_split(cases, seed=2, has_lesion=lesion)
    assert _parts(a) == _parts(b)
    assert _parts(a) != _parts(c)


def test_tiny_cohorts_fill_every_part() -> None:
    cases, lesion = _cohort(3)
    split = make_split(cases, has_lesion=lesion)
    assert all(len(p) > 0 for p in _parts(split))
    two = make_split(cases[:1], ratios=(1.0, 0.0, 0.0), has_lesion=lesion)
    assert two.val == [] and two.test == []


def test_split_reads_labels_when_needed(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path / "d", 6, "autopet", seed=5, shape=(16, 16, 20))
    split = make_split(cases, seed=3)  # reads the SEG files
    check_split(split, cases)
    meta = json.loads((tmp_path / "d" / "phantom.json").read_text())
    lesion = {r["case_id"]: not r["lesion_free"] for r in meta["cases"]}
    assert sum(lesion.values()) == 3
    assert _parts(make_split(cases, seed=3, has_lesion=lesion)) == _parts(split)


def test_bad_requests() -> None:
    cases, lesion = _cohort(5)
    with pytest.raises(SplitError, match="summing to 1"):
        make_split(cases, ratios=(0.5, 0.2, 0.2), has_lesion=lesion)
    with pytest.raises(SplitError, match="empty"):
        make_split([], has_lesion={})
    with pytest.raises(SplitError, match="duplicate"):
        make_split([cases[0], cases[0]], has_lesion=lesion)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cases, lesion = _cohort(20)
    split = make_split(cases, seed=9, has_lesion=lesion)
    path = tmp_path / "run" / "split.json"
    save_split(split, path)
    assert load_split(path) == split
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    with pytest.raises(SplitError, match=f"{p}: split file not found"):
        load_split(p)
    p.write_text("{not json")
    with pytest.raises(SplitError, match=f"{p}: not a valid JSON"):
        load_split(p)
    p.write_text(json.dumps({"train": ["a"], "val": []}))
    with pytest.raises(SplitError, match=f"{p}: missing key.*test"):
        load_split(p)
    p.write_text(json.dumps({"train": ["a"], "val": [1], "test": []}))
    with pytest.raises(SplitError, match="'val' must be a list of case id strings"):
        load_split(p)
    p.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(SplitError, match="'a' is in both 'train' and 'val'"):
        load_split(p)
    p.write_text(json.dumps({"train": ["a"], "val": ["b"], "test": [], "patients": {"a": "P", "b": "P"}}))
    with pytest.raises(SplitError, match="patient 'P' has studies in both"):
        load_split(p)


def test_check_split_against_dataset() -> None:
    cases, lesion = _cohort(10)
    split = make_split(cases, has_lesion=lesion)
    with pytest.raises(SplitError, match="not in the dataset"):
        check_split(split, cases[:-1] if cases[-1].case_id in split.all_ids() else cases)
    moved = Split(split.train + split.val[:1], split.val, split.test, split.seed)
    with pytest.raises(SplitError, match="in both"):
        check_split(moved, cases)
