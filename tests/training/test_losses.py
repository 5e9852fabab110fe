"""The deep-supervision loss of eq. (5): weights 6 - k, each level against the full-resolution label."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from h2aseg.training.losses import DeepSupervisedDiceCE, level_weights


def test_level_weights_are_six_minus_k() -> None:
    assert level_weights(5) == [5.0, 4.0, 3.0, 2.0, 1.0]


@pytest.mark.parametrize("out_channels", [1, 2, 3])
def test_weighted_sum_of_levels(out_channels: int) -> None:
    target = torch.randint(0, max(2, out_channels), (2, 1, 8, 8, 4))
    outs = [torch.randn(2, out_channels, 8, 8, 4) for _ in range(5)]
    loss = DeepSupervisedDiceCE(out_channels)
    binary = out_channels == 1
    base = DiceCELoss(sigmoid=binary, softmax=not binary, to_onehot_y=not binary, batch=True)
    tgt = (target > 0).float() if binary else target
    expected = sum((6 - k) * base(outs[k - 1], tgt) for k in range(1, 6))
    torch.testing.assert_close(loss(outs, target), expected)


def test_binary_loss_is_bce_plus_dice() -> None:
    target = (torch.rand(1, 1, 6, 6, 6) > 0.5).long()
    logits = torch.randn(1, 1, 6, 6, 6)
    p = torch.sigmoid(logits)
    t = target.float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
    dice = 1 - (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)
    torch.testing.assert_close(DeepSupervisedDiceCE(1)(logits, target), bce + dice, rtol=1e-5, atol=1e-6)


def test_finest_level_weighs_most() -> None:
    target = (torch.rand(1, 1, 8, 8, 8) > 0.8).long()
    good = target.float() * 20 - 10
    bad = -good
    loss = DeepSupervisedDiceCE(1)
    wrong_finest = loss([bad] + [good] * 4, target)
    wrong_coarsest = loss([good] * 4 + [bad], target)
    assert wrong_finest > wrong_coarsest
    torch.testing.assert_close(
        (wrong_finest - loss([good] * 5, target)) / (wrong_coarsest - loss([good] * 5, target)),
        torch.tensor(5.0),
        rtol=1e-4,
        atol=1e-4,
    )
