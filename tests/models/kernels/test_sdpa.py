"""Softmax attention kernels and their choice (h2aseg.models.kernels.attention): each fast route equals the
plain formulation, with the same dropout mask for the same seed, whatever the chunking; the reference
switch and a PyTorch without the node's non-public operator take the public routes."""

from __future__ import annotations

import pytest
import torch

import h2aseg.models.kernels as kernels
import h2aseg.models.kernels.sdpa as sdpa
from h2aseg.models.kernels import attention, use_reference_kernels
from h2aseg.models.kernels.sdpa import dropout_keep_mask, recomputed_attention


@pytest.mark.parametrize("p", [0.5, 0.2, 0.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 5e-2)]
)
def test_equals_reference_with_the_same_seed(p: float, masked: bool, dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    q, k = torch.randn(5, 2, 40, 3, dtype=dtype), torch.randn(5, 2, 40, 3, dtype=dtype)
    v = torch.randn(5, 2, 40, 8, dtype=dtype)
    key_mask = None
    if masked:
        key_mask = torch.rand(5, 40) > 0.3
        key_mask[:, 0] = True
    grad = torch.randn(5, 2, 40, 8, dtype=dtype)
    results = []
    for impl in ("reference", "fast"):  # fast, training on the CPU, routes through the node
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(3)
        out = attention(*leaves, scale=0.4, key_mask=key_mask, dropout_p=p, impl=impl)
        assert ("RecomputedAttention" in type(out.grad_fn).__name__) == (impl == "fast")
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for fused, ref in zip(*results, strict=True):
        assert fused.dtype == dtype
        torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("chunk", [1, 7 * 7 * 3, 7 * 7 * 5])  # a row at a time; chunks splitting mask bytes
def test_chunks_give_the_same_result(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 2, 7, 3), torch.randn(4, 2, 7, 3), torch.randn(4, 2, 7, 5)
    key_mask = torch.rand(4, 7) > 0.3
    key_mask[:, 0] = True
    grad = torch.randn(4, 2, 7, 5)
    results = []
    for size in (1 << 21, chunk):
        monkeypatch.setattr(sdpa, "SCORE_CHUNK", size)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(3)
        out = attention(*leaves, scale=0.4, key_mask=key_mask, dropout_p=0.5)
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for chunked, whole in zip(*results, strict=True):
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_gradcheck_with_a_fixed_mask() -> None:
    torch.manual_seed(1)
    q, k = torch.randn(2, 2, 12, 3, dtype=torch.float64), torch.randn(2, 2, 12, 3, dtype=torch.float64)
    v = torch.randn(2, 2, 12, 5, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[1, ..., -3:] = False

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(7)  # the same mask at every evaluation
        return recomputed_attention(q, k, v, 0.6, mask, 0.5)

    leaves = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_consumes_the_rng_like_the_reference(p: float) -> None:
    """Seeded runs and checkpointing rely on both routes leaving the RNG in the same state."""
    q = torch.randn(3, 2, 10, 4)
    torch.manual_seed(4)
    recomputed_attention(q, q, q, 0.5, None, p)
    after_node = torch.rand(3)
    torch.manual_seed(4)
    dropout_keep_mask(torch.Size([3, 2, 10, 10]), p, q.device)
    torch.testing.assert_close(after_node, torch.rand(3))


def test_rejects_a_probability_outside_zero_one() -> None:
    x = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="dropout probability"):
        recomputed_attention(x, x, x, 1.0, None, 1.0)
    with pytest.raises(ValueError, match="dropout probability"):
        recomputed_attention(x, x, x, 1.0, None, -0.1)


@pytest.mark.parametrize("d_qk", [3, 8])
def test_fast_equals_reference_kernel(d_qk: int) -> None:
    q, k = torch.randn(3, 2, 50, d_qk), torch.randn(3, 2, 50, d_qk)
    v = torch.randn(3, 2, 50, 8)
    mask = torch.rand(3, 50) > 0.3
    mask[:, 0] = True
    for m in (None, mask):
        ref = attention(q, k, v, scale=0.4, key_mask=m, impl="reference")
        fast = attention(q, k, v, scale=0.4, key_mask=m, impl="fast")
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1 << 21, 2 * 50 * 50, 2 * 50 * 7])  # whole, one window, query rows
def test_chunked_low_precision_inference_equals_reference(chunk: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sdpa, "SCORE_CHUNK", chunk)
    torch.manual_seed(1)
    q, k = torch.randn(3, 2, 50, 4), torch.randn(3, 2, 50, 4)
    v = torch.randn(3, 2, 50, 8)
    mask = torch.rand(3, 50) > 0.3
    mask[:, 0] = True
    for m in (None, mask):
        ref = attention(q, k, v, scale=0.4, key_mask=m, impl="reference")
        with torch.no_grad():
            fast = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=0.4, key_mask=m, impl="fast")
        assert fast.dtype == torch.bfloat16
        torch.testing.assert_close(fast.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_keep_mask_rate_and_shape(p: float) -> None:
    torch.manual_seed(0)
    mask = dropout_keep_mask(torch.Size([7, 3, 101]), p, torch.device("cpu"))
    assert mask.shape == (7, 3, 101) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - (1 - p)) < 0.03
    # neighbouring elements are independent (no repeated byte patterns along the last axis)
    flat = mask.flatten().float()
    assert abs((flat[1:] * flat[:-1]).mean().item() - (1 - p) ** 2) < 0.03


