"""``evaluation.detection`` / ``h2aseg analyze detection``: which lesions a prediction finds, by stratum."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.io import read_volume, write_volume
from h2aseg.data.layouts import discover
from h2aseg.evaluation.detection import (
    case_lesions,
    gt_lesions,
    method_lesions,
    site_group,
    strata,
    stratify,
    table_markdown,
)
from h2aseg.evaluation.matching import EvaluationError
from h2aseg.synth import PhantomError, lesion_sites, write_cohort
from h2aseg.synth.cohort import LesionSite

AFF = np.diag([2.0, 2.0, 5.0, 1.0])  # 0.02 ml voxels


def _two_lesions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt = np.zeros((20, 20, 10), np.uint8)
    gt[2:6, 2:6, 2:4] = 1  # lesion 1: 32 voxels
    gt[12:16, 12:14, 5:7] = 2  # lesion 2: 16 voxels, label 2
    suv = np.full(gt.shape, 1.0, np.float32)
    suv[2:6, 2:6, 2:4] = 4.0
    suv[3, 3, 3] = 9.5
    suv[12:16, 12:14, 5:7] = 2.0
    pred = np.zeros_like(gt)
    pred[2:4, 2:6, 2:4] = 1  # half of lesion 1
    pred[18, 18, 8] = 1  # a false positive, not a lesion of the GT
    return gt, pred, suv


def test_gt_lesions_measures_coverage_and_sites() -> None:
    gt, pred, suv = _two_lesions()
    sites = [
        LesionSite((7.0, 7.0, 15.0), 8.0, "node:iliac_r"),  # lesion 1's centroid (7, 7, 12.5): 2.5 mm away
        LesionSite((100.0, 100.0, 100.0), 8.0, "lung"),  # nowhere near lesion 2
    ]
    rows = gt_lesions("c1", gt, pred, suv, AFF, method="m", sites=sites)
    assert [(r.lesion_id, r.label, r.voxels, r.detected) for r in rows] == [(1, 1, 32, 1), (2, 2, 16, 0)]
    one, two = rows
    assert one.volume_ml == pytest.approx(32 * 0.02) and one.covered == pytest.approx(0.5)
    assert one.suv_max == pytest.approx(9.5) and one.suv_mean == pytest.approx((31 * 4.0 + 9.5) / 32)
    assert (one.centroid_x_mm, one.centroid_y_mm, one.centroid_z_mm) == pytest.approx((7.0, 7.0, 12.5))
    assert two.covered == 0.0 and two.suv_max == pytest.approx(2.0)
    assert (one.site, two.site) == ("node:iliac_r", "")
    assert gt_lesions("c0", np.zeros_like(gt), pred, suv, AFF) == []
    with pytest.raises(EvaluationError, match="c1: ground truth, prediction and SUV differ in shape"):
        gt_lesions("c1", gt, pred[:-1], suv, AFF)


def test_strata_and_table() -> None:
    assert [s[0] for s in strata((3.0, 5.0))] == ["< 3", "3-5", ">= 5"]
    assert [s[0] for s in strata((1.0,), "ml")] == ["< 1 ml", ">= 1 ml"]
    assert (site_group("node:iliac_l"), site_group("bone"), site_group("")) == (
        "node:iliac",
        "bone",
        "unknown",
    )
    gt, pred, suv = _two_lesions()
    rows = gt_lesions("c1", gt, pred, suv, AFF, method="a") + gt_lesions("c1", gt, gt, suv, AFF, method="b")
    table = stratify(rows, ["a", "b"], suv_edges=(3.0,), volume_edges_ml=(0.5,))
    got = {(t.by, t.stratum, t.method): (t.detected, t.lesions) for t in table}
    assert got[("all", "all lesions", "a")] == (1, 2) and got[("all", "all lesions", "b")] == (2, 2)
    assert got[("SUVmax", "< 3", "a")] == (0, 1) and got[("SUVmax", ">= 3", "a")] == (1, 1)
    assert got[("volume", "< 0.5 ml", "b")] == (1, 1) and got[("volume", ">= 0.5 ml", "b")] == (1, 1)
    assert not any(t.by == "site" for t in table)  # no lesion has a site
    md = table_markdown(table, ["a", "b"], {"a": 1, "b": 1})
    assert "| all | all lesions | 1/2 (50 %), covered 25 % | 2/2 (100 %), covered 100 % |" in md
    with pytest.raises(EvaluationError, match="strictly increasing"):
        stratify(rows, ["a"], suv_edges=(5.0, 3.0))


def test_lesion_sites_reads_the_record_and_names_a_bad_file(tmp_path: Path) -> None:
    assert lesion_sites(tmp_path) == {}
    with pytest.raises(PhantomError, match="phantom record not found"):
        lesion_sites(tmp_path / "nowhere.json")
    bad = tmp_path / "phantom.json"
    bad.write_text(json.dumps({"cases": [{"case_id": "x", "lesions": [{"site": "lung"}]}]}), encoding="utf-8")
    with pytest.raises(PhantomError, match=r"phantom\.json: not a phantom record"):
        lesion_sites(tmp_path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det") / "cohort"
    write_cohort(root, 4, "autopet", seed=3, shape=(40, 40, 48), spacing=(10.0, 10.0, 12.0))
    return root


def test_cli_tables_two_methods_with_sites(cohort: Path, tmp_path: Path) -> None:
    cases = discover(cohort, "autopet")
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    for case in cases:
        label = read_volume(case.label, dtype=None)
        write_volume(perfect / f"{case.case_id}.nii.gz", label.array, label.affine)
        write_volume(empty / f"{case.case_id}.nii.gz", np.zeros_like(label.array), label.affine)
    out = tmp_path / "det"
    args = ["analyze", "detection", "--pred", f"gt={perfect}", "--pred", str(empty), "--data", str(cohort)]
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "lesions.csv").open(encoding="utf-8")))
    n = sum(len(v) for v in lesion_sites(cohort).values())
    per = {m: [x for x in rows if x["method"] == m] for m in ("gt", "empty")}
    assert len(per["gt"]) == len(per["empty"]) > 0 and len(per["gt"]) <= n
    assert all(x["detected"] == "1" and float(x["covered"]) == 1.0 for x in per["gt"])
    assert all(x["detected"] == "0" for x in per["empty"])
    assert all(x["site"] for x in per["gt"])  # every lesion of a synthetic cohort has its recorded site
    md = (out / "detection.md").read_text(encoding="utf-8")
    k = len(per["gt"])
    assert f"| all | all lesions | {k}/{k} (100 %), covered 100 % | 0/{k} (0 %), covered 0 % |" in md
    assert "| site |" in md and md.strip() in r.output
    table = list(csv.DictReader((out / "detection.csv").open(encoding="utf-8")))
    assert {t["by"] for t in table} == {"all", "SUVmax", "volume", "site"}


def test_cli_errors_name_the_problem(cohort: Path, tmp_path: Path) -> None:
    def invoke(out: str, *extra: str):
        args = ["analyze", "detection", "--data", str(cohort), "--out", str(tmp_path / out), "--no-progress"]
        return CliRunner().invoke(app, [*args, *extra])

    def run(*extra: str) -> str:
        r = invoke("o", *extra)
        assert r.exit_code == 2, r.output
        return " ".join(r.output.split())

    (tmp_path / "none").mkdir()
    assert "matches a labelled case id of the dataset" in run("--pred", str(tmp_path / "none"))
    one = tmp_path / "one"  # predicts one case: only that case is scored
    case = next(c for c in discover(cohort, "autopet") if read_volume(c.label, dtype=None).array.any())
    label = read_volume(case.label, dtype=None)
    write_volume(one / f"{case.case_id}.nii.gz", label.array, label.affine)
    both = ["--pred", str(one), "--pred", str(tmp_path / "none")]
    assert "none (none): no prediction matches a ground-truth case id" in run(*both)
    r = invoke("o1", *both, "--allow-missing")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "o1" / "lesions.csv").open(encoding="utf-8")))
    assert {x["case_id"] for x in rows} == {case.case_id}
    assert {(x["method"], x["detected"]) for x in rows} == {("one", "1"), ("none", "0")}
    assert "--suv-edges 'a,b': expected comma-separated numbers" in run("--pred", "x", "--suv-edges", "a,b")
    assert "volume edges must be finite and strictly increasing" in run(
        "--pred", "x", "--volume-edges", "5,1"
    )
    cases = discover(cohort, "autopet")
    with pytest.raises(EvaluationError, match="case"):
        method_lesions("m", tmp_path / "none", cases)


def test_case_lesions_reads_a_pet_on_another_grid_by_nearest_voxel(tmp_path: Path) -> None:
    """HECKTOR-like: the PET on a 2x coarser grid with another origin; values are the PET's own voxels."""
    from h2aseg.data.layouts import Case

    gt = np.zeros((20, 20, 10), np.uint8)
    gt[8:12, 8:12, 4:6] = 2  # world x, y 16..22 mm, z 20..25 mm on the 2 x 2 x 5 mm grid
    gt_aff = AFF.copy()
    pet = np.ones((12, 12, 6), np.float32)
    pet_aff = np.diag([4.0, 4.0, 10.0, 1.0])
    pet_aff[:3, 3] = (-2.0, -2.0, -5.0)
    pet[4:7, 4:7, 2:4] = 7.0  # world 14..22 mm in x, y, 15..25 mm in z: covers the lesion
    pet[5, 5, 3] = 11.0
    case = Case("h1", "p1", tmp_path / "ct.nii.gz", tmp_path / "pt.nii.gz", tmp_path / "gt.nii.gz")
    write_volume(case.label, gt, gt_aff)
    write_volume(case.pet, pet, pet_aff)
    [les] = case_lesions(case, None, method="empty")
    assert les.label == 2 and les.detected == 0 and les.voxels == 32
    assert les.suv_max == pytest.approx(11.0) and 7.0 <= les.suv_mean <= 11.0
    bad = np.full_like(pet, np.nan)
    write_volume(case.pet, bad, pet_aff)
    with pytest.raises(EvaluationError, match=r"pt\.nii\.gz: contains .* NaN/Inf"):
        case_lesions(case, None)
