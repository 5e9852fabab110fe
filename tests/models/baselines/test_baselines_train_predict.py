"""A baseline trains and predicts through the same code as H2ASeg (``h2aseg train`` / ``h2aseg predict``)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.checkpoint import load_checkpoint
from h2aseg.data.layouts import discover
from h2aseg.inference.predictor import Predictor, predict_cases
from h2aseg.training.trainer import train

sys.path.insert(0, str(Path(__file__).parents[2] / "training"))
from training_fixtures import tiny_config, write_tiny_cohort

MODELS = {
    "unet3d": ["model.name=unet3d", "model.extra.channels=[4,8,16,32,64]"],
    # no img_size given: the trainer and the predictor pass data.patch_size (32x32x32)
    "unetr": [
        "model.name=unetr",
        "model.extra={hidden_size: 48, num_heads: 4, mlp_dim: 96, feature_size: 4}",
    ],
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.mark.parametrize("name", list(MODELS))
def test_one_epoch_then_predict(name: str, cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cohort, epochs=1, extra=("train.steps_per_epoch=1", *MODELS[name]))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.epochs == 1 and np.isfinite(result.history[0]["train_loss"])
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["config"]["model"]["name"] == name

    predictor = Predictor.from_checkpoint(result.last_checkpoint)
    assert type(predictor.model).__module__ == f"h2aseg.models.baselines.{name}"
    if name == "unetr":
        assert predictor.model.img_size == tuple(cfg.data.patch_size)
    cases = discover(cohort)[:1]
    (path,) = predict_cases(predictor, cases, tmp_path / "pred")
    mask, ct = nib.load(path), nib.load(cases[0].ct)
    assert mask.shape == ct.shape and mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
