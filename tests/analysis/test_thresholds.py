"""``h2aseg analyze thresholds``: operating points from saved probability maps, on inputs whose Dice,
lesion counts and false positives are known by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.analysis.thresholds import (
    ThresholdError,
    parse_thresholds,
    probability_maps,
    sweep_thresholds,
)
from h2aseg.cli import app
from h2aseg.data.io import read_volume, write_volume

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture
def predictions(tmp_path: Path) -> tuple[Path, Path]:
    """Three studies on a 12^3 grid; masks at 0.5 beside their probability maps.

    - ``a``: GT lesion A1 (2x2x2 = 8 voxels) at p 0.8; GT lesion A2 (8 voxels) at p 0.35; a blob (8
      voxels, not in the GT) at p 0.25.
    - ``b``: GT lesion B1 (2x2x4 = 16 voxels), half at p 0.9 and half at p 0.45.
    - ``c``: no lesion; a blob (8 voxels) at p 0.6.
    """
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    shape = (12, 12, 12)
    box = (slice(1, 3), slice(1, 3), slice(1, 3))
    box2 = (slice(6, 8), slice(6, 8), slice(6, 8))
    box3 = (slice(1, 3), slice(8, 10), slice(8, 10))
    studies: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    p, t = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    p[box], t[box] = 0.8, 1
    p[box2], t[box2] = 0.35, 1
    p[box3] = 0.25
    studies["a"] = (p, t)
    p, t = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    t[4:6, 4:6, 2:6] = 1
    p[4:6, 4:6, 2:4], p[4:6, 4:6, 4:6] = 0.9, 0.45
    studies["b"] = (p, t)
    p, t = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    p[box2] = 0.6
    studies["c"] = (p, t)
    for case, (prob, truth) in studies.items():
        write_volume(pred / f"{case}.nii.gz", (prob >= 0.5).astype(np.uint8), AFFINE)
        write_volume(pred / f"{case}_probability.nii.gz", prob, AFFINE)
        write_volume(gt / f"{case}.nii.gz", truth, AFFINE)
    return pred, gt


def test_each_threshold_scores_the_masks_it_implies(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = predictions
    out = tmp_path / "out"
    table, checks, _paths = sweep_thresholds(pred, gt, [0.5, 0.3, 0.2], out)
    by_t = {r.threshold: r for r in table}
    assert [r.threshold for r in table] == [0.2, 0.3, 0.5]
    # 0.5: a finds A1 only (Dice 2*8/(8+16) = 66.7), b half of B1 (2*8/(8+16) = 66.7); c's blob is an FP
    r, s = by_t[0.5], by_t[0.5].scores
    assert s.dice is not None and (r.n_cases, s.dice.n, s.lesions_total, s.lesions_found) == (3, 2, 3, 2)
    assert s.dice.mean == pytest.approx(200 * 8 / 24) and s.dice.se == pytest.approx(0.0, abs=1e-9)
    assert s.fp_lesions_per_study == pytest.approx(1 / 3) and s.fp_lesions_per_lesion_free_study == 1.0
    assert r.fp_volume_ml_per_study == pytest.approx(8 * 0.008 / 3)
    # 0.3: a finds both (Dice 100), b all of B1 (100); still c's FP
    s = by_t[0.3].scores
    assert s.dice is not None and (s.lesions_found, s.studies_at_dice_zero) == (3, 0)
    assert s.dice.mean == pytest.approx(100.0)
    # 0.2: a's blob joins: Dice 2*16/(16+24) = 80, two FP lesions in three studies
    s = by_t[0.2].scores
    assert s.dice is not None and s.dice.mean == pytest.approx((80.0 + 100.0) / 2)
    assert s.fp_lesions_per_study == pytest.approx(2 / 3)
    # the thresholded maps at 0.5 are predict's masks, and each written mask is probability >= T
    assert [c.differing_voxels for c in checks] == [0, 0, 0]
    written = read_volume(out / "masks-t0.3" / "a.nii.gz", dtype=None)
    prob = read_volume(pred / "a_probability.nii.gz")
    assert np.array_equal(np.asarray(written.array) > 0, prob.array >= 0.3)
    assert np.allclose(written.affine, AFFINE)
    rows = list(csv.DictReader((out / "thresholds.csv").open()))
    assert [float(x["threshold"]) for x in rows] == [0.2, 0.3, 0.5] and rows[1]["lesions_found"] == "3"
    md = (out / "thresholds.md").read_text()
    assert "| 0.3 | 100.0 ± 0.0 | 0 / 2 | 3 / 3 | 0.33 |" in md
    assert "reproduce the prediction folder's own masks in 3 of 3 studies." in md
    assert (out / "eval-t0.5" / "per_case.csv").is_file()


def test_each_ground_truth_is_read_once_and_scores_as_one_folder_at_a_time(
    predictions: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from h2aseg.evaluation import matching
    from h2aseg.evaluation.pipeline import evaluate_folder_sets, evaluate_folders

    pred, gt = predictions
    reads: list[Path] = []
    read_mask = matching._read_mask
    monkeypatch.setattr(
        matching, "_read_mask", lambda path, role: reads.append(Path(path)) or read_mask(path, role)
    )
    sweep_thresholds(pred, gt, [0.5, 0.3, 0.2], tmp_path / "out")
    gt_reads = [r for r in reads if r.parent == gt]
    assert sorted(r.name for r in gt_reads) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]  # once each, not 3x
    assert len(reads) == 3 + 3 * 3  # and each thresholded mask once
    folders = [tmp_path / "out" / f"masks-t{t}" for t in (0.2, 0.5)]
    together = evaluate_folder_sets(folders, gt, jobs=2)
    for folder, res in zip(folders, together, strict=True):
        alone = evaluate_folders(folder, gt)
        assert repr(res.rows) == repr(alone.rows) and repr(res.summary) == repr(alone.summary)  # NaN HD95s


def test_masks_predicted_elsewhere_are_reported_not_hidden(
    predictions: tuple[Path, Path], tmp_path: Path
) -> None:
    pred, gt = predictions
    mask = np.zeros((12, 12, 12), np.uint8)  # b's mask no longer matches its map at 0.5 (8 voxels missing)
    write_volume(pred / "b.nii.gz", mask, AFFINE)
    _table, checks, _ = sweep_thresholds(pred, gt, [0.5], tmp_path / "out")
    assert {c.case_id: c.differing_voxels for c in checks} == {"a": 0, "b": 8, "c": 0}
    md = (tmp_path / "out" / "thresholds.md").read_text()
    assert "in 2 of 3 studies; the others differ by 8 voxels in all (most: b, 8)" in md


def test_bad_inputs_name_the_problem(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = predictions
    with pytest.raises(ThresholdError, match="strictly between 0 and 1"):
        parse_thresholds("0.3,1.0")
    with pytest.raises(ThresholdError, match="numbers separated by commas"):
        parse_thresholds("0.3;0.4")
    assert parse_thresholds("0.5, 0.2,0.5") == (0.2, 0.5)
    with pytest.raises(ThresholdError, match="--reference 1: a threshold lies strictly between 0 and 1"):
        sweep_thresholds(pred, gt, [0.5], tmp_path / "out", reference=1.0)
    (pred / "c_probability.nii.gz").unlink()
    with pytest.raises(ThresholdError, match=r"1 mask\(s\) without a probability map .* c\.nii\.gz"):
        probability_maps(pred)
    bare = tmp_path / "bare"
    write_volume(bare / "x.nii.gz", np.zeros((4, 4, 4), np.uint8), AFFINE)
    with pytest.raises(ThresholdError, match="--probabilities"):
        probability_maps(bare)
    write_volume(pred / "c_probability.nii.gz", np.full((12, 12, 12), 1.7, np.float32), AFFINE)
    with pytest.raises(ValueError, match=r"c_probability\.nii\.gz: the probability map has values outside"):
        sweep_thresholds(pred, gt, [0.5], tmp_path / "out")


def test_cli_prints_the_table_and_refuses_bad_options(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = predictions
    out = tmp_path / "cli"
    args = ["analyze", "thresholds", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--thresholds", "0.3,0.5"])
    assert res.exit_code == 0, res.output
    assert "| 0.5 | 66.7 ± 0.0 | 0 / 2 | 2 / 3 | 0.33 |" in res.output
    assert (out / "masks-t0.3" / "b.nii.gz").is_file() and not (out / "masks-t0.2").exists()
    res = CliRunner().invoke(app, [*args, "--thresholds", "0.3,2"])
    assert res.exit_code != 0 and "strictly between 0 and 1" in res.output
    res = CliRunner().invoke(app, [*args, "--protocol", "hecktor"])
    assert res.exit_code != 0 and "binary masks" in res.output
