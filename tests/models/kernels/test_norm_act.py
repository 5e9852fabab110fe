"""The fused instance norm + PReLU (+ conv) node equals the modules it replaces, values and gradients, and
the chooser (h2aseg.models.kernels) falls back to the modules where the node does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import h2aseg.models.kernels as kernels
import h2aseg.models.kernels.norm_act as norm_act
from h2aseg.models.blocks import norm
from h2aseg.models.kernels import norm_prelu, norm_prelu_conv, use_reference_kernels


def _with(module: nn.Module, **tensors: torch.Tensor) -> nn.Module:
    """``module`` with its named parameters replaced by plain tensors (gradcheck's inputs)."""
    for name, tensor in tensors.items():
        delattr(module, name)
        setattr(module, name, tensor)
    return module


def test_gradcheck_float64_two_prelus() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.25], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prelus = [_with(nn.PReLU(), weight=w) for w in (a, b)]
        return norm_act.fused_norm_prelu(x, nn.InstanceNorm3d(3), *prelus)

    assert torch.autograd.gradcheck(fn, (x, a, b))


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
    monkeypatch.setattr(kernels, "FUSED_DEVICES", set())
    (plain,) = norm_prelu(x, norm(3), prelu)
    assert plain.grad_fn is not None and "NormPReLUConv" not in type(plain.grad_fn).__name__
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def _branches() -> tuple[torch.Tensor, list[tuple[nn.PReLU, nn.Conv3d]]]:
    x = torch.randn(2, 3, 6, 5, 4)
    return x, [(nn.PReLU(), nn.Conv3d(3, 4, 3, padding=1)), (nn.PReLU(init=-0.2), nn.Conv3d(3, 2, 3, 2, 1))]


def _run(x: torch.Tensor, branches: list[tuple[nn.PReLU, nn.Conv3d]]) -> tuple[list[torch.Tensor], bool]:
    """Outputs and gradients of norm_prelu_conv, and whether the fused node computed them."""
    for m in (m for b in branches for m in b):
        m.zero_grad(set_to_none=True)
    xt = x.clone().requires_grad_()
    outs = norm_prelu_conv(xt, norm(3), *branches)
    fused = "NormPReLUConv" in type(outs[0].grad_fn).__name__
    sum(o.square().sum() for o in outs).backward()
    grads = [p.grad for b in branches for m in b for p in m.parameters()]
    return [o.detach() for o in outs] + [xt.grad] + grads, fused


