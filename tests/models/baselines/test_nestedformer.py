"""NestedFormer baseline: shapes, gradients, the fixed input size and constructor checks (tiny widths)."""

from __future__ import annotations

import math

import pytest
import torch

import h2aseg.models.baselines.nestedformer as nf
from h2aseg.models.registry import build_network

TINY = {
    "img_size": (32, 32, 16),
    "features": (4, 4, 4, 8, 8, 4),
    "window_size": (2, 2, 1),
    "num_heads": 2,
    "num_tokens": 4,
}


def _net(**kwargs: object) -> torch.nn.Module:
    return build_network("nestedformer", **{**TINY, **kwargs})


@pytest.mark.parametrize("out_channels", [1, 2])
def test_forward_shape_train_and_eval(out_channels: int) -> None:
    net = _net(out_channels=out_channels)
    x = torch.randn(2, 2, 32, 32, 16)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, out_channels, 32, 32, 16)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, out_channels, 32, 32, 16)


def test_backward_gives_finite_gradients_to_every_parameter() -> None:
    net = _net(out_channels=1)
    net(torch.randn(2, 2, 32, 32, 16)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_wrong_input_size_is_refused() -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"built for img_size=\(32, 32, 16\).*got input \(32, 32, 32\)"):
        net(torch.randn(1, 2, 32, 32, 32))


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        _net()(torch.randn(1, 1, 32, 32, 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": (30, 32, 16)}, r"divisible by 16 .*e\.g\. \(32, 32, 16\)"),
        ({"img_size": (32, 32)}, "img_size must be 3 integers"),
        ({"features": (4, 4, 4, 8, 8)}, r"features must be 6 positive integers, e\.g\."),
        ({"features": (4, 1, 4, 8, 8, 4)}, r"features\[1:5\] must be >= 2"),
        ({"features": (4, 4, 4, 8, 7, 4)}, r"divisible by num_heads=2; e\.g\. features\[4\]=8"),
        ({"num_heads": 0}, "num_heads must be >= 1"),
        ({"window_size": (4, 2, 1)}, r"bottleneck size \(2, 2, 1\).*\[\[1, 2\], \[1, 2\], \[1\]\]"),
        ({"num_tokens": 0}, "num_tokens must be >= 1"),
        ({"out_channels": 0}, "out_channels must be >= 1"),
        ({"in_channels": 3}, "in_channels=3"),
    ],
)
def test_constructor_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _net(**kwargs)


def test_window_attention_single_window_matches_dense_attention() -> None:
    attn = nf.WindowAttention3d(dim=4, heads=2, window=(2, 2, 2))
    x = torch.randn(1, 2, 2, 2, 4)
    tokens = x.reshape(1, 8, 4)
    q, k, v = attn.qkv(tokens).view(1, 8, 3, 2, 2).permute(2, 0, 3, 1, 4)
    bias = attn.bias_table[:, attn.bias_index]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(2) + bias, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(1, 8, 4)).view(1, 2, 2, 2, 4)
    torch.testing.assert_close(attn(x), expected)


def test_window_attention_windows_are_independent() -> None:
    attn = nf.WindowAttention3d(dim=4, heads=2, window=(2, 2, 1))
    x = torch.randn(2, 4, 2, 3, 4)
    out = attn(x)
    for i in (0, 2):
        for k in range(3):
            window = x[:, i : i + 2, :, k : k + 1]
            torch.testing.assert_close(out[:, i : i + 2, :, k : k + 1], attn(window))


def test_relative_bias_depends_on_offset_only() -> None:
    attn = nf.WindowAttention3d(dim=4, heads=1, window=(2, 3, 2))
    index = attn.bias_index
    # tokens (0,0,0)->(0,1,0) and (1,1,1)->(1,2,1) share the offset (0, 1, 0); flat index = (x*3 + y)*2 + z
    assert index[0, 2] == index[9, 11]
    assert index[0, 2] != index[2, 0]


def test_tri_oriented_attention_mixes_within_the_plane_and_the_axis_only() -> None:
    attn = nf.TriOrientedAttention(dim=4, heads=2, size=(3, 4, 2), window=(1, 1, 1), position=True).eval()
    x = torch.randn(1, 3, 4, 2, 4)
    y = x.clone()
    y[0, 1, 2, 1] += 1.0  # one voxel changes
    with torch.no_grad():
        changed = (attn(x) - attn(y)).abs().sum(-1)[0] > 1e-6
    reach = torch.zeros(3, 4, 2, dtype=torch.bool)
    reach[1] = True  # its plane orthogonal to the first axis
    reach[:, 2, 1] = True  # its line along the first axis
    assert torch.equal(changed, reach)
