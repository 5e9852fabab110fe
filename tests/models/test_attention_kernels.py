"""The recomputing attention node (CPU training, attention dropout) equals the plain formulation, with the
same dropout mask for the same seed, whatever the chunking."""

from __future__ import annotations

import pytest
import torch

from h2aseg.models.attention import attention
from h2aseg.models.attention_kernels import dropout_keep_mask, recomputed_attention


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
    for impl in ("reference", "sdpa"):  # sdpa, training on the CPU, routes through the node
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(3)
        out = attention(*leaves, scale=0.4, key_mask=key_mask, dropout_p=p, impl=impl)
        assert ("RecomputedAttention" in type(out.grad_fn).__name__) == (impl == "sdpa")
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for fused, ref in zip(*results, strict=True):
        assert fused.dtype == dtype
        torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("chunk", [1, 7 * 7 * 3, 7 * 7 * 5])  # a row at a time; chunks splitting mask bytes
def test_chunks_give_the_same_result(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import h2aseg.models.attention_kernels as kernels

    torch.manual_seed(0)
    q, k, v = torch.randn(4, 2, 7, 3), torch.randn(4, 2, 7, 3), torch.randn(4, 2, 7, 5)
    key_mask = torch.rand(4, 7) > 0.3
    key_mask[:, 0] = True
    grad = torch.randn(4, 2, 7, 5)
    results = []
    for size in (1 << 21, chunk):
        monkeypatch.setattr(kernels, "SCORE_CHUNK", size)
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
