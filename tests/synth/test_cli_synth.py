"""``h2aseg synth``: writes a discoverable cohort; bad arguments give a one-line error and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from h2aseg.cli import synth
from h2aseg.data.layouts import discover
from h2aseg.synth import followup_pairs


def _app() -> typer.Typer:
    app = typer.Typer()
    synth.register(app)

    @app.callback()
    def main() -> None:  # keeps "synth" a sub-command
        pass

    return app


def test_synth_writes_a_cohort(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    res = CliRunner().invoke(
        _app(),
        [
            "synth",
            "--out",
            str(out),
            "--cases",
            "3",
            "--layout",
            "hecktor",
            "--seed",
            "4",
            "--shape",
            "16",
            "16",
            "20",
            "--jobs",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    cases = discover(out)
    assert len(cases) == 3 and all(c.case_id.count("-") == 1 for c in cases)
    assert "wrote 3 studies" in res.output


def test_synth_progress_flag(tmp_path: Path) -> None:
    args = ["synth", "--cases", "2", "--shape", "16", "16", "20"]
    shown = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "a")])
    hidden = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "b"), "--no-progress"])
    assert shown.exit_code == hidden.exit_code == 0, (shown.output, hidden.output)
    assert "2/2" in shown.output and "2/2" not in hidden.output
    assert "wrote 2 studies" in hidden.output and len(discover(tmp_path / "b")) == 2


def test_synth_errors_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "x").write_text("x")
    runner = CliRunner()
    res = runner.invoke(_app(), ["synth", "--out", str(out), "--cases", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "folder is not empty" in res.output and str(out) in res.output
    for args in (
        ["--cases", "0"],
        ["--jobs", "0"],
        ["--layout", "nifti"],
        ["--shape", "4", "4", "4"],
        ["--spacing", "1", "0", "1"],
    ):
        res = runner.invoke(_app(), ["synth", "--out", str(tmp_path / "new"), *args])
        assert res.exit_code == 2 and "Traceback" not in res.output, args
    assert not (tmp_path / "new").exists()


def test_synth_variability_levels_and_file(tmp_path: Path) -> None:
    args = ["synth", "--cases", "2", "--shape", "16", "16", "20", "--no-progress", "--seed", "2626"]
    res = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "ood"), "--variability", "out-of-range"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ood" / "phantom.json").read_text())
    assert doc["variability"]["level"] == "out-of-range" and "variability out-of-range" in res.output
    assert all(c["variability"]["level"] == "out-of-range" for c in doc["cases"])
    ranges = tmp_path / "mine.yaml"
    ranges.write_text("base: wide\nuptake: {myocardium: [10, 12]}\n")
    res = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "f"), "--variability-file", str(ranges)])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "f" / "phantom.json").read_text())
    assert doc["variability"]["level"] == "mine" and doc["variability"]["uptake"]["myocardium"] == [[10, 12]]
    assert all(10 <= c["suv"]["myocardium"] <= 12 for c in doc["cases"])
    plain = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "d"), "--variability", "default"])
    assert plain.exit_code == 0 and "variability" not in json.loads(
        (tmp_path / "d" / "phantom.json").read_text()
    )


def test_synth_bad_variability_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("organs: {kidneys: {scale: [1.3, 0.9]}}\n")
    runner = CliRunner()
    for extra, expect in (
        (["--variability-file", str(bad)], [str(bad), "organs.kidneys.scale", "lo > hi"]),
        (["--variability", "wide", "--variability-file", str(bad)], ["not both"]),
        (["--variability", "huge"], ["huge"]),
    ):
        res = runner.invoke(_app(), ["synth", "--out", str(tmp_path / "new"), "--cases", "1", *extra])
        assert res.exit_code == 2 and "Traceback" not in res.output, extra
        flat = "".join(res.output.split())  # rich wraps long lines (and paths) at the terminal's width
        assert all("".join(e.split()) in flat for e in expect), (extra, res.output)
    assert not (tmp_path / "new").exists()


def test_cli_followup(tmp_path: Path) -> None:
    args = ["synth", "--shape", "16", "16", "20", "--no-progress", "--followup"]
    res = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "c"), "--cases", "4"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "wrote 4 studies of 2 patients" in flat and "2 follow-ups" in flat, flat
    assert len(followup_pairs(tmp_path / "c")) == 2
    for extra, expect in ((["--layout", "hecktor"], "hecktor"), (["--cases", "1"], "at least 2 cases")):
        res = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "bad"), *extra])
        flat = " ".join(res.output.split())
        assert res.exit_code == 2 and "--followup" in flat and expect in flat, res.output
    assert not (tmp_path / "bad").exists()
