"""data.mirror_pet end to end: a tiny H2ASeg trains on CT, PET and mirrored PET, and predicts from its
checkpoint with the same three channels (the setting travels in the checkpoint's config)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
from training_fixtures import tiny_config, write_tiny_cohort

from h2aseg.checkpoint import load_checkpoint
from h2aseg.data.layouts import discover
from h2aseg.inference.predictor import Predictor, predict_cases
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
