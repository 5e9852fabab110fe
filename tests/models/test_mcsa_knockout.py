"""MCSA knockout (``infer.mcsa_knockout``, :func:`h2aseg.models.mcsa.knock_out`): every stage passes its
inputs through (the released variant's norms still apply), so a trained model can be predicted with and
without what MCSA adds; asked of a network without MCSA, prediction refuses with the file named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from h2aseg.checkpoint import save_checkpoint
from h2aseg.config import ConfigError, load_config
from h2aseg.inference.predictor import Predictor
from h2aseg.models.factory import build_from_config
from h2aseg.models.mcsa import MCSA, knock_out

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import TINY


def test_a_stage_knocked_out_passes_its_inputs() -> None:
    torch.manual_seed(0)
    ct, pet = torch.randn(1, 6, 8, 8, 4), torch.randn(1, 6, 8, 8, 4)
    plain = MCSA(6, (4, 4, 2))
    with torch.no_grad():
        before = plain(ct, pet)
        plain.knockout = True
        f_ct, f_pet = plain(ct, pet)
    assert f_ct is ct and f_pet is pet and not torch.equal(before[0], ct)
    # the term-normalised stage with its gains at zero is the same network as its knockout
    term_norm = MCSA(6, (4, 4, 2), term_norm=True)
    with torch.no_grad():
        torch.testing.assert_close(term_norm(ct, pet)[0], ct, rtol=0, atol=0)
    # the released variant keeps its InstanceNorm -> PReLU after each stage
    released = MCSA(6, (4, 4, 2), norm_act=True).eval()
    released.knockout = True
    with torch.no_grad():
        f_ct, _ = released(ct, pet)
        torch.testing.assert_close(f_ct, released.IR_ct2(released.IR_ct1(ct)))


def _checkpoint(tmp_path: Path, *extra: str) -> Path:
    cfg = load_config("synthetic", [*TINY, "model.variant=paper", *extra])
    torch.manual_seed(0)
    model = build_from_config(cfg.model)
    path = tmp_path / "model.pt"
    save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "version": "test"}, path)
    return path


def test_prediction_with_mcsa_knocked_out(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    whole = Predictor.from_checkpoint(path)
    without = Predictor.from_checkpoint(path, ["infer.mcsa_knockout=true"])
    stages = [m for m in without.model.modules() if isinstance(m, MCSA)]
    assert stages and all(m.knockout for m in stages)
    assert not any(m.knockout for m in whole.model.modules() if isinstance(m, MCSA))
    x = torch.randn(1, 2, 32, 32, 16)
    with torch.no_grad():
        a, b = whole.model.eval()(x), without.model.eval()(x)
        assert not torch.equal(a, b)
        assert knock_out(whole.model) == len(stages)  # the same network, switched by hand
        torch.testing.assert_close(whole.model(x), b, rtol=0, atol=0)
        assert knock_out(whole.model, on=False) == len(stages)
        torch.testing.assert_close(whole.model(x), a, rtol=0, atol=0)


def test_a_network_without_mcsa_refuses(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, "model.use_mcsa=false")
    with pytest.raises(ConfigError, match="no MCSA stage to knock out") as e:
        Predictor.from_checkpoint(path, ["infer.mcsa_knockout=true"])
    assert str(path) in str(e.value) and "H2ASeg without MCSA" in str(e.value)


def test_predict_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from h2aseg.cli import app
    from h2aseg.synth import write_cohort

    data = tmp_path / "data"
    write_cohort(data, 1, "autopet", seed=3, shape=(32, 32, 16))
    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["predict", "--checkpoint", str(_checkpoint(tmp_path)), "--input", str(data), "--out-dir",
         str(tmp_path / "pred"), "--mcsa-knockout", "--no-tta", "--no-progress"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
    no_mcsa = tmp_path / "no-mcsa"
    no_mcsa.mkdir()
    refused = runner.invoke(
        app,
        ["predict", "--checkpoint", str(_checkpoint(no_mcsa, "model.use_mcsa=false")), "--input", str(data),
         "--out-dir", str(tmp_path / "pred2"), "--mcsa-knockout", "--no-progress"],
    )  # fmt: skip
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "no MCSA stage to knock out" in refused.output
    assert not (tmp_path / "pred2").exists()
