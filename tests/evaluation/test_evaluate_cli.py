"""``h2aseg evaluate`` and ``h2aseg evaluate-table``: outputs, exit code 2 with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.data.io import write_volume

AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _mask(path: Path, lo: int, hi: int, label: int = 1) -> None:
    m = np.zeros((12, 10, 8), np.uint8)
    m[lo:hi, lo:hi, 2:5] = label
    write_volume(path, m, AFF)


def _data(tmp_path: Path) -> tuple[Path, Path]:
    g, p = tmp_path / "gt", tmp_path / "pred"
    for cid, (gl, pl) in {"c1": ((3, 6), (3, 6)), "c2": ((2, 6), (3, 7)), "c3": ((1, 4), (5, 8))}.items():
        _mask(g / f"{cid}.nii.gz", *gl)
        _mask(p / f"{cid}.nii.gz", *pl)
    return g, p


def _run(app, args):
    return CliRunner().invoke(app, args)


def test_evaluate_writes_outputs(app, tmp_path):
    g, p = _data(tmp_path)
    out = tmp_path / "eval"
    r = _run(app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(out), "--protocol", "autopet"])
    assert r.exit_code == 0, r.output
    assert {"per_case.csv", "summary.json", "summary.md"} <= {f.name for f in out.iterdir()}
    s = json.loads((out / "summary.json").read_text())
    assert s["n_cases"] == 3
    assert s["metrics"]["dice"]["mean"] == pytest.approx((100 + 200 * 27 / 96 + 0) / 3)
    assert "FPV" in r.output


def test_evaluate_missing_prediction_is_an_error_unless_allowed(app, tmp_path):
    g, p = _data(tmp_path)
    (p / "c2.nii.gz").unlink()
    r = _run(app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "1 case(s) have no prediction: c2" in r.output and "Traceback" not in r.output
    r = _run(
        app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / "o"), "--allow-missing"]
    )
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "o" / "per_case.csv").read_text().splitlines()
    assert rows[2].startswith("c2,1,0,nan,0,0,")  # empty prediction: Dice 0, HD95 excluded, P/R 0


def test_evaluate_one_part_of_a_split(app, tmp_path):
    g, p = _data(tmp_path)
    (p / "c1.nii.gz").unlink()  # as after h2aseg predict --split val: only c2 and c3 predicted
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["c1"], "val": ["c2", "c3"], "test": []}))
    base = ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / "o")]
    r = _run(app, base)
    assert r.exit_code == 2 and "--split PART --split-file" in r.output  # the hint names the way out
    r = _run(app, [*base, "--split", "val", "--split-file", str(split)])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "o" / "per_case.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["c2", "c3"]
    assert "without prediction" not in r.output
    r = _run(app, [*base, "--split", "test", "--split-file", str(split)])
    assert r.exit_code == 2 and "none of the 0 selected case(s)" in r.output
    r = _run(app, [*base, "--split", "val"])
    assert r.exit_code == 2 and "--split and --split-file go together" in r.output
    r = _run(app, [*base, "--split", "dev", "--split-file", str(split)])
    assert r.exit_code == 2 and "choose one of train, val, test" in r.output
    r = _run(app, [*base, "--split", "val", "--split-file", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "none.json: split file not found" in r.output


def test_evaluate_grid_mismatch_and_hecktor_labels(app, tmp_path):
    g, p = _data(tmp_path)
    write_volume(p / "c1.nii.gz", np.zeros((12, 10, 9), np.uint8), AFF)
    r = _run(app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "different grids" in r.output and "c1.nii.gz" in r.output
    _mask(p / "c1.nii.gz", 3, 6, label=4)
    r = _run(
        app,
        ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / "o"), "--protocol", "hecktor"],
    )
    assert r.exit_code == 2 and "labels [4] not allowed" in r.output
    r = _run(app, ["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(g), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "prediction folder not found" in r.output


def test_evaluate_table(app, tmp_path):
    g, p = _data(tmp_path)
    for run in ("r1", "r2"):
        r = _run(app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / run)])
        assert r.exit_code == 0, r.output
    r = _run(
        app,
        [
            "evaluate-table",
            "--run",
            f"H2ASeg@AutoPET-II={tmp_path / 'r1'}",
            "--run",
            f"H2ASeg@AutoPET-II={tmp_path / 'r2' / 'summary.json'}",
            "--out",
            str(tmp_path / "table"),
        ],
    )
    assert r.exit_code == 0, r.output
    md = (tmp_path / "table" / "table.md").read_text()
    assert "H2ASeg" in md and "**" in md
    assert (tmp_path / "table" / "table.tex").read_text().startswith("\\begin{table}")
    r = _run(app, ["evaluate-table", "--run", "nonsense", "--out", str(tmp_path / "t2")])
    assert r.exit_code == 2 and "expected METHOD=PATH" in r.output


def test_evaluate_parallel_and_monai_convention(app, tmp_path):
    g, p = _data(tmp_path)
    outs = []
    for extra in ([], ["--jobs", "2", "--hd95", "monai"]):
        out = tmp_path / f"o{len(outs)}"
        r = _run(app, ["evaluate", "--pred", str(p), "--gt", str(g), "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        outs.append(json.loads((out / "summary.json").read_text()))
    assert outs[1]["hd95_convention"] == "monai"
    assert outs[0]["metrics"]["dice"] == outs[1]["metrics"]["dice"]
