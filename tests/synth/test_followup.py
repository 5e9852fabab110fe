"""Follow-up studies (``write_cohort(..., followup=True)``, ``h2aseg synth --followup``).

Every recorded change is checked against the written images: label components are tied to lesion records
by the recorded centres, as docs/phantom.md tells a tester to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import pytest

from h2aseg.data.io import read_volume
from h2aseg.data.layouts import discover
from h2aseg.synth import PhantomError, cohort_plan, followup_pairs, synth_case, write_cohort
from h2aseg.synth.anatomy import Frame, build_anatomy
from h2aseg.synth.followup import FollowupPair
from h2aseg.synth.lesion_changes import Followup, evolve
from h2aseg.synth.repositioning import MAX_ROTATION_DEG, MAX_TRANSLATION_MM

SHAPE, SPACING = (48, 48, 64), (6.0, 6.0, 8.0)
VOXEL_DIAG = float(np.linalg.norm(SPACING))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("followup") / "c"
    write_cohort(out, 10, "csv", seed=8, shape=SHAPE, spacing=SPACING, followup=True)
    return out


class Study:
    """One written study: label components, PET and the ``phantom.json`` record."""

    def __init__(self, root: Path, record: dict[str, Any]):
        case = {c.case_id: c for c in discover(root)}[record["case_id"]]
        lab = read_volume(case.label, dtype=None)
        self.record = record
        self.affine = lab.affine
        self.comps = cc3d.connected_components(np.ascontiguousarray(lab.array > 0), connectivity=26)
        self.pet = read_volume(case.pet).array

    def voxel(self, point_mm: Any) -> tuple[int, int, int]:
        ijk = np.linalg.solve(self.affine, np.append(np.asarray(point_mm, dtype=np.float64), 1.0))[:3]
        return tuple(int(v) for v in np.clip(np.round(ijk), 0, np.array(self.comps.shape) - 1))  # type: ignore[return-value]

    def component_at(self, point_mm: Any) -> int:
        """The label component at (or, for a lesion smaller than a voxel, next to) ``point_mm``; 0: none."""
        i, j, k = self.voxel(point_mm)
        if self.comps[i, j, k]:
            return int(self.comps[i, j, k])
        near = self.comps[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2]
        ids, counts = np.unique(near[near > 0], return_counts=True)
        return int(ids[np.argmax(counts)]) if len(ids) else 0

    def own_component(self, index: int) -> int:
        """Lesion ``index``'s component when no other lesion of the study shares it, else 0."""
        centres = [les["center_mm"] for les in self.record["lesions"]]
        comp = self.component_at(centres[index])
        others = [self.component_at(c) for i, c in enumerate(centres) if i != index]
        return comp if comp and comp not in others else 0

    def centroid_mm(self, comp: int) -> np.ndarray:
        ijk = np.argwhere(self.comps == comp).mean(axis=0)
        return (self.affine @ np.append(ijk, 1.0))[:3]


def _pairs(root: Path) -> list[tuple[FollowupPair, Study, Study]]:
    records = {c["case_id"]: c for c in json.loads((root / "phantom.json").read_text())["cases"]}
    return [
        (p, Study(root, records[p.baseline]), Study(root, records[p.followup])) for p in followup_pairs(root)
    ]


def test_plan_pairs_every_patient_and_keeps_lesion_bearing_baselines() -> None:
    plan = cohort_plan(7, "autopet", seed=5, followup=True)
    assert [p["study_index"] for p in plan] == [0, 1, 0, 1, 0, 1, 0]
    for i, p in enumerate(plan):
        if p["study_index"] == 1:
            assert (
                p["followup_of"] == plan[i - 1]["case_id"]
                and p["patient_seed"] == plan[i - 1]["patient_seed"]
            )
    baselines = [p for p in plan if p["study_index"] == 0]
    assert not baselines[0]["lesion_free"] and sum(p["lesion_free"] for p in baselines) == len(baselines) // 4
    assert all("followup_of" not in p for p in cohort_plan(7, "autopet", seed=5))


