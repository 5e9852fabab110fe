"""``evaluation.decoys``: which symmetric decoys of a synthetic cohort a prediction marks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.io import read_volume, write_volume
from h2aseg.data.layouts import discover
from h2aseg.evaluation.decoys import case_decoys, marked_voxels, method_decoys, summarise
from h2aseg.evaluation.matching import EvaluationError
from h2aseg.synth import decoy_sites, write_cohort
from h2aseg.synth.cohort import LesionSite

AFF = np.diag([2.0, 2.0, 5.0, 1.0])
AFF[:3, 3] = [-20.0, -20.0, -25.0]  # voxel (10, 10, 5) is the world origin


def test_marked_voxels_counts_predicted_voxel_centres_within_the_radius() -> None:
    pred = np.zeros((20, 20, 10), np.uint8)
    pred[10, 10, 5] = 1  # at the origin
    pred[13, 10, 5] = 1  # 6 mm along x
    pred[10, 10, 7] = 1  # 10 mm along z
    assert marked_voxels(pred, AFF, (0.0, 0.0, 0.0), 5.0) == 1
    assert marked_voxels(pred, AFF, (0.0, 0.0, 0.0), 6.0) == 2
    assert marked_voxels(pred, AFF, (0.0, 0.0, 0.0), 10.0) == 3
    assert marked_voxels(pred, AFF, (500.0, 0.0, 0.0), 10.0) == 0  # outside the grid
    assert marked_voxels(np.zeros_like(pred), AFF, (0.0, 0.0, 0.0), 10.0) == 0


def _site(x: float, side: str, station: str = "hilar") -> LesionSite:
    return LesionSite(center_mm=(x, 0.0, 0.0), diameter_mm=8.0, site=f"decoy:{station}_{side}")


def test_pairs_are_marked_on_both_sides_one_side_or_none() -> None:
    pred = np.zeros((20, 20, 10), np.uint8)
    pred[14, 10, 5] = 1  # x = 8 mm: the right decoy of the hilar pair
    pred[6, 10, 5] = 1  # x = -8 mm: its left partner
    pred[10, 16, 5] = 1  # y = 12 mm: the right decoy of the iliac pair only
    iliac_r = LesionSite((0.0, 12.0, 0.0), 8.0, "decoy:iliac_r")
    decoys = [_site(8, "r"), _site(-8, "l"), iliac_r, _site(30, "l", "iliac")]  # the last: off the grid
    rows = case_decoys("a", pred, AFF, decoys, method="m")
    assert [r.marked for r in rows] == [1, 1, 1, 0] and rows[0].pair == "hilar"
    (s,) = summarise(rows, ["m"])
    assert (s.studies, s.decoys, s.marked, s.pairs, s.pairs_both, s.pairs_one) == (1, 4, 3, 2, 1, 1)


@pytest.fixture(scope="module")
def decoy_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decoys") / "data"
    write_cohort(
        root, 3, "autopet", seed=5, shape=(48, 48, 64), spacing=(8.0, 8.0, 10.0), symmetric_decoys=(2, 2)
    )
    return root


def test_a_label_copy_marks_no_decoy_and_hot_pet_marks_them(decoy_cohort: Path, tmp_path: Path) -> None:
    decoys = decoy_sites(decoy_cohort)
    assert len(decoys) == 3 and all(len(v) == 4 for v in decoys.values())
    perfect, hot = tmp_path / "perfect", tmp_path / "hot"
    for case in discover(decoy_cohort, "autopet"):
        label, pet = read_volume(case.label, dtype=None), read_volume(case.pet)
        write_volume(perfect / f"{case.case_id}.nii.gz", label.array, label.affine)
        write_volume(hot / f"{case.case_id}.nii.gz", (pet.array > 1.2).astype(np.uint8), pet.affine)
    none = summarise(method_decoys("perfect", perfect, decoys), ["perfect"])[0]
    assert (none.decoys, none.marked, none.pairs_both) == (12, 0, 0)
    every = summarise(method_decoys("hot", hot, decoys), ["hot"])[0]
    assert every.marked >= 10 and every.pairs_both >= 4  # small, faint ones may blur below the threshold

    out = tmp_path / "det"
    args = ["analyze", "detection", "--pred", f"label={perfect}", "--pred", f"hot={hot}"]
    r = CliRunner().invoke(app, [*args, "--data", str(decoy_cohort), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    md = (out / "decoys.md").read_text(encoding="utf-8")
    assert "| label | 3 | 0 / 12 (0 %) | 0 / 6 (0 %) | 0 / 6 (0 %) |" in md and md.strip() in r.output
    rows = list(csv.DictReader((out / "decoys.csv").open(encoding="utf-8")))
    assert len(rows) == 24 and {x["method"] for x in rows} == {"label", "hot"}


def test_a_folder_without_a_study_with_decoys_is_named(decoy_cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_volume(other / "unknown_case.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(EvaluationError, match=f"{other}.*no mask of a study with decoys"):
        method_decoys("x", other, decoy_sites(decoy_cohort))
