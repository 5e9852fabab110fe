"""SDB reconstruction: shapes, gradients, the similarity auxiliary loss, fusion maps, constructor checks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import h2aseg.models.baselines.sdb as sdb
from h2aseg.models.registry import build_network

TINY = {"widths": (2, 4, 4, 8)}  # 3 down-samplings: sizes divisible by 8
X_SHAPE = (2, 2, 16, 24, 16)


@pytest.mark.parametrize("variant", [{}, {"shared_down": "tied"}, {"fused_head": True}], ids=str)
@pytest.mark.parametrize("out_channels", [1, 2])
def test_forward_shape_train_and_eval(out_channels: int, variant: dict) -> None:
    net = build_network("sdb", out_channels=out_channels, **TINY, **variant)
    x = torch.randn(*X_SHAPE)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, out_channels, 16, 24, 16)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, out_channels, 16, 24, 16)


@pytest.mark.parametrize("variant", [{}, {"shared_down": "tied"}, {"fused_head": True}], ids=str)
def test_backward_gives_finite_gradients_to_every_parameter(variant: dict) -> None:
    net = build_network("sdb", out_channels=2, **TINY, **variant)
    loss = net(torch.randn(*X_SHAPE)).square().mean() + net.auxiliary_loss()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_output_is_the_mean_of_the_branch_logits() -> None:
    net = build_network("sdb", out_channels=2, **TINY)
    out = net(torch.randn(*X_SHAPE))
    pet, ct = net._branch_logits
    torch.testing.assert_close(out, (pet + ct) / 2)


@pytest.mark.parametrize("out_channels", [1, 2])
def test_auxiliary_loss_lifecycle(out_channels: int) -> None:
    net = build_network("sdb", out_channels=out_channels, similarity_weight=0.25, **TINY)
    assert net.auxiliary_loss() is None  # before any forward
    x = torch.randn(*X_SHAPE)
    net(x)
    aux = net.auxiliary_loss()
    assert aux is not None and aux.ndim == 0 and torch.isfinite(aux) and aux.requires_grad
    pet, ct = net._branch_logits
    prob = torch.sigmoid if out_channels == 1 else lambda t: torch.softmax(t, dim=1)
    torch.testing.assert_close(aux, 0.25 * F.mse_loss(prob(pet), prob(ct)))
    aux.backward()
    assert net.decoder_pet.head.weight.grad.abs().sum() > 0
    assert net.decoder_ct.head.weight.grad.abs().sum() > 0
    net.eval()
    assert net.auxiliary_loss() is None  # eval mode
    with torch.no_grad():
        net(x)
    net.train()
    assert net.auxiliary_loss() is None  # the last forward was in eval mode


def test_deepcopy_after_a_training_forward() -> None:
    net = build_network("sdb", **TINY)
    net(torch.randn(*X_SHAPE))
    twin = copy.deepcopy(net)
    assert twin.auxiliary_loss() is None and net.auxiliary_loss() is not None
    for a, b in zip(net.state_dict().values(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_fusion_map_weights_sum_to_one() -> None:
    fusion = sdb.FusionMap(channels=3, deeper=4)
    pet, ct, deeper = torch.randn(2, 3, 8, 8, 4), torch.randn(2, 3, 8, 8, 4), torch.randn(2, 4, 4, 4, 2)
    w = fusion.weights(pet, ct, deeper)
    assert w.shape == (2, 2, 8, 8, 4) and (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 8, 8, 4))
    torch.testing.assert_close(fusion(pet, ct, deeper), w[:, :1] * pet + w[:, 1:] * ct)


def test_shared_down_readings() -> None:
    joint = build_network("sdb", **TINY)
    tied = build_network("sdb", shared_down="tied", **TINY)
    assert joint.encoder.down[0][0].in_channels == 4  # [f_pet || f_ct]
    assert tied.encoder.down[0][0].in_channels == 2  # one branch at a time, same weights for both
    assert sum(p.numel() for p in tied.parameters()) < sum(p.numel() for p in joint.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": (8,)}, r"widths must be >= 2 positive integers, e\.g\. \(16, 32, 64, 128, 256\)"),
        ({"widths": (4, -1)}, "widths must be >= 2 positive integers"),
        ({"shared_down": "split"}, r"shared_down must be one of \('joint', 'tied'\)"),
        ({"similarity_weight": -1.0}, r"similarity_weight must be a finite number >= 0, e\.g\. 0\.5"),
        ({"similarity_weight": float("nan")}, "similarity_weight must be a finite number"),
        ({"out_channels": 0}, "out_channels must be >= 1"),
        ({"in_channels": 1}, "in_channels=1"),
    ],
)
def test_constructor_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_network("sdb", **{**TINY, **kwargs})


def test_bad_inputs_are_refused() -> None:
    net = build_network("sdb", **TINY)
    message = r"\(16, 12, 16\) is not divisible by 8 in every dimension; use e\.g\. \(16, 16, 16\)"
    with pytest.raises(ValueError, match=message):
        net(torch.randn(1, 2, 16, 12, 16))
    with pytest.raises(ValueError, match="too small"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        net(torch.randn(1, 1, 16, 16, 16))