def test_records_and_correspondences(cohort: Path) -> None:
    doc = json.loads((cohort / "phantom.json").read_text())
    assert doc["followup"] is True
    records = {c["case_id"]: c for c in doc["cases"]}
    pairs = followup_pairs(cohort)
    assert len(pairs) == 5 and sum(1 for c in doc["cases"] if "followup_of" in c) == 5
    for p in pairs:
        base, fu = records[p.baseline], records[p.followup]
        assert fu["followup_of"] == p.baseline and base["patient_id"] == fu["patient_id"] == p.patient_id
        assert base["anatomy"] == fu["anatomy"] and base["patient_seed"] == fu["patient_seed"]
        assert base["seed"] != fu["seed"]  # new noise, physiology and placement
        rep = fu["repositioning"]
        assert rep["rotation_deg"][:2] == [0.0, 0.0] and abs(rep["rotation_deg"][2]) <= MAX_ROTATION_DEG
        assert all(abs(t) <= m for t, m in zip(rep["translation_mm"], MAX_TRANSLATION_MM, strict=True))
        assert np.allclose(np.array(rep["matrix"]), p.repositioning.matrix(), atol=1e-5)
        # every baseline lesion is accounted for once; a matched lesion's centre is its baseline centre moved
        assert sorted(k.baseline_lesion for k in p.links if k.baseline_lesion is not None) == list(
            range(len(base["lesions"]))
        )
        for k in p.links:
            if k.baseline_lesion is not None:
                b = base["lesions"][k.baseline_lesion]["center_mm"]
                assert np.allclose(k.baseline_center_mm, b)
                assert np.allclose(p.to_followup(b), k.center_mm, atol=0.02)
            if k.followup_lesion is not None:
                assert fu["lesions"][k.followup_lesion]["change"] == k.change
        for k in p.matched:
            b, f = base["lesions"][k.baseline_lesion], fu["lesions"][k.followup_lesion]
            assert np.isclose(f["suv"], b["suv"] * k.suv_factor, rtol=1e-3, atol=2e-3)
            assert np.isclose(f["diameter_mm"], b["diameter_mm"] * k.volume_factor ** (1 / 3), atol=0.02)
    changes = {k.change for p in pairs for k in p.links}
    assert {"stable", "shrink", "grow", "uptake", "vanished", "new"} <= changes
    assert any(records[p.baseline]["lesions"] for p in pairs)


def test_changes_are_visible_in_the_images(cohort: Path) -> None:
    checked: dict[str, int] = {}
    for pair, base, fu in _pairs(cohort):
        for k in pair.links:
            if k.change == "vanished":
                comp = fu.component_at(k.center_mm)
                if comp:  # only another follow-up lesion may lie there
                    assert any(fu.component_at(c["center_mm"]) == comp for c in fu.record["lesions"])
                else:
                    checked["vanished"] = checked.get("vanished", 0) + 1
                continue
            if k.change == "new":
                assert fu.component_at(k.center_mm) > 0
                checked["new"] = checked.get("new", 0) + 1
                continue
            assert k.baseline_lesion is not None and k.followup_lesion is not None
            cb, cf = base.own_component(k.baseline_lesion), fu.own_component(k.followup_lesion)
            if not (cb and cf):
                continue
            nb, nf = int((base.comps == cb).sum()), int((fu.comps == cf).sum())
            if k.change == "grow":
                assert nf > nb, (pair.followup, k)
            if k.change == "shrink":
                assert nf < nb, (pair.followup, k)
            if k.change == "uptake" and min(nb, nf) >= 4:
                mb, mf = float(base.pet[base.comps == cb].mean()), float(fu.pet[fu.comps == cf].mean())
                assert (mf > mb) == (k.suv_factor > 1), (pair.followup, k, mb, mf)
            if min(nb, nf) >= 8:
                # the baseline component's centroid, moved, lands on the follow-up component's centroid
                # (within half a voxel; a shrinking or growing lesion within one: it scales about its centre)
                fc = fu.centroid_mm(cf)
                moved, unmoved = pair.to_followup(base.centroid_mm(cb)), base.centroid_mm(cb)
                tol = (0.5 if k.change in ("stable", "uptake") else 1.0) * VOXEL_DIAG
                assert np.linalg.norm(moved - fc) <= tol, (pair.followup, k, moved, fc)
                assert np.linalg.norm(moved - fc) < np.linalg.norm(unmoved - fc), (pair.followup, k)
                assert np.linalg.norm(np.asarray(k.center_mm) - fc) <= VOXEL_DIAG, (pair.followup, k, fc)
                checked["centroid"] = checked.get("centroid", 0) + 1
            checked[k.change] = checked.get(k.change, 0) + 1
    assert set(checked) == {"stable", "shrink", "grow", "uptake", "vanished", "new", "centroid"}, checked
    assert checked["centroid"] >= 4, checked


