"""``h2aseg analyze``: listed in the top-level help, its commands answer --help."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app

runner = CliRunner()


def test_analyze_is_a_command_with_its_subcommands() -> None:
    assert "analyze" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["analyze", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for sub in ("tamw", "features", "overlays", "runs"):
        assert sub in result.output


@pytest.mark.parametrize("sub", ["tamw", "features", "overlays", "runs"])
def test_subcommand_help(sub: str) -> None:
    result = runner.invoke(app, ["analyze", sub, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Usage" in result.output
    assert ("--no-progress" in result.output) == (sub not in ("overlays", "runs"))


def test_missing_required_options_are_usage_errors() -> None:
    result = runner.invoke(app, ["analyze", "tamw"])
    assert result.exit_code == 2 and "--checkpoint" in result.output
