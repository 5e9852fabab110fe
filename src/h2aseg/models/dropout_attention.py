"""Softmax attention with attention-weight dropout (the released variant in training), as one autograd node.

The released code drops attention weights with p = 0.5. Written as separate operations under autocast the
route costs, per element of the ``(b, h, n, n)`` weight matrix, a scale pass, casts around the softmax, a
mask multiply, a division, and three saved copies (softmax output, mask, dropped weights); at level 2 with
the paper's 4 crops that matrix has 268 M elements. Here the scale is folded into the queries and the
dropout's ``1 / (1 - p)`` into the (small) output, the weights are dropped with one multiply by the mask,
and the node keeps only the softmax output and the mask's packed random bits: the dropped weights are
recomputed in backward.

The mask comes from the global RNG exactly as :func:`dropout_keep_mask` draws it, so activation
checkpointing (which restores the RNG state) recomputes the same mask, and the reference formulation
(:func:`h2aseg.models.attention.softmax_attention`) with the same seed gives the same result.
"""

from __future__ import annotations

import math

import torch


def _random_bits(n: int, p: float, device: torch.device) -> torch.Tensor:
    """The random draw behind a keep mask of ``n`` elements: packed bytes for p = 0.5, else a bool mask."""
    if p == 0.5:
        return torch.randint(0, 256, (-(-n // 8),), dtype=torch.uint8, device=device)
    return torch.rand(n, device=device) >= p


def _expand_bits(draw: torch.Tensor, p: float, shape: torch.Size) -> torch.Tensor:
    """Bool keep mask of ``shape`` from :func:`_random_bits`' draw."""
    n = math.prod(shape)
    if p == 0.5:
        bits = torch.arange(8, dtype=torch.uint8, device=draw.device)
        return ((draw[:, None] >> bits) & 1).view(torch.bool).view(-1)[:n].view(shape)
    return draw.view(shape)


def dropout_keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, True with probability ``1 - p``, from the global RNG (so activation checkpointing, which
    restores the RNG state, recomputes the same mask).

    For ``p = 0.5`` (the released code's rate) every random byte gives eight mask bits, about four times
    faster than one uniform draw per element.
    """
    return _expand_bits(_random_bits(math.prod(shape), p, device), p, shape)


class _DropoutSoftmaxAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        mask: torch.Tensor | None,
        p: float,
    ) -> torch.Tensor:
        b, h, n_q, d = q.shape
        n_k, d_v = k.shape[2], v.shape[-1]
        with torch.autocast(device_type=q.device.type, enabled=False):
            dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
            qs = (q.to(dtype) * scale).reshape(b * h, n_q, d)
            k2 = k.to(dtype).reshape(b * h, n_k, d)
            v2 = v.to(dtype).reshape(b * h, n_k, d_v)
            scores = torch.bmm(qs, k2.transpose(1, 2))
            if mask is not None:
                scores.view(b, h, n_q, n_k).masked_fill_(~mask, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            del scores
            draw = _random_bits(probs.numel(), p, probs.device)
            keep = _expand_bits(draw, p, probs.shape)
            out = torch.bmm(probs * keep, v2).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(qs, k2, v2, probs, draw)
        ctx.scale, ctx.p = scale, p
        ctx.shapes = (q.shape, k.shape, v.shape)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out.view(b, h, n_q, d_v)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        qs, k2, v2, probs, draw = ctx.saved_tensors
        keep = _expand_bits(draw, ctx.p, probs.shape)
        g = grad_out.reshape(v2.shape[0], -1, v2.shape[-1]).to(v2.dtype) * (1.0 / (1.0 - ctx.p))
        grad_v = torch.bmm((probs * keep).transpose(1, 2), g)
        grad_w = torch.bmm(g, v2.transpose(1, 2)).mul_(keep)  # d(loss)/d(probs)
        grad_s = torch._softmax_backward_data(grad_w, probs, -1, probs.dtype)
        del grad_w
        grad_q = torch.bmm(grad_s, k2).mul_(ctx.scale)
        grad_k = torch.bmm(grad_s.transpose(1, 2), qs)
        (sq, sk, sv), (tq, tk, tv) = ctx.shapes, ctx.dtypes
        return (
            grad_q.view(sq).to(tq),
            grad_k.view(sk).to(tk),
            grad_v.view(sv).to(tv),
            None,
            None,
            None,
        )


def dropout_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None,
    p: float,
) -> torch.Tensor:
    """``dropout(softmax(q k^T * scale), p) v`` with a :func:`dropout_keep_mask` mask; ``(b, h, n, d)``
    tensors, ``mask`` bool broadcasting to ``(b, h, n_q, n_k)`` (False = masked key), ``0 < p < 1``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    return _DropoutSoftmaxAttention.apply(q, k, v, scale, mask, p)
