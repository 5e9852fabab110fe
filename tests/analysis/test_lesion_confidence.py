"""``h2aseg analyze confidence``: ROC AUC of lesion confidence for TP vs FP lesions, on known inputs."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.analysis.lesion_confidence import (
    ConfidenceError,
    hanley_mcneil_se,
    pooled_lesions,
    roc_auc,
    score_auc,
)
from h2aseg.cli import app
from h2aseg.data.io import write_volume
from h2aseg.evaluation.quantify import quantify_arrays, write_quantification

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _brute_auc(tp: list[float], fp: list[float]) -> float:
    pairs = list(itertools.product(tp, fp))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_roc_auc_on_known_inputs() -> None:
    assert roc_auc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5
    # pairs won: 0.9 and 0.6 beat all 3 FP (6); each 0.4 beats 0.1 and ties 0.4 (2 x 1.5): 9 of 12
    tp, fp = [0.9, 0.6, 0.4, 0.4], [0.5, 0.4, 0.1]
    assert roc_auc(tp, fp) == pytest.approx(9 / 12) == pytest.approx(_brute_auc(tp, fp))
    rng = np.random.default_rng(0)
    a, b = list(rng.integers(0, 5, 13).astype(float)), list(rng.integers(0, 5, 9).astype(float))
    assert roc_auc(a, b) == pytest.approx(_brute_auc(a, b))
    assert math.isnan(roc_auc([], [0.3])) and math.isnan(roc_auc([0.3], []))


def test_lower_is_confident_scores_are_negated_and_the_interval_holds_the_auc() -> None:
    cv = score_auc("tta_volume_cv", False, [0.0, 0.1, 0.2], [0.5, 0.9])  # TP lesions vary least
    assert cv.auc == 1.0 and (cv.n_tp, cv.n_fp) == (3, 2) and cv.ci_high == 1.0
    mixed = score_auc("prob_mean", True, [0.9, 0.6, 0.4, 0.4], [0.5, 0.4, 0.1])
    assert mixed.ci_low < mixed.auc < mixed.ci_high
    # Hanley & McNeil (1982), worked value: AUC 0.8 from 10 + 10 -> Q1 = 0.8/1.2, Q2 = 1.28/1.8
    q1, q2 = 0.8 / 1.2, 2 * 0.64 / 1.8
    expected = math.sqrt((0.8 * 0.2 + 9 * (q1 - 0.64) + 9 * (q2 - 0.64)) / 100)
    assert hanley_mcneil_se(0.8, 10, 10) == pytest.approx(expected)


@pytest.fixture
def predictions(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases: predicted masks with lesions.csv (no detected column) beside them, and their GTs."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    specs = {  # case -> [(slices, probability, in GT)]
        "a": [
            ((slice(1, 3), slice(1, 3), slice(1, 3)), 0.9, True),
            ((slice(6, 8), slice(6, 8), slice(6, 8)), 0.55, False),
        ],
        "b": [
            ((slice(1, 4), slice(5, 8), slice(1, 2)), 0.8, True),
            ((slice(6, 7), slice(1, 2), slice(6, 7)), 0.6, True),
        ],
    }
    for case, lesions in specs.items():
        mask = np.zeros((10, 10, 10), np.uint8)
        truth = np.zeros_like(mask)
        prob = np.zeros(mask.shape, np.float32)
        for box, p, hit in lesions:
            mask[box], prob[box] = 1, p
            if hit:
                truth[box] = 1
        write_volume(pred / f"{case}.nii.gz", mask, AFFINE)
        write_volume(gt / f"{case}.nii.gz", truth, AFFINE)
        q = quantify_arrays(np.ones(mask.shape), mask, AFFINE, case_id=case, probability=prob)
        write_quantification(q, pred / f"{case}_lesions.csv", pred / f"{case}_patient.csv")
    return pred, gt


def test_analyze_confidence_cli(predictions: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = predictions
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["analyze", "confidence", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    rows = {r["score"]: r for r in csv.DictReader((out / "confidence.csv").open())}
    # TP lesions have p = 0.9, 0.8, 0.6 and the FP lesion 0.55: perfectly separated
    assert (rows["prob_mean"]["n_tp"], rows["prob_mean"]["n_fp"], rows["prob_mean"]["auc"]) == ("3", "1", "1")
    assert rows["tta_volume_cv"]["n_tp"] == "0" and rows["tta_volume_cv"]["auc"] == ""  # no TTA: no cells
    lesions = list(csv.DictReader((out / "lesions.csv").open()))
    assert sorted((r["case_id"], r["detected"]) for r in lesions) == [
        ("a", "0"),
        ("a", "1"),
        ("b", "1"),
        ("b", "1"),
    ]
    md = (out / "confidence.md").read_text()
    assert "| prob_mean | higher | 3 | 1 | 1.000 |" in md and "read those AUCs as rough" in md
    assert "| prob_mean | higher | 3 | 1 | 1.000 |" in result.output


def test_missing_ground_truth_and_foreign_tables_are_errors(
    predictions: tuple[Path, Path], tmp_path: Path
) -> None:
    pred, gt = predictions
    with pytest.raises(ConfidenceError, match=r"a_lesions\.csv: no detected column and no ground truth"):
        pooled_lesions(pred, None)
    with pytest.raises(ConfidenceError, match=r"no <case>_lesions\.csv files"):
        pooled_lesions(gt, None)
    # a table whose lesions are not the mask's (another mask's CSV) is refused, naming it
    (pred / "b_lesions.csv").write_bytes((pred / "a_lesions.csv").read_bytes())
    masks = {p.name.split(".")[0]: p for p in gt.iterdir()}
    with pytest.raises(ConfidenceError, match=r"b_lesions\.csv: lesion \d is not a lesion of"):
        pooled_lesions(pred, masks)
    result = CliRunner().invoke(
        app, ["analyze", "confidence", "--pred", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "no such prediction folder" in result.output
