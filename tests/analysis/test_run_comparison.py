"""``analysis.run_comparison`` / ``h2aseg analyze runs``: curves of several runs against steps and time."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2aseg.analysis.run_comparison import compare_runs, read_run
from h2aseg.cli import app
from h2aseg.errors import InputError

HEADER = "epoch,step,train_loss,val_dice,val_dice_sd,val_cases,lr,seconds\n"


def _run(tmp_path: Path, name: str, rows: list[str]) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.csv").write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return run


def test_read_run_accumulates_time_and_keeps_the_last_row_of_a_repeated_epoch(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        "a",
        [
            "1,25,20.0,,,,0.001,60",
            "2,50,15.0,10.0,8.0,4,0.001,120",
            "2,50,15.0,12.0,6.0,4,0.001,90",  # the epoch repeated by a resume: the later row counts
            "3,75,14.0,,,,0.001,30",
            "4,100,13.0,30.0,10.0,4,0.001,60",
        ],
    )
    curve = read_run("a", run)
    assert curve.steps == 100 and curve.epoch_seconds == [60.0, 90.0, 30.0, 60.0]
    assert curve.minutes == pytest.approx(4.0)
    assert [(p.step, p.dice, p.n) for p in curve.val] == [(50, 12.0, 4), (100, 30.0, 4)]
    assert curve.val[0].minutes == pytest.approx(2.5) and curve.val[1].se == pytest.approx(5.0)
    assert curve.best is curve.val[1] and curve.last is curve.val[1]


def test_compare_runs_writes_figure_and_tables(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", ["1,25,20,,,,0.001,10", "2,50,15,20.0,10.0,4,0.001,10"])
    b = _run(tmp_path, "b", ["1,25,2,5.0,,,0.001,1", "2,50,1,40.0,,,0.001,1"])  # no spread columns
    paths = compare_runs([("H2ASeg", a), ("U-Net", b / "metrics.csv")], tmp_path / "out")
    assert [p.name for p in paths] == ["runs.png", "runs.md", "runs.csv"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths[1].read_text(encoding="utf-8").splitlines()
    assert md[2].startswith("| H2ASeg | 50 | 0.3 | 10.0 | 20.0 ± 5.0 SE (step 50, n=4) |")
    assert md[3].startswith("| U-Net | 50 | 0.0 | 1.0 | 40.0 (step 50) | 40.0 (step 50) |")
    csv_lines = paths[2].read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "run,epoch,step,minutes,val_dice,val_dice_sd,val_cases" and len(csv_lines) == 4


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="metrics CSV not found"):
        read_run("x", tmp_path / "nowhere")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,train_loss\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.csv: missing column\(s\) step, seconds"):
        read_run("x", bad)
    empty = _run(tmp_path, "empty", [])
    with pytest.raises(InputError, match="no epochs recorded"):
        read_run("x", empty)
    run = _run(tmp_path, "ok", ["1,25,20,,,,0.001,10"])
    with pytest.raises(InputError, match="labels must differ"):
        compare_runs([("same", run), ("same", run)], tmp_path / "o")


def test_cli_runs(tmp_path: Path) -> None:
    a = _run(tmp_path, "first", ["1,25,20,,,,0.001,10", "2,50,15,20.0,10.0,4,0.001,10"])
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app, ["analyze", "runs", "--run", str(a), "--run", f"second={a}", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "| first |" in (out / "runs.md").read_text(encoding="utf-8")
    assert "| second |" in (out / "runs.md").read_text(encoding="utf-8")
    missing = str(tmp_path / "missing")
    result = CliRunner().invoke(app, ["analyze", "runs", "--run", missing, "--out", str(out)])
    assert result.exit_code != 0 and "metrics CSV not found" in result.output
