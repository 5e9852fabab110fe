"""Scaled dot-product (softmax) attention kernels; :mod:`h2aseg.models.kernels` chooses among them.

- :func:`softmax_attention`: the plain formulation (scores, mask, softmax, dropout, product), eq. (1)'s
  ``V softmax(Q^T K / sqrt(C))^T`` as written; the reference path and the ground truth of the tests.
- :func:`torch_attention`: PyTorch's fused ``scaled_dot_product_attention`` (CUDA, fp32 inference).
- :func:`chunked_attention`: bf16/fp16 inference on the CPU, a few windows at a time so that the scores stay
  in cache (PyTorch's fused CPU kernel is slow at H2ASeg's head widths of 4-16).
- :func:`recomputed_attention`: training on the CPU, and attention-weight dropout anywhere (the released
  variant, p = 0.5), as one autograd node. It works through the windows in cache-sized chunks, folds the
  scale into the queries and ``1 / (1 - p)`` into the mask values, and keeps only ``q, k, v`` and the
  dropout mask's packed random bits: scores and weights are recomputed chunk by chunk in backward (as
  flash attention does). At H2ASeg's head widths that is about 3x faster on the CPU than PyTorch's fused
  kernel (level-1 windows of the paper variant, bf16: 1.3 s against 3.9 s forward + backward for two
  crops), and, with dropout, replaces a route that kept three copies of the ``(b, h, n, n)`` weights
  (268 M elements at level 2 with the paper's 4 crops). Its backward calls PyTorch's non-public
  ``_softmax_backward_data``: where that is missing, :data:`PRIVATE_OPS_AVAILABLE` is False and the
  chooser takes the public routes instead.

The dropout mask comes from the global RNG exactly as :func:`dropout_keep_mask` draws it, so activation
checkpointing (which restores the RNG state) recomputes the same mask, and the reference with the same seed
gives the same result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: whether this PyTorch has the non-public operator :func:`recomputed_attention`'s backward calls
PRIVATE_OPS_AVAILABLE: bool = callable(getattr(torch, "_softmax_backward_data", None))

SCORE_CHUNK = 1 << 21  # attention-score elements materialised at once by the chunked paths (4 MB in bf16)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The plain formulation: ``softmax(q k^T * scale)`` (masked keys at -inf), dropout, times ``v``.

    The reference the fast paths are tested against, and the kernel of each chunk of
    :func:`chunked_attention`. ``mask`` broadcasts against the ``(b, h, n_q, n_k)`` scores.
    """
    scores = torch.einsum("bhid,bhjd->bhij", q * scale, k)  # scaling q: one pass fewer over the scores
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        keep = dropout_keep_mask(weights.shape, dropout_p, weights.device)
        weights = weights * keep / (1.0 - dropout_p)
    return torch.einsum("bhij,bhjd->bhid", weights, v)


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Inference-only softmax attention computed a few windows (or query rows) at a time."""
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    out = torch.empty((b, h, n_q, v.shape[-1]), dtype=v.dtype, device=v.device)
    per_item = h * n_q * n_k
    if per_item <= SCORE_CHUNK:
        spans = [(items, slice(None)) for items in _row_chunks(b, per_item)]
    else:  # one window alone is too large: split its queries
        rows = max(1, SCORE_CHUNK // (h * n_k))
        spans = [(slice(i, i + 1), slice(j, j + rows)) for i in range(b) for j in range(0, n_q, rows)]
    for items, queries in spans:
        chunk_mask = None if mask is None else mask[items]
        chunk = softmax_attention(q[items, :, queries], k[items], v[items], scale, chunk_mask)
        out[items, :, queries] = chunk
    return out


def _row_chunks(rows: int, per_row: int) -> list[slice]:
    """Consecutive slices of ``rows`` with about :data:`SCORE_CHUNK` elements each (at least one row)."""
    step = max(1, SCORE_CHUNK // per_row)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def torch_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """PyTorch's fused ``scaled_dot_product_attention`` (no dropout). Queries and keys narrower than the
    values are zero-padded to their width: zero channels change no dot product, and equal widths let the
    fused kernel run."""
    d_qk, d_v = q.shape[-1], v.shape[-1]
    if d_qk < d_v:
        q = F.pad(q, (0, d_v - d_qk))
        k = F.pad(k, (0, d_v - d_qk))
    return F.scaled_dot_product_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask, scale=scale
    )


# ----------------------------------------------------------------------------------------------------
# attention-weight dropout
# ----------------------------------------------------------------------------------------------------
def _random_bits(n: int, p: float, device: torch.device) -> torch.Tensor:
    """The random draw behind a keep mask of ``n`` elements: packed bytes for p = 0.5, else a bool mask."""
    if p == 0.5:
        return torch.randint(0, 256, (-(-n // 8),), dtype=torch.uint8, device=device)
    return torch.rand(n, device=device) >= p


def _mask_table(
    p: float, dropped: object, kept: object, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """What :func:`_mask_values` looks the random draw up in: for p = 0.5 a ``(256, 8)`` table, byte ->
    its eight mask values (one gather per eight weights, several times faster than expanding bits with
    shifts and multiplying by a bool mask); otherwise ``(dropped, kept)``."""
    values = torch.tensor([dropped, kept], dtype=dtype, device=device)
    if p != 0.5:
        return values
    bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1
    return values[bits]


def _mask_values(draw: torch.Tensor, p: float, start: int, count: int, table: torch.Tensor) -> torch.Tensor:
    """Flat keep mask of elements ``[start, start + count)`` of :func:`_random_bits`' draw, as the values
    of ``table`` (:func:`_mask_table`)."""
    if p != 0.5:
        return table.index_select(0, draw[start : start + count].long())
    first, last = start // 8, -(-(start + count) // 8)
    expanded = table.index_select(0, draw[first:last].long()).view(-1)
    offset = start - 8 * first
    return expanded[offset : offset + count]


def dropout_keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, True with probability ``1 - p``, from the global RNG (so activation checkpointing, which
    restores the RNG state, recomputes the same mask).

    For ``p = 0.5`` (the released code's rate) every random byte gives eight mask bits, about four times
    faster than one uniform draw per element.
    """
    n = math.prod(shape)
    table = _mask_table(p, False, True, torch.bool, device)
    return _mask_values(_random_bits(n, p, device), p, 0, n, table).view(shape)