def test_attention_dropout_keeps_the_expectation_and_is_reproducible() -> None:
    torch.manual_seed(2)
    q, k, v = torch.randn(64, 2, 30, 4), torch.randn(64, 2, 30, 4), torch.randn(64, 2, 30, 8)
    clean = attention(q, k, v, scale=0.5, impl="fast")
    torch.manual_seed(5)
    a = attention(q, k, v, scale=0.5, dropout_p=0.5, impl="fast")
    torch.manual_seed(5)
    b = attention(q, k, v, scale=0.5, dropout_p=0.5, impl="fast")
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same mask (activation checkpointing)
    assert not torch.allclose(a, clean)
    # inverted dropout: averaged over many draws the output approaches the clean one
    draws = [attention(q, k, v, scale=0.5, dropout_p=0.5, impl="fast") for _ in range(200)]
    mean = torch.stack(draws).mean(0)
    assert (mean - clean).abs().mean() < 0.1 * clean.abs().mean()


def test_reference_kernel_is_softmax_attention() -> None:
    q, k, v = torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 3)
    weights = torch.softmax(q[0, 0] @ k[0, 0].T * 0.5, dim=-1)
    torch.testing.assert_close(attention(q, k, v, scale=0.5, impl="reference")[0, 0], weights @ v[0, 0])


def _training_step(dropout_p: float) -> tuple[list[torch.Tensor], str]:
    """Output and gradients of one seeded CPU training call, and the autograd node that produced it."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 20, 4), torch.randn(3, 2, 20, 4), torch.randn(3, 2, 20, 6)
    key_mask = torch.rand(3, 20) > 0.3
    key_mask[:, 0] = True
    leaves = [t.requires_grad_() for t in (q, k, v)]
    torch.manual_seed(3)
    out = attention(*leaves, scale=0.5, key_mask=key_mask, dropout_p=dropout_p)
    out.backward(torch.ones_like(out))
    return [out.detach(), *(t.grad for t in leaves)], type(out.grad_fn).__name__


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("route", ["reference switch", "no private operators"])
def test_public_routes_equal_the_node(p: float, route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, node = _training_step(p)
    assert "RecomputedAttention" in node
    if route == "no private operators":
        monkeypatch.setattr(sdpa, "PRIVATE_OPS_AVAILABLE", False)
        ref, node = _training_step(p)
    else:
        with use_reference_kernels():
            assert kernels.reference_kernels()
            ref, node = _training_step(p)
    assert "RecomputedAttention" not in node
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_impl_is_rejected() -> None:
    x = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="unknown attention implementation"):
        attention(x, x, x, scale=1.0, impl="flash")


def _route(
    monkeypatch: pytest.MonkeyPatch, q: torch.Tensor, *, dropout_p: float = 0.0, grad: bool = False
) -> str:
    """Which kernel ``impl="fast"`` calls for ``q``'s device and dtype (the kernels replaced by recorders)."""
    called: list[str] = []
    for name in ("softmax_attention", "recomputed_attention", "chunked_attention", "torch_attention"):
        monkeypatch.setattr(sdpa, name, lambda *a, _n=name, **kw: called.append(_n) or a[2])
    leaves = [q.clone().requires_grad_(grad) for _ in range(3)]
    with torch.set_grad_enabled(grad):
        attention(*leaves, scale=1.0, dropout_p=dropout_p, impl="fast")
    assert len(called) == 1
    return called[0]


def test_fast_routes_are_what_the_docstrings_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """``impl="fast"`` is PyTorch's fused kernel only for CUDA (here: a non-CPU device, ``meta``) without
    dropout and for float32 inference on the CPU; CPU training and dropout take the recomputing node."""
    monkeypatch.setattr(sdpa, "PRIVATE_OPS_AVAILABLE", True)
    cpu, other = torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2, device="meta")
    assert _route(monkeypatch, cpu, grad=True) == "recomputed_attention"  # CPU training
    assert _route(monkeypatch, cpu, grad=True, dropout_p=0.5) == "recomputed_attention"
    assert _route(monkeypatch, cpu) == "torch_attention"  # float32 inference on the CPU
    assert _route(monkeypatch, cpu.bfloat16()) == "chunked_attention"  # bf16 inference on the CPU
    assert _route(monkeypatch, cpu.half()) == "chunked_attention"
    assert _route(monkeypatch, other, grad=True) == "torch_attention"  # CUDA training without dropout
    assert _route(monkeypatch, other) == "torch_attention"  # CUDA inference
    assert _route(monkeypatch, other.bfloat16()) == "torch_attention"
    assert _route(monkeypatch, other, grad=True, dropout_p=0.5) == "recomputed_attention"  # dropout anywhere
    monkeypatch.setattr(sdpa, "PRIVATE_OPS_AVAILABLE", False)  # the public routes
    assert _route(monkeypatch, cpu, grad=True) == "torch_attention"
    assert _route(monkeypatch, cpu, grad=True, dropout_p=0.5) == "softmax_attention"
