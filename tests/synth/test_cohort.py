"""Cohorts (``h2aseg.synth.cohort``): byte-identical output, the plan, labels, layout names, bad arguments."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from h2aseg.data.io import read_volume
from h2aseg.data.layouts import discover
from h2aseg.synth import PhantomError, cohort_plan, resolve_variability, write_cohort
from h2aseg.synth.cohort import case_paths


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_write_cohort_is_byte_identical(tmp_path: Path) -> None:
    digest = _digest
    for layout in ("autopet-nnunet", "hecktor"):
        write_cohort(tmp_path / f"a-{layout}", 3, layout, seed=21, shape=(16, 16, 20))
        write_cohort(tmp_path / f"b-{layout}", 3, layout, seed=21, shape=(16, 16, 20))
        da, db = digest(tmp_path / f"a-{layout}"), digest(tmp_path / f"b-{layout}")
        assert da == db and len(da) == 3 * 3 + 1 + (layout == "autopet-nnunet")


def test_processes_write_the_same_files(tmp_path: Path) -> None:
    # follow-ups (made from their baseline, in its process) and wide ranges: every drawn value must come
    # from the study's own seeds for this to hold
    kw = dict(seed=4, shape=(16, 16, 20), followup=True, variability=resolve_variability("wide"))
    done: list[tuple[int, str]] = []
    one = write_cohort(tmp_path / "one", 7, "csv", **kw)
    three = write_cohort(
        tmp_path / "three", 7, "csv", jobs=3, progress=lambda d, n, cid: done.append((d, cid)), **kw
    )
    assert [c.case_id for c in one] == [c.case_id for c in three]
    assert [d for d, _ in done] == list(range(1, 8)) and {cid for _, cid in done} == {c.case_id for c in one}
    da, db = _digest(tmp_path / "one"), _digest(tmp_path / "three")
    assert da == db and len(da) == 7 * 3 + 2  # images, phantom.json, manifest.csv
    with pytest.raises(PhantomError, match="jobs must be >= 1, got 0"):
        write_cohort(tmp_path / "zero", 2, "autopet", seed=0, jobs=0)


def test_cohort_plan_lesion_free_half_and_multi_study_patients() -> None:
    plan = cohort_plan(12, "autopet", seed=1)
    assert sum(p["lesion_free"] for p in plan) == 6
    per_patient: dict[str, int] = {}
    for p in plan:
        per_patient[p["patient_id"]] = per_patient.get(p["patient_id"], 0) + 1
    assert max(per_patient.values()) >= 2 and len(per_patient) < 12
    same = [p for p in plan if per_patient[p["patient_id"]] > 1]
    assert len({p["patient_seed"] for p in same}) < len(same)  # studies of one patient share the anatomy
    hn = cohort_plan(9, "hecktor", seed=1)
    assert [p["case_id"] for p in hn][:2] == ["CHUM-001", "CHUP-001"] and hn[7]["case_id"] == "CHUM-002"


@pytest.mark.parametrize("layout", ["autopet", "autopet-nnunet", "hecktor", "csv"])
def test_planned_names_are_what_discover_reads(tmp_path: Path, layout: str) -> None:
    plan = cohort_plan(5, layout, seed=2)
    for p in plan:
        for q in case_paths(layout, p):
            (tmp_path / q).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / q).touch()
    if layout == "csv":
        rows = ["case_id,patient_id,ct,pet,label"]
        rows += [",".join([p["case_id"], p["patient_id"], *map(str, case_paths(layout, p))]) for p in plan]
        (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    found = {c.case_id: c for c in discover(tmp_path, layout)}
    assert set(found) == {p["case_id"] for p in plan}
    for p in plan:
        c = found[p["case_id"]]
        assert c.patient_id == p["patient_id"]
        assert (c.ct, c.pet, c.label) == tuple(tmp_path / q for q in case_paths(layout, p))


def test_labels_follow_the_plan(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path / "c", 4, "autopet", seed=8, shape=(24, 24, 32))
    meta = {r["case_id"]: r for r in json.loads((tmp_path / "c" / "phantom.json").read_text())["cases"]}
    for c in cases:
        lab = read_volume(c.label, dtype=None).array
        assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) <= {0, 1}
        assert bool(lab.any()) == (not meta[c.case_id]["lesion_free"])
        assert np.allclose(read_volume(c.ct).affine, read_volume(c.pet).affine)  # CTres on the PET grid


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="unknown layout"):
        write_cohort(tmp_path / "x", 2, "nifti", seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    with pytest.raises(PhantomError, match="not empty"):
        write_cohort(tmp_path / "full", 1, "autopet", seed=0, shape=(16, 16, 16))


def test_data_package_does_not_import_synth() -> None:
    code = "import sys, h2aseg.data; print(sorted(m for m in sys.modules if m.startswith('h2aseg.synth')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
