"""Exported checkpoints: config changes through ``overrides``, provenance kept across re-exports, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from h2aseg.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
from h2aseg.cli import app
from h2aseg.config import Config, ConfigError


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    model = torch.nn.Linear(4, 3)
    payload = {"config": Config().to_dict(), "model": model.state_dict(), "optimizer": {}, "epoch": 7}
    return save_checkpoint(payload, tmp_path / "best.pt")


def test_overrides_change_the_stored_config_and_nothing_else(trained: Path, tmp_path: Path) -> None:
    out = export_checkpoint(
        trained, tmp_path / "slim.pt", note="first", overrides=["data.target_spacing=[4, 4, 5]"]
    )
    slim = load_checkpoint(out)
    cfg = Config.from_dict(slim["config"])
    assert cfg.data.target_spacing == (4.0, 4.0, 5.0) and cfg.infer == Config().infer
    assert slim["provenance"] == {
        "source": str(trained),
        "epoch": 7,
        "best_val_dice": None,
        "note": "first",
        "overrides": ["data.target_spacing=[4, 4, 5]"],
    }
    before = load_checkpoint(trained)["model"]["weight"]
    torch.testing.assert_close(slim["model"]["weight"].float(), before, rtol=1e-3, atol=1e-3)


def test_reexport_in_place_keeps_the_provenance_and_records_the_change(trained: Path, tmp_path: Path) -> None:
    slim = export_checkpoint(trained, tmp_path / "slim.pt", note="first")
    weights = load_checkpoint(slim)["model"]["weight"].clone()
    export_checkpoint(slim, slim, note="second", overrides=["infer.overlap=0.5"])
    again = load_checkpoint(slim)
    assert again["provenance"]["source"] == str(trained) and again["provenance"]["note"] == "first"
    assert again["provenance"]["changes"] == [{"note": "second", "overrides": ["infer.overlap=0.5"]}]
    assert Config.from_dict(again["config"]).infer.overlap == 0.5
    assert torch.equal(again["model"]["weight"], weights)  # float16 stays float16, unchanged
    assert not list(tmp_path.glob("*.tmp"))


def test_a_bad_override_names_the_field_and_writes_nothing(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.no_such_field"):
        export_checkpoint(trained, tmp_path / "slim.pt", overrides=["data.no_such_field=1"])
    with pytest.raises(ConfigError, match="overlap"):
        export_checkpoint(trained, tmp_path / "slim.pt", overrides=["infer.overlap=1.5"])
    assert not (tmp_path / "slim.pt").exists()


def test_cli_export_checkpoint(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    dst = tmp_path / "slim.pt"
    res = runner.invoke(
        app, ["export-checkpoint", str(trained), str(dst), "--note", "cli", "--set", "infer.tta_flips=true"]
    )
    assert res.exit_code == 0, res.output
    slim = load_checkpoint(dst)
    assert Config.from_dict(slim["config"]).infer.tta_flips and slim["provenance"]["note"] == "cli"
    res = runner.invoke(app, ["export-checkpoint", str(tmp_path / "missing.pt"), str(dst)])
    assert res.exit_code == 2 and "missing.pt" in res.output and "not found" in res.output


def test_load_weights_strict_partial_and_the_errors_that_name_the_file(trained: Path) -> None:
    """Strict: the same entries or an error naming the file and what differs. Partial: entries the
    checkpoint lacks keep their values; an entry the network lacks, or of another shape, is still an error."""
    from h2aseg.checkpoint import CheckpointError, load_weights

    saved = load_checkpoint(trained)["model"]
    same = torch.nn.Linear(4, 3)
    assert load_weights(same, trained) == ()
    torch.testing.assert_close(same.weight, saved["weight"], rtol=0, atol=0)

    bigger = torch.nn.Sequential()
    bigger.add_module("weight_holder", torch.nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"best\.pt: .*2 entries the network lacks \(bias, weight\)"):
        load_weights(bigger, trained, partial=True)

    class Grafted(torch.nn.Linear):
        def __init__(self) -> None:
            super().__init__(4, 3)
            self.gain = torch.nn.Parameter(torch.zeros(3))

    g = Grafted()
    with pytest.raises(CheckpointError, match=r"1 entries the checkpoint lacks \(gain; train\.init_partial"):
        load_weights(g, trained)
    assert load_weights(g, trained, partial=True) == ("gain",)
    torch.testing.assert_close(g.weight, saved["weight"], rtol=0, atol=0)
    assert not g.gain.detach().any()

    with pytest.raises(CheckpointError, match=r"2 of another shape \(bias: \(3,\) vs \(5,\), weight"):
        load_weights(torch.nn.Linear(4, 5), trained, partial=True)
