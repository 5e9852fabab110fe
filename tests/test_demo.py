"""The demo's whole pipeline on a tiny cohort: every artefact is written and the numbers are real."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from h2aseg.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
from h2aseg.demo import METHODS, DemoOptions, run_demo


def test_tiny_demo_end_to_end(tmp_path: Path) -> None:
    opts = DemoOptions(
        out=tmp_path / "demo",
        cases=6,
        seed=3,
        from_scratch=True,
        epochs=1,
        progress=False,
        shape=(40, 40, 48),
        spacing=(10.0, 10.0, 12.0),
        overrides=(
            "model.channels=[2,4,4,8,8]",
            "model.window_size=[4,4,2]",
            "data.patch_size=[32,32,32]",
            "train.steps_per_epoch=1",
            "train.amp=off",
            "infer.amp=off",
        ),
    )
    summary = run_demo(opts, log=lambda msg: None)
    out = opts.out
    assert json.loads((out / "summary.json").read_text())["metrics"].keys() == METHODS.keys()
    report = (out / "report.md").read_text()
    assert "trained from scratch" in report and "SUV >= 2.5" in report and "41% SUVmax" in report
    for method in METHODS:
        assert (out / "evaluation" / method / "per_case.csv").is_file()
        assert len(list((out / "predictions" / method).glob("*.nii.gz"))) == summary["cases"]["test"]
    assert (out / "figures" / "training_curves.png").is_file()
    assert summary["training"]["epochs"] == 1


def test_export_checkpoint_is_small_and_loads(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    save_checkpoint(
        {"config": {}, "model": model.state_dict(), "optimizer": {"big": torch.zeros(1000)}, "epoch": 3},
        tmp_path / "full.pt",
    )
    export_checkpoint(tmp_path / "full.pt", tmp_path / "slim.pt", note="test")
    slim = load_checkpoint(tmp_path / "slim.pt")
    assert "optimizer" not in slim and slim["provenance"]["epoch"] == 3
    assert slim["model"]["weight"].dtype == torch.float16
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(slim["model"])
    torch.testing.assert_close(twin.weight, model.weight, rtol=1e-3, atol=1e-3)
