"""Further input channels end to end (data.mirror_pet, data.body_coords): a tiny H2ASeg trains on them and
predicts from its checkpoint with the same channels (the settings travel in the checkpoint's config)."""

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


@pytest.mark.parametrize(
    ("settings", "ct_inputs", "pet_inputs"),
    [
        (("data.mirror_pet=true", "model.use_mcsa=false"), 1, 2),  # PET + its mirror
        (("data.body_coords=true",), 4, 4),  # each image + three body-frame coordinates, MCSA on
    ],
)
def test_a_network_with_further_inputs_trains_and_predicts(
    tmp_path: Path, settings: tuple[str, ...], ct_inputs: int, pet_inputs: int
) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort")
    cfg = tiny_config(cohort, epochs=1, extra=settings)
    result = train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    for setting in settings:
        section, rest = setting.split(".", 1)
        field, value = rest.split("=")
        assert str(ckpt["config"][section][field]).lower() == value
    assert ckpt["model"]["encoder.conv1_ct.conv_block.0.weight"].shape[1] == ct_inputs
    assert ckpt["model"]["encoder.conv1_pet.conv_block.0.weight"].shape[1] == pet_inputs
    predictor = Predictor.from_checkpoint(result.last_checkpoint)
    case = discover(cohort)[0]
    written = predict_cases(predictor, [case], tmp_path / "pred")
    assert nib.load(written[0]).shape == nib.load(case.ct).shape


@pytest.mark.parametrize("setting", ["data.mirror_pet", "data.body_coords"])
def test_another_network_with_further_inputs_is_refused_before_any_case_is_read(setting: str) -> None:
    with pytest.raises(ConfigError, match=rf"{setting.replace('.', '[.]')}: only network 'h2aseg'.*'unet3d'"):
        check_settings(load_config("synthetic", ["model.name=unet3d", f"{setting}=true"]))
    check_settings(load_config("synthetic", [f"{setting}=true"]))  # H2ASeg takes it
