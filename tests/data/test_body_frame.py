"""Position in the body's frame as input channels (data.body_coords): centre, coordinates, the pipelines,
and H2ASeg's branches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from h2aseg.config import ConfigError, DataConfig, ModelConfig
from h2aseg.data.body_frame import (
    body_centre,
    body_coordinates,
    body_midline,
    with_body_coordinates,
)
from h2aseg.data.preprocess import CaseGeometry, PreprocessedCase
from h2aseg.data.transforms import body_threshold, case_to_dict, model_input, train_transforms
from h2aseg.models.factory import branch_inputs, build_from_config, network_kwargs
from h2aseg.models.h2aseg import H2ASeg

SHAPE = (20, 12, 8)
SPACING = (4.0, 4.0, 5.0)


def _image() -> torch.Tensor:
    """CT body over x 3..15, y 2..9, z 0..7 (soft tissue 0.52, air 0), PET 0.05 there, a hot spot."""
    img = torch.zeros((2, *SHAPE))
    img[:, 3:16, 2:10] = torch.tensor([0.52, 0.05])[:, None, None, None]
    img[1, 5, 5:7, 3:5] = 0.8
    return img


def _case(img: torch.Tensor) -> PreprocessedCase:
    affine = np.diag([*SPACING, 1.0])
    g = CaseGeometry(affine, SHAPE, np.array([[0, 1], [1, 1], [2, 1]]), affine, SHAPE, affine, SHAPE)
    lab = np.zeros(SHAPE, np.uint8)
    lab[5, 5:7, 3:5] = 1
    return PreprocessedCase("c0", img.numpy(), lab, img[1].numpy() * 20, g)


def test_the_centre_is_the_mean_index_of_the_body_along_each_axis() -> None:
    assert body_centre(_image()[0], 0.2) == pytest.approx((9.0, 5.5, 3.5))
    assert body_midline(_image()[0], 0.2) == pytest.approx(9.0)
    assert body_centre(torch.zeros(SHAPE), 0.2) == pytest.approx((9.5, 5.5, 3.5))  # no body: the volume's
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        body_centre(_image(), 0.2)


def test_coordinates_are_distance_to_the_midline_and_offsets_from_the_centre_in_100_mm() -> None:
    c = body_coordinates(SHAPE, (9.0, 5.5, 3.5), SPACING)
    assert c.shape == (3, *SHAPE) and c.dtype == torch.float32
    assert c[0, 13, 0, 0] == pytest.approx(0.16) and c[0, 5, 0, 0] == pytest.approx(0.16)  # |x - 9| * 4 mm
    assert c[0, 9, 4, 2] == 0
    assert c[1, 0, 2, 0] == pytest.approx(-0.14) and c[2, 0, 0, 7] == pytest.approx(0.175)
    with pytest.raises(ValueError, match="spacing must be positive"):
        body_coordinates(SHAPE, (9.0, 5.5, 3.5), (4.0, 0.0, 5.0))


def test_a_voxel_and_its_mirror_image_share_their_coordinates_and_no_other_voxel_does() -> None:
    """What attention would match on: the partner at 2m - x carries the same three values."""
    c = with_body_coordinates(_image(), 0.2, SPACING)[2:]
    x, y, z = 5, 6, 4
    same = torch.all(torch.isclose(c, c[:, x, y, z][:, None, None, None]), dim=0).nonzero().tolist()
    assert sorted(same) == [[5, 6, 4], [13, 6, 4]]  # 2 x 9 - 5 = 13


def test_coordinates_commute_with_flips() -> None:
    """Left-right, the coordinates of a flipped image are the flipped coordinates (the distance is
    unsigned); along y and z the offset changes sign. Flip TTA and the flip augmentation both flip the
    channels with the image, so what the network sees in prediction it has seen in training."""
    img = _image() + 0.01 * torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    for axis in (1, 2, 3):
        flipped = with_body_coordinates(torch.flip(img, dims=(axis,)), 0.2, SPACING)
        want = torch.flip(with_body_coordinates(img, 0.2, SPACING), dims=(axis,))
        if axis > 1:  # a flip along y or z negates that offset
            want[axis + 1] = -want[axis + 1]
        assert torch.allclose(flipped, want, atol=1e-6), axis


def test_model_input_and_training_crops_carry_the_whole_volumes_coordinates() -> None:
    """The coordinates are computed before any crop (the centre is the whole body's): a training crop's
    last three channels are the same window of the whole volume's coordinates."""
    img = _image()
    pc = _case(img)
    cfg = dataclasses.replace(DataConfig(), patch_size=(8, 8, 8), augment="paper", crops_per_case=4)
    both = dataclasses.replace(cfg, mirror_pet=True, body_coords=True)
    assert both.input_layout() == ("ct", "pet", "mirrored_pet", "body_dx", "body_dy", "body_dz")
    whole = model_input(pc, both)
    assert whole.shape == (6, *SHAPE)
    assert torch.equal(whole[3:], with_body_coordinates(img, body_threshold(cfg), SPACING)[2:])
    assert torch.equal(model_input(pc, dataclasses.replace(cfg, body_coords=True))[2:], whole[3:])
    t = train_transforms(both)
    t.set_random_state(0)
    for crop in t(case_to_dict(pc)):
        assert crop["image"].shape == (6, 8, 8, 8)
        hits = [
            (x, y)
            for x in range(SHAPE[0] - 7)
            for y in range(SHAPE[1] - 7)
            if torch.equal(whole[:, x : x + 8, y : y + 8], crop["image"])
        ]
        assert hits, "the crop is no window of the whole volume with its coordinates"


def test_both_branches_take_the_coordinates() -> None:
    layout = DataConfig(mirror_pet=True, body_coords=True).input_layout()
    assert branch_inputs(layout) == ((0, 3, 4, 5), (1, 2, 3, 4, 5))
    model = build_from_config(ModelConfig(channels=(2, 4, 4, 8, 8), window_size=(4, 4, 2)), layout=layout)
    assert model.encoder.conv1_ct.conv1.in_channels == 4 and model.encoder.conv1_pet.conv1.in_channels == 5
    model.eval()
    x = torch.rand(1, 6, 32, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model(x[:, [0, 3, 4, 5]], x[:, 1:]))
        moved = x.clone()
        moved[:, 4] += 0.5  # another place in the body: the output changes
        assert not torch.allclose(model(moved), out)
    with pytest.raises(ValueError, match=r"ct of shape \(B, 4, X, Y, Z\)"):
        model(x[:, :1], x[:, 1:])


def test_h2aseg_checks_its_branch_inputs() -> None:
    cfg = ModelConfig(channels=(2, 4, 4, 8, 8))
    kwargs = {k: v for k, v in network_kwargs(cfg).items() if k != "gradient_checkpointing"}
    with pytest.raises(ValueError, match=r"the PET branch must take distinct channels among 0\.\.2"):
        H2ASeg(**kwargs, in_channels=3, branch_inputs=((0,), (1, 3)))
    with pytest.raises(ValueError, match="the CT branch"):
        H2ASeg(**kwargs, in_channels=3, branch_inputs=((), (1, 2)))


def test_other_networks_refuse_the_coordinates() -> None:
    with pytest.raises(ConfigError, match=r"data\.body_coords: only network 'h2aseg'.*'swinunetr'"):
        network_kwargs(ModelConfig(name="swinunetr"), DataConfig(body_coords=True).input_layout())


def test_the_unit_scales_the_channels_everywhere() -> None:
    """``data.body_coords_unit_mm``: 1000 mm per unit gives a tenth of the default's values, in
    prediction's input and in training's crops alike."""
    pc = _case(_image())
    base = dataclasses.replace(DataConfig(), body_coords=True, patch_size=(8, 8, 8), augment="paper")
    metres = dataclasses.replace(base, body_coords_unit_mm=1000.0)
    assert torch.allclose(model_input(pc, metres)[2:], model_input(pc, base)[2:] / 10, atol=1e-7)
    assert torch.allclose(
        body_coordinates(SHAPE, (9.0, 5.5, 3.5), SPACING, unit_mm=1000.0),
        body_coordinates(SHAPE, (9.0, 5.5, 3.5), SPACING) / 10,
        atol=1e-7,
    )
    crops = train_transforms(metres)(case_to_dict(pc))
    assert max(float(c["image"][2:].abs().max()) for c in crops) < 0.1  # the body: within 100 mm
    with pytest.raises(ValueError, match="unit must be positive"):
        body_coordinates(SHAPE, (9.0, 5.5, 3.5), SPACING, unit_mm=0.0)
