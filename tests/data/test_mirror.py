"""The mirrored-PET input channel (data.mirror_pet): midline, reflection, the pipelines, the network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from h2aseg.config import ConfigError, DataConfig, ModelConfig
from h2aseg.data.body_frame import body_midline
from h2aseg.data.mirror import mirror_across, with_mirrored_pet
from h2aseg.data.preprocess import CaseGeometry, PreprocessedCase
from h2aseg.data.transforms import body_threshold, case_to_dict, model_input, train_transforms
from h2aseg.models.factory import build_from_config

SHAPE = (20, 12, 8)


def _image(body: slice = slice(3, 16), spot: int = 5) -> torch.Tensor:
    """CT body over ``body`` along x (soft tissue 0.52, air 0), PET 0.05 there and a hot spot at x=spot."""
    img = torch.zeros((2, *SHAPE))
    img[0, body] = 0.52
    img[1, body] = 0.05
    img[1, spot, 5:7, 3:5] = 0.8
    return img


def test_midline_is_the_mean_x_of_the_body() -> None:
    ct = _image()[0]
    assert body_midline(ct, 0.2) == pytest.approx(9.0)  # body x = 3..15
    assert body_midline(_image(body=slice(3, 15))[0], 0.2) == pytest.approx(8.5)
    assert body_midline(torch.zeros(SHAPE), 0.2) == pytest.approx(9.5)  # no body: the volume's centre


@pytest.mark.parametrize("midline", [9.0, 8.5, 12.0, 4.0, 30.0])
def test_mirror_across_reflects_about_the_midline(midline: float) -> None:
    vol = torch.arange(SHAPE[0], dtype=torch.float32)[:, None, None].expand(SHAPE).clone() + 1
    out = mirror_across(vol, midline)
    for x in range(SHAPE[0]):
        source = round(2 * midline) - x
        want = source + 1 if 0 <= source < SHAPE[0] else 0  # vol[x] holds x + 1; 0 from outside
        assert torch.all(out[x] == want), (x, midline)


def test_the_mirrored_channel_puts_the_other_side_at_each_voxel() -> None:
    img = _image(spot=5)
    out = with_mirrored_pet(img, 0.2)
    assert out.shape == (3, *SHAPE) and torch.equal(out[:2], img)
    assert out[2, 13, 5, 3] == pytest.approx(0.8) and out[2, 5, 5, 3] == pytest.approx(0.05)  # 2 x 9 - 5 = 13
    with pytest.raises(ValueError, match=r"\(2, X, Y, Z\)"):
        with_mirrored_pet(out, 0.2)


def test_mirroring_commutes_with_a_left_right_flip() -> None:
    """Flip TTA and flip augmentation stay consistent: mirror(flip(image)) == flip(mirror(image))."""
    img = _image(spot=4) + 0.01 * torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    flipped = with_mirrored_pet(torch.flip(img, dims=(1,)), 0.2)
    assert torch.equal(flipped, torch.flip(with_mirrored_pet(img, 0.2), dims=(1,)))


def _case(img: torch.Tensor) -> PreprocessedCase:
    lab = np.zeros(SHAPE, np.uint8)
    lab[5, 5:7, 3:5] = 1
    g = CaseGeometry(np.eye(4), SHAPE, np.array([[0, 1], [1, 1], [2, 1]]), np.eye(4), SHAPE, np.eye(4), SHAPE)
    return PreprocessedCase("c0", img.numpy(), lab, img[1].numpy() * 20, g)


def test_model_input_adds_the_channel_only_when_asked() -> None:
    pc = _case(_image())
    cfg = DataConfig(mirror_pet=True)
    assert model_input(pc).shape == (2, *SHAPE) and model_input(pc, DataConfig()).shape == (2, *SHAPE)
    x = model_input(pc, cfg)
    assert torch.equal(x, with_mirrored_pet(torch.from_numpy(pc.image), body_threshold(cfg)))
    assert cfg.input_channels() == 3 and DataConfig().input_channels() == 2


def test_training_crops_carry_the_whole_volumes_mirror() -> None:
    """The mirror is taken before the crop (the midline is the whole body's): a crop's third channel is
    the same crop of the whole volume's mirrored PET."""
    img = _image()
    pc = _case(img)
    cfg = dataclasses.replace(
        DataConfig(), patch_size=(8, 8, 8), augment="paper", crops_per_case=4, mirror_pet=True
    )
    whole = with_mirrored_pet(img, body_threshold(cfg))
    t = train_transforms(cfg)
    t.set_random_state(0)
    for crop in t(case_to_dict(pc)):
        image = crop["image"]
        assert image.shape == (3, 8, 8, 8)
        hits = [
            (x, y)
            for x in range(SHAPE[0] - 7)
            for y in range(SHAPE[1] - 7)
            if torch.equal(whole[:, x : x + 8, y : y + 8], image)
        ]
        assert hits, "the crop is no window of the whole volume with its mirrored PET"


def test_h2aseg_with_the_mirrored_pet_takes_three_channels() -> None:
    layout = DataConfig(mirror_pet=True).input_layout()
    model = build_from_config(ModelConfig(channels=(2, 4, 4, 8, 8), window_size=(4, 4, 2)), layout=layout)
    assert (
        model.encoder.conv1_pet.conv1.in_channels == 2 and model.encoder.conv1_pet.skip_conv.in_channels == 2
    )
    assert model.encoder.conv1_ct.conv1.in_channels == 1
    model.eval()
    x = torch.rand(1, 3, 32, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 32, 32, 32)
        assert torch.equal(model(x), model(x[:, :1], x[:, 1:]))
    with pytest.raises(ValueError, match=r"\(B, 3, X, Y, Z\) with CT then PET then the mirrored PET"):
        model(x[:, :2])
    with pytest.raises(ConfigError, match="input channels must be CT, PET and any of"):
        build_from_config(ModelConfig(channels=(2, 4, 4, 8, 8)), layout=("ct", "pet", "dose"))


def test_other_networks_refuse_the_mirrored_pet() -> None:
    with pytest.raises(ConfigError, match=r"data\.mirror_pet: only network 'h2aseg'.*'unet3d'"):
        build_from_config(ModelConfig(name="unet3d"), layout=DataConfig(mirror_pet=True).input_layout())
