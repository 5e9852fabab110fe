"""``h2aseg evaluate``: unexpected label values are an error naming the file; ``--label-map`` maps them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from h2aseg.data.io import write_volume
from h2aseg.evaluation.matching import EvaluationError, parse_label_map

AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _case(tmp_path: Path, gt_extra: int = 7, pred_label: int = 1) -> tuple[Path, Path]:
    """GT: a lesion (1) and a second one labelled ``gt_extra``; prediction: both lesions as ``pred_label``."""
    gt = np.zeros((12, 10, 8), np.uint8)
    gt[1:4, 1:4, 1:4] = 1
    gt[7:10, 6:9, 4:7] = gt_extra
    g, p = tmp_path / "gt", tmp_path / "pred"
    write_volume(g / "c1.nii.gz", gt, AFF)
    write_volume(p / "c1.nii.gz", (gt > 0).astype(np.uint8) * pred_label, AFF)
    return g, p


def _evaluate(app: typer.Typer, g: Path, p: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(out), *extra])


def test_unexpected_gt_label_is_a_clear_error(app, tmp_path):
    g, p = _case(tmp_path)
    r = _evaluate(app, g, p, tmp_path / "o")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert str(g / "c1.nii.gz") in r.output and "ground-truth" in r.output
    assert "labels [7] not allowed" in r.output and "values found [0, 1, 7]" in r.output
    assert "--label-map" in r.output and not (tmp_path / "o" / "per_case.csv").exists()


def test_label_map_makes_it_score(app, tmp_path):
    g, p = _case(tmp_path)
    out = tmp_path / "o"
    r = _evaluate(app, g, p, out, "--label-map", "7=1", "--protocol", "autopet")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["metrics"]["dice"]["mean"] == pytest.approx(100.0) and s["label_map"] == {"7": 1}
    r = _evaluate(app, g, p, tmp_path / "o0", "--label-map", "7=0")  # the 27-voxel lesion becomes background
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o0" / "summary.json").read_text())
    assert s["metrics"]["dice"]["mean"] == pytest.approx(200 * 27 / (27 + 54))
    assert s["metrics"]["fp_volume_ml"]["mean"] == pytest.approx(27 * 12 / 1000)


def test_prediction_labels_per_protocol(app, tmp_path):
    g, p = _case(tmp_path, gt_extra=2, pred_label=2)  # HECKTOR-style labels 1/2 in GT, 2 in prediction
    r = _evaluate(app, g, p, tmp_path / "o")
    assert r.exit_code == 2 and "labels [2] not allowed" in r.output and "c1.nii.gz" in r.output
    r = _evaluate(app, g, p, tmp_path / "o", "--protocol", "hecktor")
    assert r.exit_code == 0, r.output
    r = _evaluate(app, g, p, tmp_path / "o", "--label-map", "2=1")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["metrics"]["dice"]["mean"] == 100.0


@pytest.mark.parametrize("specs", [["7"], ["a=1"], ["7=256"], ["7=1", "7=0"]])
def test_bad_label_map_specs(app, tmp_path, specs):
    with pytest.raises(EvaluationError, match="--label-map"):
        parse_label_map(specs)
    g, p = _case(tmp_path)
    r = _evaluate(app, g, p, tmp_path / "o", *[a for s in specs for a in ("--label-map", s)])
    assert r.exit_code == 2 and "--label-map" in r.output and "Traceback" not in r.output


def test_parse_label_map():
    assert parse_label_map(["7=1", "2=0", "7=1"]) == {7: 1, 2: 0}
