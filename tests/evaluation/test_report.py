"""Summaries (empty-case rules, std), CSV/JSON output, run aggregation and Table-1 markdown/LaTeX."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from h2aseg.evaluation.metrics import evaluate_case
from h2aseg.evaluation.report import (
    aggregate_runs,
    format_cell,
    load_summary,
    per_case_columns,
    read_per_case_csv,
    runs_table,
    summarize,
    table1,
    write_evaluation,
    write_runs_table,
)


def _rows() -> list[dict]:
    z = np.zeros((10, 10, 10), bool)
    a = z.copy()
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 1, axis=0)
    c = z.copy()
    c[7:9, 7:9, 7:9] = True
    cases = {"lesion_good": (b, a), "lesion_missed": (z, a), "negative_fp": (c, z), "negative_clean": (z, z)}
    return [
        {"case_id": k, **evaluate_case(p, g, (1.0, 1.0, 2.0)), "prediction_missing": 0, "resampled": 0}
        for k, (p, g) in cases.items()
    ]


def test_summary_rules_lesion_cases_only_and_fpv_over_all():
    rows = _rows()
    s = summarize(rows, protocol="paper")
    m = s["metrics"]
    assert s["n_cases"] == 4 and s["n_lesion_cases"] == 2 and s["n_lesion_free_cases"] == 2
    dices = [rows[0]["dice"], rows[1]["dice"]]
    assert m["dice"]["n"] == 2 and m["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert m["dice"]["std"] == pytest.approx(np.std(dices, ddof=1))
    assert m["hd95"]["n"] == 1  # the missed case has no HD95 (excluded, default rule)
    assert m["fp_volume_ml"]["n"] == 4
    assert m["fp_volume_ml"]["mean"] == pytest.approx(8 * 2 / 1000 / 4)
    assert m["fn_volume_ml"]["n"] == 2
    assert s["columns"] == ["dice", "hd95", "precision", "recall"]


def test_write_evaluation_files_roundtrip(tmp_path):
    rows = _rows()
    s = summarize(rows, protocol="autopet")
    paths = write_evaluation(tmp_path, rows, s)
    back = read_per_case_csv(paths["per_case"])
    assert [r["case_id"] for r in back] == [r["case_id"] for r in rows]
    header = paths["per_case"].read_text().splitlines()[0].split(",")
    assert header == list(per_case_columns("autopet"))
    for r, b in zip(rows, back, strict=True):
        for k in ("dice", "hd95", "fp_volume_ml", "tp_lesions"):
            assert (math.isnan(r[k]) and math.isnan(b[k])) or r[k] == b[k]  # lossless
    js = json.loads(paths["summary"].read_text())  # valid JSON: NaN written as null
    assert js["metrics"]["dice"]["n"] == 2 and js["protocol"] == "autopet"
    md = paths["markdown"].read_text()
    assert "| autopet | Dice (↑) | FPV (↓) [ml] | FNV (↓) [ml] |" in md
    assert load_summary(tmp_path)["n_cases"] == 4


def test_hecktor_summary_has_aggregates():
    rows = []
    for off in (0, 1):
        g = np.zeros((8, 8, 8), np.uint8)
        g[1:4, 1:4, 1:4], g[5:7, 5:7, 5:7] = 1, 2
        p = np.roll(g, off, axis=0)
        rows.append({"case_id": f"c{off}", **evaluate_case(p, g, (1, 1, 1), classes={"gtvp": 1, "gtvn": 2})})
    s = summarize(rows, protocol="hecktor")
    tp = 27 + 18
    assert s["metrics"]["dsc_agg_gtvp"]["mean"] == pytest.approx(100 * 2 * tp / (4 * 27))
    assert "dsc_agg_mean" in s["columns"]


def test_format_cell():
    assert format_cell(60.0312, 14.7511) == "60.03±14.75"
    assert format_cell(1.0, None) == "1.00"
    assert format_cell(None, None) == "–"


def _summary(dice: float, hd: float, std: float = 10.0) -> dict:
    return {
        "protocol": "paper",
        "columns": ["dice", "hd95"],
        "metrics": {"dice": {"mean": dice, "std": std}, "hd95": {"mean": hd, "std": std}},
    }


def test_aggregate_runs_mean_of_means_and_stds():
    agg = aggregate_runs([_summary(60, 70, 14), _summary(62, 60, 16)])
    assert agg["dice"]["mean"] == 61 and agg["dice"]["std"] == 15
    assert agg["dice"]["std_runs"] == pytest.approx(np.std([60, 62], ddof=1)) and agg["dice"]["n_runs"] == 2


def test_table1_bold_best_underline_second_per_direction(tmp_path):
    runs = {
        "UNet-3D": {"AutoPET-II": [_summary(27.5, 121.35)]},
        "nnUNet": {"AutoPET-II": [_summary(55.93, 70.12)]},
        "H2ASeg": {"AutoPET-II": [_summary(59.0, 63.0), _summary(61.06, 63.18)]},
    }
    rows, cols = runs_table(runs)
    assert cols == [("AutoPET-II", "dice"), ("AutoPET-II", "hd95")]
    md = table1(rows, cols)
    lines = {
        ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "Methods" not in ln
    }
    assert "**60.03** ±10.00" in lines["H2ASeg"] and "**63.09** ±10.00" in lines["H2ASeg"]
    assert "<u>55.93</u> ±10.00" in lines["nnUNet"] and "<u>70.12</u>" in lines["nnUNet"]
    assert "**" not in lines["UNet-3D"] and "<u>" not in lines["UNet-3D"]
    tex = table1(rows, cols, fmt="latex")
    assert "\\textbf{60.03}$\\pm$10.00" in tex and "\\underline{70.12}$\\pm$10.00" in tex
    assert "HD95 ($\\downarrow$)" in tex and "\\multicolumn{2}{c}{AutoPET-II}" in tex
    paths = write_runs_table(runs, tmp_path)
    assert paths["markdown"].read_text() == md and paths["latex"].read_text() == tex
    assert json.loads(paths["json"].read_text())["n_runs"]["H2ASeg"]["AutoPET-II"] == 2


def test_table1_ties_share_the_mark():
    rows = {m: {"": {"dice": {"mean": v, "std": None}}} for m, v in (("a", 50.001), ("b", 50.0), ("c", 40.0))}
    md = table1(rows, [("", "dice")])
    assert md.count("**50.00**") == 2 and "<u>40.00</u>" in md


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="protocol"):
        summarize([], protocol="brats")
    with pytest.raises(ValueError, match="not found"):
        load_summary(tmp_path / "nope")
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_summary(tmp_path)
