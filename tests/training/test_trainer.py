"""Training end to end on a tiny synthetic cohort: loss falls, checkpoints reload, resume is exact."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import tiny_config, write_tiny_cohort

from h2aseg.analysis.curves import plot_training_curves
from h2aseg.checkpoint import load_checkpoint
from h2aseg.config import Config, load_config
from h2aseg.models.factory import build_from_config
from h2aseg.training.callbacks import CurvesPlot, default_callbacks
from h2aseg.training.losses import DeepSupervisedDiceCE
from h2aseg.training.trainer import RunDirError, lr_lambda, train


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_two_epochs_loss_falls_and_checkpoints_reload(cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cohort, epochs=4, extra=("train.lr=0.01", "train.steps_per_epoch=3"))
    callbacks = [*default_callbacks(progress=False), CurvesPlot(plot_training_curves)]  # as the CLI does
    result = train(cfg, tmp_path / "run", progress=False, callbacks=callbacks)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    for name in ("config.yaml", "split.json", "metrics.csv", "curves.png", "finished.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run" / "tb").is_dir()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert all(r["val_dice"] != "" for r in rows)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["epoch"] == 4 and ckpt["version"] and "optimizer" in ckpt and "rng" in ckpt
    assert ckpt["grid_spacing"] == pytest.approx([10.0, 10.0, 12.0])  # write_tiny_cohort's voxel size
    model = build_from_config(Config.from_dict(ckpt["config"]).model)
    model.load_state_dict(ckpt["model"], strict=True)
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()


def test_killed_run_resumes_to_identical_weights(cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cohort, epochs=2)
    full = train(cfg, tmp_path / "full", progress=False)

    def crash(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt  # as if the process were killed after the first epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False, on_epoch_end=crash)
    assert not (tmp_path / "killed" / "finished.json").exists()
    with pytest.raises(RunDirError, match="--resume"):
        train(cfg, tmp_path / "killed", progress=False)
    resumed = train(cfg, tmp_path / "killed", resume=True, progress=False)
    assert resumed.epochs == 2
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_finished_run_is_not_overwritten_without_force(cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cohort, epochs=1, extra=("train.val_every=0",))
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match="finished run"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(cfg, tmp_path / "other", resume=True, progress=False)
    result = train(cfg, tmp_path / "run", force=True, progress=False)
    assert result.epochs == 1
    with pytest.raises(RunDirError, match=r"raise train\.epochs"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


def test_finished_run_is_extended_by_resume_with_more_epochs(cohort: Path, tmp_path: Path) -> None:
    train(tiny_config(cohort, epochs=1), tmp_path / "run", progress=False)
    longer = train(tiny_config(cohort, epochs=2), tmp_path / "run", resume=True, progress=False)
    assert longer.epochs == 2 and [row["epoch"] for row in longer.history] == [1, 2]
    assert (tmp_path / "run" / "finished.json").is_file()
    assert load_checkpoint(longer.last_checkpoint)["epoch"] == 2


def test_missing_data_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.root"):
        train(load_config("synthetic"), tmp_path / "run", progress=False)


def test_lr_schedules() -> None:
    cfg = load_config(
        "synthetic", ["train.epochs=10", "train.warmup_steps=0", "train.lr_schedule=exponential"]
    )
    f = lr_lambda(cfg, steps_per_epoch=5)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.99) and f(12) == pytest.approx(0.99**2)
    cfg = cfg.override(["train.lr_schedule=cosine", "train.warmup_steps=4"])
    f = lr_lambda(cfg, steps_per_epoch=5)
    assert f(0) == pytest.approx(0.25) and f(4) == pytest.approx(1.0) and f(49) < 0.05


class _NaNAt(DeepSupervisedDiceCE):
    """The real loss, except NaN at the listed calls."""

    calls = 0
    nan_calls: tuple[int, ...] = ()

    def forward(self, outputs, target):  # type: ignore[no-untyped-def]
        loss = super().forward(outputs, target)
        type(self).calls += 1
        return loss * float("nan") if type(self).calls in self.nan_calls else loss


def test_non_finite_steps_are_skipped_then_stop(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import h2aseg.training.trainer as trainer

    monkeypatch.setattr(trainer, "DeepSupervisedDiceCE", _NaNAt)
    _NaNAt.calls, _NaNAt.nan_calls = 0, (2,)
    result = train(
        tiny_config(cohort, epochs=1, extra=("train.val_every=0",)), tmp_path / "a", progress=False
    )
    weights = _weights(result.last_checkpoint)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert np.isfinite(result.history[0]["train_loss"])

    _NaNAt.calls, _NaNAt.nan_calls = 0, tuple(range(1, 100))
    cfg = tiny_config(cohort, epochs=1, extra=("train.val_every=0", "train.steps_per_epoch=6"))
    with pytest.raises(FloatingPointError, match="consecutive non-finite"):
        train(cfg, tmp_path / "b", progress=False)


def test_fine_tuning_keeps_the_initial_weights_unless_validation_improves(
    cohort: Path, tmp_path: Path
) -> None:
    base = train(tiny_config(cohort, epochs=1), tmp_path / "base", progress=False)
    cfg = tiny_config(
        cohort, epochs=1, extra=(f"train.init_checkpoint={base.last_checkpoint}", "train.lr=0.0")
    )
    tuned = train(cfg, tmp_path / "tuned", progress=False)
    best = load_checkpoint(tuned.best_checkpoint)
    assert best["epoch"] == 0  # lr 0 cannot improve, so best.pt holds the starting weights
    for k, v in _weights(base.last_checkpoint).items():
        torch.testing.assert_close(best["model"][k], v, rtol=0, atol=0)


def test_validation_reports_spread_and_case_count(cohort: Path, tmp_path: Path, capsys) -> None:
    """Every validated epoch records the mean, the spread and the number of cases with lesions; the best
    epoch is reported with the count it was chosen on (and a warning when that is too few)."""
    from h2aseg.training.trainer import FEW_VAL_CASES, Validation

    cfg = tiny_config(cohort, epochs=2, extra=("train.val_max_cases=null",))
    result = train(cfg, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    split = load_checkpoint(result.last_checkpoint)["split"]
    assert all(int(r["val_cases"]) >= 1 and float(r["val_dice_sd"]) >= 0 for r in rows)
    assert int(rows[0]["val_cases"]) <= len(split["val"])
    best = result.best
    assert best is not None and best["val_dice"] == result.best_val_dice
    assert best["epoch"] in (1, 2) and best["val_cases"] == int(rows[0]["val_cases"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"best.pt: epoch {best['epoch']}" in text and f"n={best['val_cases']} cases" in text
    assert "warning: chosen on fewer than" in text  # this tiny cohort has fewer than FEW_VAL_CASES
    finished = (tmp_path / "run" / "finished.json").read_text()
    assert '"val_cases"' in finished

    v = Validation(40.0, 10.0, 4)
    assert v.sem == pytest.approx(5.0) and "n=4 cases" in v.describe() and FEW_VAL_CASES > 4


def test_fine_tuning_can_graft_modules_the_checkpoint_lacks(cohort: Path, tmp_path: Path, capsys) -> None:
    """train.init_partial: MCSA added to a network trained without it starts freshly initialised, with the
    other weights loaded; with term-normalised MCSA (gains from zero) the network starts as the checkpoint's.
    Without the flag, the mismatch is an error naming the checkpoint and what it lacks."""
    from h2aseg.checkpoint import CheckpointError

    no_mcsa = ("model.use_mcsa=false", "model.variant=paper", "train.val_every=0")
    base = train(tiny_config(cohort, epochs=1, extra=no_mcsa), tmp_path / "base", progress=False)
    graft = (f"train.init_checkpoint={base.last_checkpoint}", "model.variant=ours", "train.lr=0.0")
    with pytest.raises(CheckpointError, match=r"last\.pt: .*entries the checkpoint lacks .*encoder\.sa"):
        train(tiny_config(cohort, epochs=1, extra=graft), tmp_path / "strict", progress=False)

    tuned = train(
        tiny_config(cohort, epochs=1, extra=(*graft, "train.init_partial=true")),
        tmp_path / "graft",
        progress=False,
    )
    assert "start freshly initialised: encoder.sa" in capsys.readouterr().out
    best = load_checkpoint(tuned.best_checkpoint)
    assert best["epoch"] == 0  # lr 0: the starting weights stay the best
    for k, v in _weights(base.last_checkpoint).items():
        torch.testing.assert_close(best["model"][k], v, rtol=0, atol=0)
    assert any(k.startswith("encoder.sa") for k in best["model"])

    # with its MCSA gains at zero, the grafted network computes exactly what the checkpoint's did
    from h2aseg.checkpoint import load_weights

    cfg = tiny_config(cohort, epochs=1, extra=no_mcsa)
    donor = build_from_config(cfg.model, patch_size=cfg.data.patch_size).eval()
    load_weights(donor, base.last_checkpoint)
    grafted_cfg = tiny_config(cohort, epochs=1, extra=graft).model
    grafted = build_from_config(grafted_cfg, patch_size=cfg.data.patch_size).eval()
    assert load_weights(grafted, base.last_checkpoint, partial=True)
    x = torch.rand(1, 2, *cfg.data.patch_size)
    with torch.no_grad():
        a, b = donor(x), grafted(x)

    def first(y):
        return y if torch.is_tensor(y) else y[0]

    torch.testing.assert_close(first(b), first(a), rtol=0, atol=0)
