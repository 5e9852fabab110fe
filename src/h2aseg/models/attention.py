"""Bi-directional spatial attention (BDSA, paper eq. 1) and 3D window utilities.

One *direction* of BDSA improves a target feature ``E_t`` with a source feature ``E_s``:
1x1x1 convs give ``Q_tt, K_tt, V_tt, Q_st`` from the target and ``K_st, V_st`` from the source; two
softmax attentions over the spatial positions follow, target->target and target-queries-over-source.
:class:`BiDirectionalSpatialAttention` holds both directions (``sa_ct``: CT is the target, PET the
source; ``sa_pet``: the reverse).

How the two attention results are combined is the main paper/released difference:
- ``combine="concat"`` (paper): concatenate, then a 3x3x3 conv (inside each window when windowed).
- ``combine="mean"`` (released code): average, then a 1x1x1 conv and dropout; optionally a residual.

Which kernel computes an attention is decided by :func:`attention` (PyTorch's fused kernel on CUDA and for
fp32 inference, the kernels of :mod:`h2aseg.models.attention_kernels` on the CPU and for attention
dropout); ``impl="reference"`` is the plain einsum/softmax formulation (:func:`softmax_attention`) used by
the tests as ground truth. The 1x1x1 convs run as linear maps on window tokens, each map partitioned into
windows once for both directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.attention_kernels import (
    chunked_attention,
    dropout_keep_mask,
    recomputed_attention,
    softmax_attention,
)
from h2aseg.models.tiny_conv import conv3d

__all__ = ["dropout_keep_mask", "softmax_attention"]  # re-exported: part of this module's contract

Triple = tuple[int, int, int]

ATTENTION_IMPLS = ("sdpa", "reference")


# ----------------------------------------------------------------------------------------------------
# windows and padding
# ----------------------------------------------------------------------------------------------------
def clip_window(window: Triple, shape: tuple[int, ...]) -> Triple:
    """A window no larger than the map along each axis."""
    return (min(window[0], shape[0]), min(window[1], shape[1]), min(window[2], shape[2]))


def pad_amounts(shape: tuple[int, ...], window: Triple) -> Triple:
    """Voxels to add at the end of each axis so that ``window`` divides ``shape``."""
    return tuple((-s) % w for s, w in zip(shape, window, strict=True))  # type: ignore[return-value]


def pad_to_multiple(x: torch.Tensor, window: Triple) -> torch.Tensor:
    """Zero-pad ``(B, C, X, Y, Z)`` at the far end of each axis up to a multiple of ``window``."""
    px, py, pz = pad_amounts(tuple(x.shape[2:]), window)
    if px == py == pz == 0:
        return x
    return F.pad(x, (0, pz, 0, py, 0, px))


def window_partition(x: torch.Tensor, window: Triple) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` -> ``(B * nW, wx*wy*wz, C)`` tokens, windows in raster order.

    The window must divide the map (see :func:`pad_to_multiple`).
    """
    b, c, sx, sy, sz = x.shape
    wx, wy, wz = window
    if sx % wx or sy % wy or sz % wz:
        raise ValueError(f"window {window} does not divide feature map {(sx, sy, sz)}; pad first")
    x = x.view(b, c, sx // wx, wx, sy // wy, wy, sz // wz, wz)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(-1, wx * wy * wz, c)


def window_reverse(tokens: torch.Tensor, window: Triple, shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wx*wy*wz, C)`` -> ``(B, C, X, Y, Z)``."""
    wx, wy, wz = window
    sx, sy, sz = shape
    nx, ny, nz = sx // wx, sy // wy, sz // wz
    c = tokens.shape[-1]
    x = tokens.view(-1, nx, ny, nz, wx, wy, wz, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(-1, c, sx, sy, sz)


def windows_to_maps(tokens: torch.Tensor, window: Triple) -> torch.Tensor:
    """``(N, wx*wy*wz, C)`` -> ``(N, C, wx, wy, wz)``: each window as a small map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *window)


