"""``h2aseg synth``: writes a discoverable cohort; bad arguments give a one-line error and exit code 2."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from h2aseg.cli import synth
from h2aseg.data.layouts import discover


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
        ["--layout", "nifti"],
        ["--shape", "4", "4", "4"],
        ["--spacing", "1", "0", "1"],
    ):
        res = runner.invoke(_app(), ["synth", "--out", str(tmp_path / "new"), *args])
        assert res.exit_code == 2 and "Traceback" not in res.output, args
    assert not (tmp_path / "new").exists()
