"""The float32 route for tiny maps under bf16/fp16 (a workaround for NaN bf16 conv weight gradients on the
CPU): values and gradients equal PyTorch's conv3d, for the maps and convs the network runs it on."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.blocks import norm
from h2aseg.models.kernels import norm_prelu_conv
from h2aseg.models.kernels.tiny_conv import TINY_VOXELS, conv3d, conv_dtype

# (map, conv): the deepest level at 32^3 / 32x32x16 patches (2x2x2, 2x2x1), attention windows clipped to
# such maps, the paper BDSA's combining conv (2C -> C), a strided block conv, a one-voxel map
CASES = [
    ((2, 2, 2), {"in_channels": 16, "out_channels": 8}),
    ((2, 2, 1), {"in_channels": 8, "out_channels": 8}),
    ((1, 2, 1), {"in_channels": 6, "out_channels": 3, "bias": False}),
    ((3, 3, 3), {"in_channels": 8, "out_channels": 4, "stride": 2}),
    ((1, 1, 1), {"in_channels": 4, "out_channels": 4}),
]


def _reference(conv: nn.Conv3d, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """torch's conv3d in float64: output, then gradients of input, weight (and bias)."""
    x64 = x.detach().double().requires_grad_()
    params = [p.detach().double().requires_grad_() for p in conv.parameters()]
    bias = params[1] if conv.bias is not None else None
    y = F.conv3d(x64, params[0], bias, conv.stride, conv.padding)
    y.backward(grad.double())
    return [y.detach(), x64.grad, *(p.grad for p in params)]


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize(("shape", "spec"), CASES)
def test_equals_conv3d_values_and_gradients(
    shape: tuple[int, int, int], spec: dict, autocast: bool, low: torch.dtype
) -> None:
    """Under autocast (float32 input and weights) or in the low dtype (input and weights), the result has
    the dtype the plain conv would give, is finite, and equals conv3d's values and gradients to float32
    accuracy plus the rounding of what is returned in the low dtype."""
    torch.manual_seed(0)
    assert torch.Size(shape).numel() < TINY_VOXELS
    conv = nn.Conv3d(kernel_size=3, padding=1, **spec)
    x = torch.randn(2, conv.in_channels, *shape)
    if not autocast:  # values representable in the low dtype: the reference sees the same numbers
        x = x.to(low).float()
        with torch.no_grad():
            for p in conv.parameters():
                p.copy_(p.to(low))
    run = conv if autocast else copy.deepcopy(conv).to(low)
    xt = (x if autocast else x.to(low)).requires_grad_()
    with torch.autocast("cpu", dtype=low, enabled=autocast):
        y = conv3d(run, xt)
    assert y.dtype == low
    grad = torch.randn(y.shape).to(low)
    y.backward(grad)
    got = [y, xt.grad, *(p.grad for p in run.parameters())]
    ref = _reference(conv, x, grad.float())
    for name, g, r in zip(["output", "input", "weight", "bias"], got, ref, strict=False):
        assert torch.isfinite(g).all(), name
        tol = 1e-5 if g.dtype == torch.float32 else (1e-2 if low == torch.bfloat16 else 2e-3)
        err = ((g.double() - r).abs().max() / r.abs().max()).item()
        assert err < tol, (name, g.dtype, err)


def test_weight_gradients_stay_finite_over_repeated_calls() -> None:
    """The bug made about half of the bf16 weight gradients on 2x2x2 maps NaN: through the route, none."""
    torch.manual_seed(0)
    for _ in range(30):
        conv = nn.Conv3d(32, 32, 3, padding=1)
        x = torch.randn(2, 32, 2, 2, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv3d(conv, x)
        y.float().backward(torch.randn(y.shape))
        assert torch.isfinite(conv.weight.grad).all()


def test_larger_maps_and_full_precision_are_left_to_the_plain_conv() -> None:
    torch.manual_seed(1)
    conv = nn.Conv3d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 4, 4, 2)  # 32 voxels: not tiny
    assert conv_dtype(x, torch.bfloat16) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(conv3d(conv, x), conv(x), rtol=0, atol=0)
    small = torch.randn(1, 4, 2, 2, 1)
    for dtype in (torch.float32, torch.float64):
        assert conv_dtype(small, dtype) == dtype
        c = nn.Conv3d(4, 4, 3, padding=1).to(dtype)
        torch.testing.assert_close(conv3d(c, small.to(dtype)), c(small.to(dtype)), rtol=0, atol=0)


def test_norm_node_convolves_tiny_maps_in_float32() -> None:
    torch.manual_seed(1)
    for _ in range(30):
        prelu, conv = nn.PReLU(), nn.Conv3d(32, 32, 3, padding=1)
        x = torch.randn(2, 32, 2, 2, 2).bfloat16()
        grads = []
        for dtype in (torch.bfloat16, torch.float32):
            conv.zero_grad(set_to_none=True)
            (y,) = norm_prelu_conv(x.to(dtype).requires_grad_(), norm(32), (prelu, conv))
            y.float().sum().backward()
            grads.append(conv.weight.grad)
        assert torch.isfinite(grads[0]).all()
        torch.testing.assert_close(grads[0], grads[1], rtol=0.05, atol=0.05)


def test_float64_on_tiny_maps_is_not_narrowed() -> None:
    """The float32 route is for bf16/fp16 only: float64 keeps its precision (gradcheck needs it)."""
    torch.manual_seed(2)
    prelu, conv = nn.PReLU().double(), nn.Conv3d(3, 2, 3, padding=1).double()
    x = torch.randn(2, 3, 2, 2, 1, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return norm_prelu_conv(x, norm(3), (prelu, conv))[0]

    assert fn(x).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (x,))
    assert conv3d(conv, x).dtype == torch.float64
