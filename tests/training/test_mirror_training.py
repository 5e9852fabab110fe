"""data.mirror_pet end to end: a tiny H2ASeg trains on CT, PET and mirrored PET, and predicts from its
checkpoint with the same three channels (the setting travels in the checkpoint's config)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
from training_fixtures import tiny_config, write_tiny_cohort

from h2aseg.checkpoint import load_checkpoint
from h2aseg.config import ConfigError, load_config
from h2aseg.data.layouts import discover
from h2aseg.inference.predictor import Predictor, predict_cases
from h2aseg.training.run import check_settings
from h2aseg.training.trainer import train


def test_a_mirrored_pet_network_trains_and_predicts(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort")
    cfg = tiny_config(cohort, epochs=1, extra=("data.mirror_pet=true", "model.use_mcsa=false"))
    result = train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["config"]["data"]["mirror_pet"] is True
    assert ckpt["model"]["encoder.conv1_pet.conv_block.0.weight"].shape[1] == 2  # PET + its mirror
    predictor = Predictor.from_checkpoint(result.last_checkpoint)
    case = discover(cohort)[0]
    written = predict_cases(predictor, [case], tmp_path / "pred")
    assert nib.load(written[0]).shape == nib.load(case.ct).shape


def test_another_network_with_the_mirrored_pet_is_refused_before_any_case_is_read() -> None:
    with pytest.raises(ConfigError, match=r"data\.mirror_pet: only network 'h2aseg'.*'unet3d'"):
        check_settings(load_config("synthetic", ["model.name=unet3d", "data.mirror_pet=true"]))
    check_settings(load_config("synthetic", ["data.mirror_pet=true"]))  # H2ASeg takes it
