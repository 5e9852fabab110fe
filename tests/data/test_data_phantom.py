"""The synthetic PET/CT phantom: determinism, anatomy, physiology that fools SUV thresholds, PET physics."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from h2aseg.data.io import read_volume
from h2aseg.data.phantom import PhantomError, cohort_plan, synth_case, write_cohort

SMALL = (48, 48, 64)


def _tissue(res: dict, name: str) -> np.ndarray:
    return res["tissue"] == res["meta"]["tissues"].index(name)


@pytest.fixture(scope="module")
def wb_free() -> dict:
    return synth_case("wholebody", seed=11, shape=SMALL, spacing=(8.0, 8.0, 10.0), lesion_free=True)


@pytest.fixture(scope="module")
def wb_les() -> dict:
    return synth_case(
        "wholebody", seed=12, shape=(64, 64, 80), spacing=(6.0, 6.0, 8.0), n_lesions=6, lesion_free=False
    )


def test_same_seed_same_case_and_different_seed_differs() -> None:
    a = synth_case("wholebody", seed=3, shape=(24, 24, 32))
    b = synth_case("wholebody", seed=3, shape=(24, 24, 32))
    c = synth_case("wholebody", seed=4, shape=(24, 24, 32))
    for k in ("ct", "pet", "label", "ct_affine", "pet_affine"):
        assert np.array_equal(a[k], b[k])
    assert a["meta"] == b["meta"]
    assert not np.array_equal(a["pet"], c["pet"])


def test_write_cohort_is_byte_identical(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }

    for layout in ("autopet-nnunet", "hecktor"):
        write_cohort(tmp_path / f"a-{layout}", 3, layout, seed=21, shape=(16, 16, 20))
        write_cohort(tmp_path / f"b-{layout}", 3, layout, seed=21, shape=(16, 16, 20))
        da, db = digest(tmp_path / f"a-{layout}"), digest(tmp_path / f"b-{layout}")
        assert da == db and len(da) == 3 * 3 + 1 + (layout == "autopet-nnunet")


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


def test_labels_follow_the_plan(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path / "c", 4, "autopet", seed=8, shape=(24, 24, 32))
    meta = {r["case_id"]: r for r in json.loads((tmp_path / "c" / "phantom.json").read_text())["cases"]}
    for c in cases:
        lab = read_volume(c.label, dtype=None).array
        assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) <= {0, 1}
        assert bool(lab.any()) == (not meta[c.case_id]["lesion_free"])
        assert np.allclose(read_volume(c.ct).affine, read_volume(c.pet).affine)  # CTres on the PET grid


def test_plausible_hu(wb_les: dict) -> None:
    ct = wb_les["ct"]
    near_air = ndimage.binary_dilation(_tissue(wb_les, "air") | _tissue(wb_les, "table"))
    med = {
        n: float(np.median(ct[_tissue(wb_les, n) & ~near_air]))
        for n in ("lung", "fat", "liver", "muscle", "cortical_bone")
    }
    assert (
        med["lung"] < -700 and -140 < med["fat"] < -60 and 30 < med["liver"] < 80 and 20 < med["muscle"] < 70
    )
    assert med["cortical_bone"] > 250 and ct.min() >= -1024 and ct.dtype == np.int16


def test_anatomy_scales_with_the_field_of_view() -> None:
    for shape, spacing in (((32, 32, 40), (12.0, 12.0, 16.0)), ((40, 40, 48), (6.0, 6.0, 8.0))):
        r = synth_case("wholebody", seed=2, shape=shape, spacing=spacing, lesion_free=True)
        body = r["tissue"] > 0
        z = np.nonzero(body.any(axis=(0, 1)))[0]
        assert (z.max() - z.min() + 1) / shape[2] > 0.9  # vertex to thigh fill the field of view
        for organ in ("brain_gm", "lung", "liver", "kidney", "bladder", "myocardium"):
            assert _tissue(r, organ).any(), organ
        x = np.nonzero(body.any(axis=(1, 2)))[0]
        assert (x.max() - x.min() + 1) < shape[0]  # the body fits laterally


def test_physiological_uptake_fools_suv_thresholds(wb_free: dict) -> None:
    pet = wb_free["pet"]
    assert not wb_free["label"].any()
    fp = pet >= 2.5  # every voxel is a false positive in a lesion-free study
    assert fp.sum() > 20
    hot_organs = sum(
        _tissue(wb_free, n) for n in ("brain_gm", "bladder", "kidney", "urine_kidney", "myocardium")
    )
    assert (fp & ndimage.binary_dilation(hot_organs > 0, iterations=2)).sum() > 0.7 * fp.sum()
    suv = wb_free["meta"]["suv"]
    assert 6 <= suv["brain_gm"] <= 10 and 5 <= suv["bladder"] <= 30 and 3 <= suv["kidney"] <= 6
    assert 1.5 <= suv["myocardium"] <= 8 and 1.9 <= suv["liver"] <= 2.5
    liver = pet[ndimage.binary_erosion(_tissue(wb_free, "liver"), iterations=1)]
    assert 1.7 < liver.mean() < 2.7 and liver.std() > 0.05  # noisy liver around SUV 2-2.5


def test_lesions(wb_les: dict) -> None:
    meta, lab, pet = wb_les["meta"], wb_les["label"], wb_les["pet"]
    assert len(meta["lesions"]) >= 4 and lab.any()
    for les in meta["lesions"]:
        assert 5.0 <= les["diameter_mm"] <= 50.0 and 2.0 <= les["suv"] <= 15.0 and les["voxels"] > 0
    sites = {les["site"].split(":")[0] for les in meta["lesions"]}
    assert sites <= {"node", "lung", "liver", "bone"}
    ring = ndimage.binary_dilation(lab > 0, iterations=3) & ~ndimage.binary_dilation(lab > 0, iterations=1)
    ring &= wb_les["tissue"] > 0
    assert pet[lab > 0].mean() > 1.5 * pet[ring].mean()  # PET contrast
    lung_les = lab.astype(bool) & _tissue(wb_les, "lung")
    if lung_les.any():
        assert np.median(wb_les["ct"][lung_les]) > -300  # visible on CT in the lung


def test_partial_volume_loss_of_small_lesions() -> None:
    small, large = [], []
    for seed in range(6):
        r = synth_case(
            "wholebody",
            seed=100 + seed,
            shape=(64, 64, 80),
            spacing=(4.0, 4.0, 4.0),
            n_lesions=6,
            lesion_free=False,
        )
        lab = ndimage.label(r["label"] > 0)[0]
        for les in r["meta"]["lesions"]:
            c = np.round(
                np.linalg.solve(r["ct_affine"][:3, :3], np.array(les["center_mm"]) - r["ct_affine"][:3, 3])
            )
            i = tuple(int(v) for v in c)
            if not all(0 <= v < n for v, n in zip(i, lab.shape, strict=True)) or lab[i] == 0:
                continue
            rec = float(r["pet"][lab == lab[i]].max()) / les["suv"]
            (small if les["diameter_mm"] < 10 else large if les["diameter_mm"] > 20 else []).append(rec)
    assert small and large
    assert np.median(small) < np.median(large)


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


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="unknown phantom kind"):
        synth_case("brain", seed=0)
    with pytest.raises(PhantomError, match="shape must be"):
        synth_case(seed=0, shape=(4, 4, 4))
    with pytest.raises(PhantomError, match="spacing must be"):
        synth_case(seed=0, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(PhantomError, match="unknown layout"):
        write_cohort(tmp_path / "x", 2, "nifti", seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    with pytest.raises(PhantomError, match="not empty"):
        write_cohort(tmp_path / "full", 1, "autopet", seed=0, shape=(16, 16, 16))


def test_default_case_is_fast() -> None:
    t0 = time.perf_counter()
    r = synth_case("wholebody", seed=0)
    assert r["ct"].shape == (128, 128, 160)
    assert time.perf_counter() - t0 < 2.0
