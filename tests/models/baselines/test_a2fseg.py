"""A2FSeg baseline: outputs in training / eval mode, gradients, adaptive fusion, constructor checks."""

from __future__ import annotations

import pytest
import torch

import h2aseg.models.baselines.a2fseg as a2f
from h2aseg.models.registry import build_network

TINY = {"widths": (2, 4, 4, 8)}  # 3 down-samplings: sizes divisible by 8


@pytest.mark.parametrize("out_channels", [1, 2])
def test_forward_shapes_train_and_eval(out_channels: int) -> None:
    net = build_network("a2fseg", out_channels=out_channels, **TINY)
    x = torch.randn(2, 2, 16, 24, 16)
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 4  # final + deep supervision of the 3 decoder levels
    assert all(o.shape == (2, out_channels, 16, 24, 16) for o in outs)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, out_channels, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(out, net(x))


def test_at_most_five_training_outputs() -> None:
    net = build_network("a2fseg", widths=(2, 2, 2, 2, 2, 2), out_channels=1)  # 5 decoder levels
    assert len(net.average.heads) == 4
    outs = net(torch.randn(1, 2, 64, 32, 32))
    assert len(outs) == 5 and all(o.shape == (1, 1, 64, 32, 32) for o in outs)


def test_backward_gives_finite_gradients_to_every_parameter() -> None:
    net = build_network("a2fseg", out_channels=2, **TINY)
    outs = net(torch.randn(2, 2, 16, 16, 16))
    sum(w * o.square().mean() for w, o in zip((5, 4, 3, 2), outs, strict=True)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_adaptive_fusion_weights_sum_to_one_over_modalities() -> None:
    fusion = a2f.AdaptiveFusion(channels=3, out_channels=1)
    feats = [torch.randn(2, 3, 4, 4, 4) * 5 for _ in range(2)]
    avg = torch.randn(2, 3, 4, 4, 4)
    w = fusion.weights(feats, avg)
    assert w.shape == (2, 2, 3, 4, 4, 4)
    assert (w > 0).all() and (w < 1).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 3, 4, 4, 4))
    assert fusion(feats, avg).shape == (2, 1, 4, 4, 4)


def test_average_decoder_uses_the_modality_mean() -> None:
    torch.manual_seed(0)
    dec = a2f.AverageFusionDecoder([2, 4], out_channels=1, heads=1).eval()
    a = [torch.randn(1, 4, 2, 2, 2), torch.randn(1, 2, 4, 4, 4)]
    b = [torch.randn(1, 4, 2, 2, 2), torch.randn(1, 2, 4, 4, 4)]
    mean = [(x + y) / 2 for x, y in zip(a, b, strict=True)]
    with torch.no_grad():
        torch.testing.assert_close(dec([a, b])[0], dec([mean, mean])[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": (8,)}, r"widths must be >= 2 positive integers, e\.g\. \(32, 64, 128, 256, 320\)"),
        ({"widths": (4, 0)}, "widths must be >= 2 positive integers"),
        ({"out_channels": 0}, "out_channels must be >= 1"),
        ({"in_channels": 4}, "in_channels=4"),
    ],
)
def test_constructor_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_network("a2fseg", **{**TINY, **kwargs})


def test_input_not_divisible_is_refused() -> None:
    net = build_network("a2fseg", **TINY)
    message = r"\(20, 16, 16\) is not divisible by 8 in every dimension; use e\.g\. \(24, 16, 16\)"
    with pytest.raises(ValueError, match=message):
        net(torch.randn(1, 2, 20, 16, 16))


def test_too_small_training_input_and_bad_channels_are_refused() -> None:
    net = build_network("a2fseg", **TINY)
    with pytest.raises(ValueError, match="too small"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        net(torch.randn(1, 3, 16, 16, 16))