def maps_to_windows(maps: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`windows_to_maps`."""
    return maps.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------
# which kernel (h2aseg.models.attention_kernels) computes an attention
# ----------------------------------------------------------------------------------------------------
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    key_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T * scale) v`` over the token axis.

    ``q, k``: ``(b, h, n, d_qk)``; ``v``: ``(b, h, n, d_v)``; ``key_mask``: bool ``(b, n)``, True where a
    key is a real voxel (False for padding). Returns ``(b, h, n, d_v)``.

    ``impl="sdpa"`` picks the fastest exact route (kernels in :mod:`h2aseg.models.attention_kernels`):
    PyTorch's fused kernel on CUDA and for fp32 inference; for training on the CPU and for
    attention-weight dropout anywhere, :func:`~h2aseg.models.attention_kernels.recomputed_attention`
    (one autograd node, chunked, scores recomputed in backward; the PyTorch kernels are several times slower
    on the CPU at H2ASeg's head widths, and their dropout draws one Bernoulli per element); for bf16/fp16
    inference on the CPU, softmax attention over chunks of windows small enough to stay in cache.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {ATTENTION_IMPLS}")
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if impl == "reference":
        return softmax_attention(q, k, v, scale, mask, dropout_p)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if dropout_p > 0.0 or (grad and q.device.type == "cpu"):
        return recomputed_attention(q, k, v, scale, mask, dropout_p)
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return chunked_attention(q, k, v, scale, mask)
    d_qk, d_v = q.shape[-1], v.shape[-1]
    if d_qk < d_v:  # zero channels change no dot product; equal widths let the fused kernel run
        q = F.pad(q, (0, d_v - d_qk))
        k = F.pad(k, (0, d_v - d_qk))
    return F.scaled_dot_product_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask, dropout_p=dropout_p, scale=scale
    )


# ----------------------------------------------------------------------------------------------------
# BDSA
# ----------------------------------------------------------------------------------------------------
class DirectionalAttention(nn.Module):
    """One direction of BDSA: the target attends to itself and to the source (paper eq. 1).

    Parameter names follow the released code (``Q_conv_target_target``, ``K_conv_source_target`` ...):
    ``*_target_target`` project the target; ``Q_conv_source_target`` projects the target too (the
    queries of the target-over-source attention); ``K/V_conv_source_target`` project the source.
    """

    def __init__(
        self,
        channels: int,
        qk_channels: int,
        *,
        combine: str = "concat",
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, d = channels, qk_channels
        self.Q_conv_target_target = nn.Conv3d(c, d, 1, bias=False)
        self.Q_conv_source_target = nn.Conv3d(c, d, 1, bias=False)
        self.K_conv_target_target = nn.Conv3d(c, d, 1, bias=False)
        self.K_conv_source_target = nn.Conv3d(c, d, 1, bias=False)
        self.V_conv_target_target = nn.Conv3d(c, c, 1, bias=False)
        self.V_conv_source_target = nn.Conv3d(c, c, 1, bias=False)
        if combine == "concat":
            self.out = nn.Conv3d(2 * c, c, 3, padding=1)
        elif combine == "mean":
            self.out = nn.Conv3d(c, c, 1, bias=False)
        else:
            raise ValueError(f"combine must be 'concat' or 'mean', got {combine!r}")
        self.combine = combine
        self.channels, self.qk_channels = c, d
        self.attn_dropout = attn_dropout
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        target: torch.Tensor,
        source: torch.Tensor,
        shape: tuple[int, int, int],
        window: Triple | None = None,
        valid: torch.Tensor | None = None,
        impl: str = "sdpa",
    ) -> torch.Tensor:
        """``target, source``: tokens ``(N, n, C)`` (:func:`tokens`: one row of tokens per window, or per
        sample without ``window``) of maps of spatial size ``shape``; ``valid`` is a bool ``(N, n)`` mask
        of non-padding voxels. Returns the attention term for the target as a map ``(B, C, X, Y, Z)``
        (without the residual)."""
        c, d = self.channels, self.qk_channels

        def project(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
            # one projection per tensor (no slices of a shared one): contiguous q/k/v, no stacking copies
            # and no zero-filled slice gradients in backward
            return F.linear(x, conv.weight.view(conv.out_channels, c))[:, None]  # (N, 1, n, .)

        def attend(q: nn.Conv3d, k: nn.Conv3d, v: nn.Conv3d, keys: torch.Tensor) -> torch.Tensor:
            return attention(
                project(q, target),
                project(k, keys),
                project(v, keys),
                scale=1.0 / math.sqrt(d),
                key_mask=valid,
                dropout_p=self.attn_dropout if self.training else 0.0,
                impl=impl,
            )[:, 0]  # (N, n, C)

        # target -> target, and target queries over the source
        a_tt = attend(self.Q_conv_target_target, self.K_conv_target_target, self.V_conv_target_target, target)
        a_ts = attend(self.Q_conv_source_target, self.K_conv_source_target, self.V_conv_source_target, source)
        if self.combine == "mean":
            y = F.linear((a_tt + a_ts).mul_(0.5), self.out.weight.view(c, c))
        else:
            # paper order: concat(A_self, A_cross) with A_self the source-based attention
            y = torch.cat([a_ts, a_tt], dim=-1)
            if valid is not None:
                y = y * valid[..., None].to(y.dtype)  # padding must not leak into the 3x3x3 conv
        if window is None:
            y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], *shape)
            if self.combine == "concat":
                y = conv3d(self.out, y)
        else:
            if self.combine == "concat":
                y = maps_to_windows(conv3d(self.out, windows_to_maps(y, window)))
            y = window_reverse(y, window, shape)
        return self.drop(y)


def tokens(x: torch.Tensor, window: Triple | None) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` -> ``(N, n, C)``: the tokens of each window (:func:`window_partition`), or of
    each sample (``window=None``)."""
    if window is None:
        return x.flatten(2).transpose(1, 2)
    return window_partition(x, window)


class BiDirectionalSpatialAttention(nn.Module):
    """BDSA: ``(ct, pet) -> (ct', pet')``, each improved by the other (``sa_ct``, ``sa_pet``)."""

    def __init__(self, channels: int, qk_channels: int, *, residual: bool = False, **kwargs: object) -> None:
        """``residual``: return ``ct + attention``, ``pet + attention`` (the released code's global BDSA at
        levels 4-5) instead of the attention terms; ``kwargs`` go to both :class:`DirectionalAttention`."""
        super().__init__()
        self.sa_ct = DirectionalAttention(channels, qk_channels, **kwargs)  # type: ignore[arg-type]
        self.sa_pet = DirectionalAttention(channels, qk_channels, **kwargs)  # type: ignore[arg-type]
        self.residual = residual
        self.impl = "sdpa"

    def forward(
        self,
        ct: torch.Tensor,
        pet: torch.Tensor,
        window: Triple | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ct, pet``: ``(B, C, X, Y, Z)``; with ``window``, attention runs inside each window (the window
        must divide the map; ``valid`` is a bool ``(B*nW, n)`` mask of non-padding voxels)."""
        shape: tuple[int, int, int] = tuple(ct.shape[2:])  # type: ignore[assignment]
        # both directions use both token sets: partition each map once
        t_ct, t_pet = tokens(ct, window), tokens(pet, window)
        y_ct = self.sa_ct(t_ct, t_pet, shape, window, valid, self.impl)
        y_pet = self.sa_pet(t_pet, t_ct, shape, window, valid, self.impl)
        if self.residual:
            y_ct, y_pet = ct + y_ct, pet + y_pet
        return y_ct, y_pet


def valid_window_mask(
    shape: tuple[int, int, int], window: Triple, batch: int, device: torch.device
) -> torch.Tensor | None:
    """Bool ``(batch * nW, wx*wy*wz)``: True at real voxels of the padded map, None if nothing is padded."""
    if not any(pad_amounts(shape, window)):
        return None
    ones = torch.ones((1, 1, *shape), device=device)
    m = window_partition(pad_to_multiple(ones, window), window)[..., 0] > 0
    return m.repeat(batch, 1)
