"""Every command answers --help; bad invocations give one-line errors, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app

runner = CliRunner()
COMMANDS = [
    "synth",
    "convert",
    "train",
    "predict",
    "evaluate",
    "evaluate-table",
    "quantify",
    "experiment",
    "demo",
]


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd: str) -> None:
    result = runner.invoke(app, [cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_train_without_data_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "data.root" in result.output and "Traceback" not in result.output


def test_train_unknown_config_field(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "train.epochs_typo=3"])
    assert result.exit_code == 2 and "unknown config field" in result.output


def test_predict_needs_one_mode(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--checkpoint", str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "either --ct" in result.output
    result = runner.invoke(
        app, ["predict", "--checkpoint", str(tmp_path / "x.pt"), "--input", "a", "--out-dir", "b"]
    )
    assert result.exit_code == 2 and "checkpoint file not found" in result.output


@pytest.mark.parametrize("cmd", ["synth", "train", "predict", "experiment", "demo"])
def test_long_running_commands_share_the_progress_flag(cmd: str) -> None:
    result = runner.invoke(app, [cmd, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--no-progress" in result.output