class _RecomputedAttention(torch.autograd.Function):
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
            # True where a key is masked out, one row per (window, head)
            hidden = None if mask is None else ~mask.expand(b, h, 1, n_k).reshape(b * h, 1, n_k)
            draw = _random_bits(b * h * n_q * n_k, p, q.device) if p > 0 else None
            table = _keep_table(p, dtype, q.device)
            out = torch.empty((b * h, n_q, d_v), dtype=dtype, device=q.device)
            for rows in _row_chunks(b * h, n_q * n_k):
                probs = _probs(qs, k2, hidden, rows)
                if draw is not None:  # dropped weights at 0, kept ones scaled by 1 / (1 - p)
                    probs.mul_(_keep(draw, p, rows, probs, table))
                torch.bmm(probs, v2[rows], out=out[rows])
        ctx.save_for_backward(qs, k2, v2, draw, hidden)
        ctx.scale, ctx.p = scale, p
        ctx.shapes = (q.shape, k.shape, v.shape)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out.view(b, h, n_q, d_v)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        qs, k2, v2, draw, hidden = ctx.saved_tensors
        g = grad_out.reshape(v2.shape[0], -1, v2.shape[-1]).to(v2.dtype)
        grad_q, grad_k, grad_v = torch.empty_like(qs), torch.empty_like(k2), torch.empty_like(v2)
        table = _keep_table(ctx.p, qs.dtype, qs.device)
        for rows in _row_chunks(qs.shape[0], qs.shape[1] * k2.shape[1]):
            probs = _probs(qs, k2, hidden, rows)  # recomputed, identical to forward's
            keep = None if draw is None else _keep(draw, ctx.p, rows, probs, table)
            weights = probs if keep is None else probs * keep
            torch.bmm(weights.transpose(1, 2), g[rows], out=grad_v[rows])
            grad_w = torch.bmm(g[rows], v2[rows].transpose(1, 2))  # d(loss)/d(probs)
            if keep is not None:
                grad_w.mul_(keep)
            grad_s = torch._softmax_backward_data(grad_w, probs, -1, probs.dtype)
            torch.bmm(grad_s, k2[rows], out=grad_q[rows])
            torch.bmm(grad_s.transpose(1, 2), qs[rows], out=grad_k[rows])
        grad_q.mul_(ctx.scale)
        (sq, sk, sv), (tq, tk, tv) = ctx.shapes, ctx.dtypes
        return grad_q.view(sq).to(tq), grad_k.view(sk).to(tk), grad_v.view(sv).to(tv), None, None, None


def _probs(qs: torch.Tensor, k2: torch.Tensor, hidden: torch.Tensor | None, rows: slice) -> torch.Tensor:
    """``softmax(q k^T)`` of rows ``rows`` (queries pre-scaled), keys where ``hidden`` at -inf."""
    scores = torch.bmm(qs[rows], k2[rows].transpose(1, 2))
    if hidden is not None:
        scores.masked_fill_(hidden[rows], float("-inf"))
    return torch.softmax(scores, dim=-1)


def _keep_table(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """:func:`_mask_table` of the node's multipliers (0 dropped, ``1 / (1 - p)`` kept); None without
    dropout."""
    return _mask_table(p, 0.0, 1.0 / (1.0 - p), dtype, device) if p > 0 else None


def _keep(
    draw: torch.Tensor, p: float, rows: slice, probs: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """Multipliers of rows ``rows`` (``probs`` = that chunk's weights) from :func:`_keep_table`."""
    per_row = probs.shape[1] * probs.shape[2]
    return _mask_values(draw, p, rows.start * per_row, probs.numel(), table).view(probs.shape)


def recomputed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``dropout(softmax(q k^T * scale), p) v`` (the mask drawn as :func:`dropout_keep_mask` draws it) as one
    autograd node that keeps only ``q, k, v``; ``(b, h, n, d)`` tensors, ``mask`` bool of shape
    ``(b, 1, 1, n_k)`` (False = masked key), ``0 <= dropout_p < 1``."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {dropout_p}")
    return _RecomputedAttention.apply(q, k, v, scale, mask, dropout_p)
