"""The fused instance norm + PReLU node equals the modules it replaces, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import h2aseg.models.norm_act as norm_act
from h2aseg.models.blocks import norm
from h2aseg.models.norm_act import _InstanceNormPReLU, norm_prelu


def test_gradcheck_float64_two_prelus() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.25], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: _InstanceNormPReLU.apply(x, 1e-5, a, b), (x, a, b))


def _reference(x: torch.Tensor, prelus: list[nn.PReLU], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """InstanceNorm3d -> PReLU written with the plain modules, in float64."""
    x = x.detach().double().requires_grad_()
    copies = [nn.PReLU(init=p.weight.item()).double() for p in prelus]
    n = nn.InstanceNorm3d(x.shape[1])(x)
    outs = [p(n) for p in copies]
    sum((o * g.double()).sum() for o, g in zip(outs, grads, strict=True)).backward()
    return [o.detach() for o in outs] + [x.grad] + [p.weight.grad for p in copies]


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)]
)
def test_matches_modules_in_each_precision(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(1)
    # an offset far from zero and a skewed tail: the statistics must be float32 even for bf16 input
    x = torch.randn(2, 4, 6, 5, 4) * 3 + 40
    x[:, :, :2] += 6
    prelus = [nn.PReLU(), nn.PReLU(init=-0.3)]
    grads = [torch.randn_like(x), torch.randn_like(x)]
    xt = x.to(dtype).requires_grad_()
    ref = _reference(xt, prelus, grads)  # from the rounded input: only the node's own error counts
    outs = norm_prelu(xt, norm(4), *prelus)
    assert all(o.dtype == dtype for o in outs)
    sum((o.double() * g.double()).sum() for o, g in zip(outs, grads, strict=True)).backward()
    got = [*outs, xt.grad, prelus[0].weight.grad, prelus[1].weight.grad]
    for g, r in zip(got, ref, strict=True):
        err = (g.double() - r).abs().max() / r.abs().max()
        assert err < tol, (dtype, err)


def test_under_autocast_output_keeps_input_dtype() -> None:
    x = torch.randn(1, 2, 4, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = norm_prelu(x, norm(2), nn.PReLU())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_constant_map_gives_near_zeros_not_nan() -> None:
    x = torch.full((1, 2, 4, 4, 4), 1000.0, dtype=torch.bfloat16, requires_grad=True)
    (out,) = norm_prelu(x, norm(2), nn.PReLU())
    out.sum().backward()
    # (x - mean) / sqrt(eps) up to float32 rounding of mean * 316, as PyTorch's own instance norm gives
    assert out.abs().max() < 0.01 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out, norm(2)(x.detach()))


def test_falls_back_to_modules_off_the_fused_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 4, 3)
    prelu = nn.PReLU()
    (fused,) = norm_prelu(x, norm(3), prelu)
    monkeypatch.setattr(norm_act, "FUSED_DEVICES", set())
    (plain,) = norm_prelu(x, norm(3), prelu)
    assert plain.grad_fn is not None and "InstanceNormPReLU" not in type(plain.grad_fn).__name__
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_affine_norm_or_per_channel_prelu_take_the_module_path() -> None:
    x = torch.randn(1, 3, 4, 4, 4)
    affine = nn.InstanceNorm3d(3, affine=True)
    with torch.no_grad():
        affine.weight.fill_(2.0)
    (out,) = norm_prelu(x, affine, nn.PReLU(init=1.0))  # identity PReLU: only the norm shows
    torch.testing.assert_close(out, 2 * nn.InstanceNorm3d(3)(x))
    per_channel = nn.PReLU(3, init=1.0)
    (out,) = norm_prelu(x, norm(3), per_channel)
    torch.testing.assert_close(out, nn.InstanceNorm3d(3)(x))