def test_same_patient_anatomy_moved_by_the_repositioning() -> None:
    """The follow-up's tissue map is the baseline's moved by the recorded matrix (organ Dice on the grids)."""
    kw: dict[str, Any] = {"shape": (40, 40, 52), "spacing": (8.0, 8.0, 10.0), "patient_seed": 77}
    base = synth_case("wholebody", seed=1, n_lesions=3, lesion_free=False, **kw)
    fu = synth_case("wholebody", seed=2, followup=Followup.of(base), **kw)
    names = fu["meta"]["tissues"]
    masks = {
        "body": lambda t: (t > 0) & (t != names.index("table")),
        "lung": lambda t: t == names.index("lung"),
        "liver": lambda t: t == names.index("liver"),
    }
    ijk = np.argwhere(np.ones(fu["tissue"].shape, bool))
    world = np.c_[ijk, np.ones(len(ijk))] @ fu["ct_affine"].T  # follow-up voxel centres, world mm
    dice: dict[str, dict[str, float]] = {}
    for how, to_base in (
        ("moved", np.linalg.inv(fu["meta"]["repositioning"]["matrix"])),
        ("unmoved", np.eye(4)),
    ):
        src = np.round(world @ to_base.T @ np.linalg.inv(base["ct_affine"]).T)[:, :3].astype(int)
        ok = np.all((src >= 0) & (src < np.array(base["tissue"].shape)), axis=1)
        a, b = base["tissue"][tuple(src[ok].T)], fu["tissue"].reshape(-1)[ok]
        dice[how] = {k: float(2 * (m(a) & m(b)).sum() / (m(a).sum() + m(b).sum())) for k, m in masks.items()}
    assert all(dice["moved"][k] > 0.9 and dice["moved"][k] > dice["unmoved"][k] for k in masks), dice
    assert dice["moved"]["liver"] > dice["unmoved"]["liver"] + 0.05, dice


def test_followup_is_reproducible_and_default_cohort_unchanged(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_cohort(tmp_path / name, 3, "autopet", seed=4, shape=(16, 16, 20), followup=True)
    write_cohort(tmp_path / "plain", 3, "autopet", seed=4, shape=(16, 16, 20))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 3 * 3 + 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    plain = json.loads((tmp_path / "plain" / "phantom.json").read_text())
    assert "followup" not in plain and not any(
        "followup_of" in c or "repositioning" in c for c in plain["cases"]
    )
    assert followup_pairs(tmp_path / "plain") == []


VANISHED_0 = {
    "change": "vanished",
    "baseline_lesion": 0,
    "volume_factor": 0.0,
    "suv_factor": 0.0,
    "center_mm": [0.0, 0.0, 0.0],
    "baseline_center_mm": [0.0, 0.0, 0.0],
}


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match=r"whole-body layout.*'hecktor' has one study per patient"):
        write_cohort(tmp_path / "hn", 2, "hecktor", seed=0, shape=(16, 16, 16), followup=True)
    with pytest.raises(PhantomError, match="at least 2 cases"):
        cohort_plan(1, "autopet", seed=0, followup=True)
    with pytest.raises(PhantomError, match="whole-body only"):
        synth_case("headneck", seed=0, shape=(16, 16, 16), followup=Followup(0, [], []))
    with pytest.raises(PhantomError, match="patient_seed 5 is not the baseline's 0"):
        synth_case("wholebody", seed=1, patient_seed=5, shape=(16, 16, 16), followup=Followup(0, [], []))
    with pytest.raises(PhantomError, match="phantom record not found"):
        followup_pairs(tmp_path / "missing.json")
    write_cohort(tmp_path / "c", 2, "csv", seed=6, shape=(16, 16, 20), followup=True)
    doc = json.loads((tmp_path / "c" / "phantom.json").read_text())
    for edit, why in (
        (lambda c: c.update(followup_of="case_9999"), "followup_of 'case_9999' is not a case"),
        (lambda c: c["repositioning"].pop("centre_mm"), "repositioning needs"),
        (lambda c: c["vanished_lesions"].append(dict(VANISHED_0)), "accounts for baseline lesions"),
        (lambda c: c.update(lesions=[{"change": "melted", "baseline_lesion": 0}]), "unknown change 'melted'"),
    ):
        bad = json.loads(json.dumps(doc))
        edit(bad["cases"][1])
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(PhantomError, match=why) as err:
            followup_pairs(path)
        assert str(path) in str(err.value)


def test_a_lesion_left_without_voxels_is_recorded_as_vanished() -> None:
    base = synth_case("wholebody", seed=12, shape=(24, 24, 32), n_lesions=4, lesion_free=False)
    fov = (np.full(3, -200.0), np.full(3, 200.0))
    anat = build_anatomy(np.random.default_rng(0), Frame(0.4, 0.4, 200.0), 1.0, fov)  # hosts new lesions
    evo = evolve(Followup.of(base), 5, anat, 8.0)
    kept = [les for les, ch in zip(evo.lesions, evo.changes, strict=True) if ch.change != "new"][1:]
    meta = evo.meta(kept, [{"voxels": 1} for _ in kept])
    first = next(ch for ch in evo.changes if ch.change != "new")  # dropped: as if it had left the grid
    lost = [r for r in meta["vanished_lesions"] if r["baseline_lesion"] == first.baseline_lesion]
    assert lost and lost[0]["change"] == "vanished" and lost[0]["drawn_change"] == first.change
    assert lost[0]["volume_factor"] == lost[0]["suv_factor"] == 0.0
    assert len(meta["lesions"]) == len(kept) and all(m["change"] != "new" for m in meta["lesions"])
    moved = evo.repositioning.apply(lost[0]["baseline_center_mm"])
    assert np.allclose(lost[0]["center_mm"], moved, atol=0.01)