@pytest.mark.parametrize("route", ["reference switch", "no private operators"])
def test_reference_route_equals_the_node(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forced reference path, and a PyTorch without the node's non-public operators, take the modules:
    same values and gradients as the node."""
    torch.manual_seed(8)
    x, branches = _branches()
    fast, fused = _run(x, branches)
    assert fused
    if route == "no private operators":
        monkeypatch.setattr(norm_act, "PRIVATE_OPS_AVAILABLE", False)
        ref, fused = _run(x, branches)
    else:
        with use_reference_kernels():
            ref, fused = _run(x, branches)
        assert not kernels.reference_kernels()  # restored on leaving the block
    assert not fused
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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


def test_gradcheck_float64_with_convs() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    a, b = (torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in (0.25, 0.1))
    w1 = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(11)  # the draw of fn's Dropout3d after this seed: some channels dropped, some kept (x2)
    keep = torch.nn.functional.dropout3d(torch.ones(2, 3, 1, 1, 1), 0.5, training=True)
    assert 0 < int((keep == 0).sum()) < keep.numel()

    def fn(x, a, w1, b1, b, w2):  # type: ignore[no-untyped-def]
        # second branch: channel dropout between PReLU and conv; narrow convs take the channels-last path
        conv1 = _with(nn.Conv3d(3, 4, 3, padding=1).double(), weight=w1, bias=b1)
        conv2 = _with(nn.Conv3d(3, 2, 3, stride=2, padding=1, bias=False).double(), weight=w2)
        first = (_with(nn.PReLU(), weight=a), conv1)
        second = (_with(nn.PReLU(), weight=b), nn.Dropout3d(0.5), conv2)
        torch.manual_seed(11)  # the same draw on every call
        return norm_act.fused_norm_prelu_conv(x, nn.InstanceNorm3d(3), first, second)

    assert torch.autograd.gradcheck(fn, (x, a, w1, b1, b, w2))


@pytest.mark.parametrize("autocast", [False, True])
def test_norm_prelu_conv_matches_modules(autocast: bool) -> None:
    """fp32: equal to the modules. bf16 autocast: no further from a float64 reference than the modules."""
    torch.manual_seed(4)
    # bf16-representable input: rounding it would move voxels across PReLU's kink, which changes the
    # gradient far more than any rounding inside the node
    x = (torch.randn(2, 4, 8, 6, 6) + 3).bfloat16().float()
    prelus = [nn.PReLU(), nn.PReLU(init=0.1)]
    convs = [nn.Conv3d(4, 6, 3, stride=2, padding=1), nn.Conv3d(4, 6, 3, stride=2, padding=1, bias=False)]
    grads = [torch.randn(2, 6, 4, 3, 3) for _ in convs]

    def run(mode: str) -> list[torch.Tensor]:
        for m in (*prelus, *convs):
            m.zero_grad(set_to_none=True)
            m.double() if mode == "float64" else m.float()
        xt = x.clone().double().requires_grad_() if mode == "float64" else x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast and mode != "float64"):
            if mode == "fused":
                outs = norm_prelu_conv(xt, norm(4), *zip(prelus, convs, strict=True))
            else:
                n = norm(4)(xt)
                outs = tuple(c(p(n)) for p, c in zip(prelus, convs, strict=True))
        sum((o.double() * g.double()).sum() for o, g in zip(outs, grads, strict=True)).backward()
        params = [p.weight.grad for p in prelus] + [convs[0].weight.grad, convs[0].bias.grad]
        return [t.detach().double() for t in (*outs, xt.grad, *params, convs[1].weight.grad)]

    ref = run("float64")
    for fused, modules, exact in zip(run("fused"), run("modules"), ref, strict=True):
        scale = exact.abs().max()
        err_fused = (fused - exact).abs().max() / scale
        err_modules = (modules - exact).abs().max() / scale
        if autocast:
            assert err_fused < 2 * err_modules + 1e-2, (err_fused, err_modules)
        else:
            assert err_fused < 1e-5 and err_modules < 1e-5, (err_fused, err_modules)


def test_norm_prelu_conv_falls_back_for_unusual_convs() -> None:
    x = torch.randn(1, 2, 6, 6, 6)
    conv = nn.Conv3d(2, 3, 3, padding=2, dilation=2)
    prelu = nn.PReLU()
    (out,) = norm_prelu_conv(x, norm(2), (prelu, conv))
    torch.testing.assert_close(out, conv(prelu(nn.InstanceNorm3d(2)(x))))


def test_sample_chunks_give_the_same_values_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    x = torch.randn(3, 4, 6, 6, 4)
    prelus = [nn.PReLU(), nn.PReLU(init=-0.2)]
    convs = [nn.Conv3d(4, 5, 3, padding=1), nn.Conv3d(4, 5, 3, stride=2, padding=1)]
    grads = [torch.randn(3, 5, 6, 6, 4), torch.randn(3, 5, 3, 3, 2)]

    def run() -> list[torch.Tensor]:
        for m in (*prelus, *convs):
            m.zero_grad(set_to_none=True)
        xt = x.clone().requires_grad_()
        outs = norm_prelu_conv(xt, norm(4), *zip(prelus, convs, strict=True))
        sum((o * g).sum() for o, g in zip(outs, grads, strict=True)).backward()
        params = [t.grad for m in (*prelus, *convs) for t in m.parameters()]
        return [o.detach() for o in outs] + [xt.grad] + params

    whole = run()
    monkeypatch.setattr(norm_act, "CHUNK_ELEMENTS", x[0].numel())  # one sample at a time
    for a, b in zip(run(), whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_input_block_with_channel_dropout_matches_modules(training: bool) -> None:
    """The level-1 block (conv, IN, PReLU, Dropout3d, conv) fused: same values and gradients for the same
    seed as the modules run one by one (the dropout mask is drawn as Dropout3d draws it)."""
    from h2aseg.models.blocks import InputResBlock

    torch.manual_seed(6)
    block = InputResBlock(1, 4, dropout=0.5).train(training)
    x = torch.randn(3, 1, 6, 5, 4)
    grad = torch.randn(3, 4, 6, 5, 4)
    results = []
    for fused in (True, False):
        block.zero_grad(set_to_none=True)
        xt = x.clone().requires_grad_()
        torch.manual_seed(7)
        if fused:
            out = block(xt)
        else:
            h = block.conv_block[0](xt)
            for layer in block.conv_block[1:]:
                h = layer(h)
            out = h + block.conv_skip(xt)
        (out * grad).sum().backward()
        results.append([out.detach(), xt.grad, *(p.grad for p in block.parameters())])
    # the first conv's bias feeds instance norm, so its exact gradient is 0 and both paths give float32
    # rounding noise of about 1e-5 there (summation order differs between CPUs): atol 1e-4
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
