"""Table 3 from a checkpoint: TAMW weights recorded by hooks, the PET/CT channel slices of both variants,
window aggregation, the split, the files, and clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from analysis_fixtures import RELEASED, close, set_tamw_weights, write_checkpoint, write_small_cohort
from typer.testing import CliRunner

from h2aseg.analysis.common import AnalysisError, load_model
from h2aseg.analysis.tamw_run import PredictionRecorder, analyze_cases, analyze_tamw
from h2aseg.analysis.tamw_weights import (
    TamwCall,
    TamwRecorder,
    aggregate_case,
    modality_slices,
    read_table3_csv,
    tamw_order,
    write_tamw_outputs,
)
from h2aseg.cli import app
from h2aseg.inference.predictor import predict_cases


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_small_cohort(root)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_modality_slices_follow_each_variants_concatenation() -> None:
    assert modality_slices("paper", 4, 24) == {"pet": slice(0, 4), "ct": slice(4, 8), "dec": slice(8, 24)}
    assert modality_slices("released", 4, 24) == {"pet": slice(4, 8), "ct": slice(0, 4), "dec": slice(8, 24)}
    with pytest.raises(AnalysisError, match="channel order must be 'paper' or 'released', got 'ours'"):
        modality_slices("ours", 4, 24)


@pytest.mark.parametrize(
    ("variant", "order"), [("paper", "paper"), ("ours", "paper"), ("released", "released")]
)
def test_the_channel_order_comes_from_the_tamw_modules(variant: str, order: str) -> None:
    from h2aseg.models.registry import build_network

    net = build_network("h2aseg", variant=variant, channels=(4, 4, 4, 4, 4), window_size=(2, 2, 2))
    assert tamw_order(net) == order


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_hand_set_mlps_give_known_table(cohort: Path, tmp_path: Path, variant: str) -> None:
    """Channels [0, C) weigh 0.5, [C, 2C) -0.25 (background +0.1): PET is the first block in the paper's
    concat(F_pet, F_ct, D~), the second in the released concat(F_ct, F_pet, D~)."""
    extra = RELEASED if variant == "released" else []
    ckpt = write_checkpoint(tmp_path / "m.pt", extra, mutate=lambda m: set_tamw_weights(m, 0.5, -0.25, 0.3))
    analyze_tamw(ckpt, cohort, tmp_path / "out", part="all")
    pet, ct = (50.0, -25.0) if variant == "paper" else (-25.0, 50.0)
    want = {("fore", "pet"): pet, ("fore", "ct"): ct, ("back", "pet"): pet + 10, ("back", "ct"): ct + 10}
    rows = read_table3_csv(tmp_path / "out" / "table3.csv")
    assert len(rows) == 16 and sorted({r["depth"] for r in rows}) == [1, 2, 3, 4]
    for r in rows:
        assert close(r["mean"], want[(r["branch"], r["modality"])]), r
        assert r["n_cases"] == 4 and close(r["std"], 0.0) and close(r["std_channels"], 0.0)
    per_case = _rows(tmp_path / "out" / "tamw_weights_per_case.csv")
    assert len(per_case) == 16 and all(int(r["windows"]) == 2 for r in per_case)  # 32x32x40: two windows
    assert all(close(float(r["dec_fore"]), 30.0) for r in per_case)
    text = (tmp_path / "out" / "table3.md").read_text()
    order = "concat(F_pet, F_ct, D~)" if variant == "paper" else "concat(F_ct, F_pet, D~)"
    assert f"| 1 | {pet:.2f}±0.00 | {ct:.2f}±0.00 |" in text and order in text


def test_trained_like_weights_are_finite_and_bounded(cohort: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "m.pt")
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            "tamw",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(cohort),
            "--out",
            str(tmp_path / "out"),
            "--split",
            "all",
            "--cases",
            "3",
            "--window-weighting",
            "mass",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = read_table3_csv(tmp_path / "out" / "table3.csv")
    values = [v for r in rows for v in (r["mean"], r["std"], r["std_channels"])]
    assert all(np.isfinite(v) and -100.0 < v < 100.0 for v in values)
    assert {r["n_cases"] for r in rows} == {3}
    channels = _rows(tmp_path / "out" / "tamw_weights_channels.csv")
    # per case: depth k has 2 C_k + 2 C_{k+1} channels (4+4+16, 8+8+16, 8+8+16, 8+8+16)
    assert len(channels) == 3 * (24 + 32 * 3)
    assert all(-1.0 < float(r[w]) < 1.0 for r in channels for w in ("w_fore", "w_back"))
    assert "mass mean" in (tmp_path / "out" / "table3.md").read_text()


def test_stored_split_chooses_the_test_cases(cohort: Path, tmp_path: Path) -> None:
    from h2aseg.data.layouts import discover

    ids = [c.case_id for c in discover(cohort)]
    split = {
        "train": ids[:2],
        "val": [],
        "test": ids[2:],
        "seed": 0,
        "ratios": [0.5, 0.0, 0.5],
        "patients": {},
    }
    ckpt = write_checkpoint(tmp_path / "m.pt", split=split)
    analyze_tamw(ckpt, cohort, tmp_path / "out", part="test")
    assert sorted({r["case_id"] for r in _rows(tmp_path / "out" / "tamw_weights_per_case.csv")}) == ids[2:]
    assert "the split stored in m.pt" in (tmp_path / "out" / "table3.md").read_text()
    other = {**split, "test": ["nobody"], "train": ids}
    ckpt = write_checkpoint(tmp_path / "other.pt", split=other)
    with pytest.raises(AnalysisError, match="use --split all"):
        analyze_tamw(ckpt, cohort, tmp_path / "out2", part="test")


def test_window_weighting() -> None:
    w1, w2 = torch.tensor([[0.2, 0.4, 0.0, 0.0]]), torch.tensor([[0.6, 0.8, 0.0, 0.0]])
    calls = [
        TamwCall(k, 1, w, -w, torch.tensor([f])) for k in (1, 2, 3, 4) for w, f in ((w1, 0.0), (w2, 1.0))
    ]
    uniform = aggregate_case("c", calls, "paper", "uniform").depths[1]
    mass = aggregate_case("c", calls, "paper", "mass").depths[1]
    np.testing.assert_allclose(uniform.fore, [0.4, 0.6, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(mass.fore, w2[0].numpy())  # all P~ in the second window
    np.testing.assert_allclose(mass.back, -w1[0].numpy())  # all 1 - P~ in the first
    assert uniform.windows == 2 and close(uniform.fore_fraction, 0.5)
    empty = [TamwCall(c.depth, 1, c.w_fore, c.w_back, torch.zeros(1)) for c in calls]
    np.testing.assert_allclose(aggregate_case("c", empty, "paper", "mass").depths[1].fore, uniform.fore)
    with pytest.raises(AnalysisError, match="depth 4 was never called"):
        aggregate_case("c", [c for c in calls if c.depth != 4], "paper")


def test_recorder_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    loaded = load_model(write_checkpoint(tmp_path / "m.pt"))
    tamw = loaded.model.decoder.tamw2
    with TamwRecorder(loaded.model) as rec, torch.no_grad():
        loaded.model(torch.rand(2, 2, 32, 32, 32))
        assert tamw.record and [c.depth for c in rec.calls] == [4, 3, 2, 1]
        assert rec.calls[-1].w_fore.shape == (2, 24) and rec.calls[0].w_fore.shape == (2, 32)
    assert not tamw.record and tamw.last_weights is None and not tamw._forward_hooks


def test_prediction_recorder_fills_in_skipped_cases(cohort: Path, tmp_path: Path) -> None:
    from h2aseg.data.layouts import discover

    cases = discover(cohort)[:2]
    loaded = load_model(write_checkpoint(tmp_path / "m.pt"))
    predict_cases(loaded.predictor, cases[:1], tmp_path / "pred")  # predicted before: skipped below
    with PredictionRecorder(loaded.predictor, loaded.path) as rec:
        predict_cases(loaded.predictor, cases, tmp_path / "pred", on_case=rec.on_case)
    assert sorted(rec.results) == [cases[1].case_id]
    rec.write(cases, tmp_path / "analysis", where="test")
    per_case = _rows(tmp_path / "analysis" / "tamw_weights_per_case.csv")
    assert [r["case_id"] for r in per_case][::4] == [c.case_id for c in cases]
    alone = write_tamw_outputs(analyze_cases(loaded, cases), tmp_path / "alone")
    assert alone[1].read_text() == (tmp_path / "analysis" / "table3.csv").read_text()


def _renamed(path: Path, name: str) -> Path:
    from h2aseg.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(path)
    payload["config"]["model"]["name"] = name
    payload["model"] = {}  # the config is checked before any network is built
    return save_checkpoint(payload, path)


@pytest.mark.parametrize("kind", ["no TAMW", "not H2ASeg"])
def test_models_without_tamw_are_refused(cohort: Path, tmp_path: Path, kind: str) -> None:
    if kind == "no TAMW":
        path, message = write_checkpoint(tmp_path / "m.pt", ["model.use_tamw=false"]), "without TAMW"
    else:
        path = _renamed(write_checkpoint(tmp_path / "m.pt"), "unet3d")
        message = "'unet3d' checkpoint; the TAMW analysis needs an H2ASeg checkpoint"
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            "tamw",
            "--checkpoint",
            str(path),
            "--data",
            str(cohort),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2
    assert f"error: {path}" in result.output and message in result.output
    assert not (tmp_path / "out").exists()


def test_bad_options_are_one_line_errors(cohort: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "m.pt")
    runner = CliRunner()
    base = ["analyze", "tamw", "--checkpoint", str(ckpt), "--data", str(cohort), "--out", str(tmp_path / "o")]
    for extra, message in (
        (["--split", "everything"], "split part must be"),
        (["--window-weighting", "max"], "window weighting must be one of uniform, mass"),
        (["--split", "all", "--cases", "0"], "--cases must be at least 1"),
    ):
        result = runner.invoke(app, [*base, *extra, "--no-progress"])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(
        app,
        [
            "analyze",
            "tamw",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            "--data",
            str(cohort),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "checkpoint file not found" in result.output
