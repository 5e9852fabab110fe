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
    det = summary["detection"]["h2aseg"]
    rows = _per_case(out / "evaluation" / "h2aseg" / "per_case.csv")
    assert det["gt_lesions"] == sum(int(float(r["gt_lesions"])) for r in rows) > 0
    assert 0 <= det["found"] <= det["gt_lesions"] and "Lesion-wise detection" in report
    by_suv = {(r["stratum"], r["method"]): r for r in summary["detection_by_suvmax"]}
    for method in METHODS:  # the same lesions as the evaluation counts, split by SUVmax
        found = summary["detection"][method]["found"]
        assert by_suv["all lesions", method] == {
            "stratum": "all lesions",
            "method": method,
            "found": found,
            "lesions": det["gt_lesions"],
        }
        strata = [r for (st, m), r in by_suv.items() if m == method and st != "all lesions"]
        assert (
            sum(r["lesions"] for r in strata) == det["gt_lesions"]
            and sum(r["found"] for r in strata) == found
        )
    assert "| lesion SUVmax |" in report and (out / "detection" / "lesions.csv").is_file()
    # the network is named for what it is, and its Dice carries its standard error
    ours = "H2ASeg [MCSA terms normalised, gains from zero (ours)]"  # from scratch: the default variant
    assert summary["labels"]["h2aseg"] == summary["training"]["network"] == ours
    dice = summary["dice_over_lesion_studies"]["h2aseg"]
    lesion_dice = [float(r["dice"]) for r in rows if float(r["has_lesion"]) == 1.0]
    assert dice["n"] == len(lesion_dice) and abs(dice["mean"] - sum(lesion_dice) / len(lesion_dice)) < 1e-9
    assert f"- {ours}: **{dice['mean']:.1f}" in report and f"**Model:** {ours} (synthetic preset)" in report


def _per_case(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_demo_uses_the_shipped_checkpoint_as_it_is(tmp_path: Path) -> None:
    """The default: no training; the shipped weights predict, and the report says they were not fine-tuned."""
    from h2aseg.demo import shipped_checkpoint

    opts = DemoOptions(
        out=tmp_path / "demo", cases=5, seed=4, progress=False, shape=(40, 40, 48), spacing=(10.0, 10.0, 12.0)
    )
    summary = run_demo(opts, log=lambda msg: None)
    t = summary["training"]
    assert t["epochs"] == 0 and t["checkpoint"] == str(shipped_checkpoint())
    assert not (opts.out / "run").exists()
    report = (opts.out / "report.md").read_text()
    assert "not fine-tuned on this cohort" in report and "s of training" not in report
    from h2aseg.config import Config
    from h2aseg.models.naming import network_title

    shipped = Config.from_dict(load_checkpoint(shipped_checkpoint())["config"]).model
    assert (
        t["network"] == network_title(shipped) and f"**Model:** {t['network']} (synthetic preset)" in report
    )
    n_test = summary["cases"]["test"]
    assert len(list((opts.out / "predictions" / "h2aseg").glob("*.nii.gz"))) == n_test


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


def test_fine_tuning_continues_the_shipped_network(tmp_path: Path) -> None:
    """--fine-tune-epochs trains the network the shipped checkpoint holds, whatever the preset's is."""
    from h2aseg.config import Config
    from h2aseg.demo import demo_config, shipped_checkpoint

    opts = DemoOptions(out=tmp_path / "demo", fine_tune_epochs=1, overrides=("model.use_tamw=false",))
    cfg, how, do_train = demo_config(opts, tmp_path / "data")
    shipped = Config.from_dict(load_checkpoint(shipped_checkpoint())["config"]).model
    assert do_train and "fine-tuned for 1 epochs" in how
    assert cfg.model == shipped and cfg.train.init_checkpoint == str(shipped_checkpoint())
