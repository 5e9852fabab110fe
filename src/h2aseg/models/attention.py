"""Bi-directional spatial attention (BDSA, paper section 2.1, eq. 1) and the 3D windows of MCSA.

One *direction* of BDSA improves a target feature ``E_t`` with a source feature ``E_s`` (``C`` channels).
1x1x1 convs give ``Q_t, K_t, V_t`` and ``Q_s`` from the target, ``K_s, V_s`` from the source; with the
maps flattened to ``(C, HWD)``, eq. (1) reads::

    A_self  = V_s softmax(Q_s^T K_s / sqrt(C))^T      target queries over the source
    A_cross = V_t softmax(Q_t^T K_t / sqrt(C))^T      the target over itself
    E'_t    = Conv_3x3x3(concat(A_self, A_cross))                                  (paper)

(the names ``self``/``cross`` are the paper's). :class:`BiDirectionalSpatialAttention` holds both
directions (``sa_ct``: CT is the target, PET the source; ``sa_pet``: the reverse).

How the two attentions are combined is the main paper/released difference:
- ``combine="concat"`` (paper): concatenate, then a 3x3x3 conv (inside each window when windowed).
- ``combine="mean"`` (released code): ``Conv_1x1x1((A_self + A_cross) / 2)`` and dropout; optionally
  ``E_t + E'_t`` (``residual``). Its queries and keys have ``C / 4`` channels, and ``C`` in the scale is
  that width.

The softmax attention itself is computed by :func:`h2aseg.models.kernels.attention`, which chooses the
kernel: ``impl="fast"`` (default) the fastest exact route for each call (a recomputing autograd node when
training on the CPU or with attention dropout, cache-sized chunks for bf16/fp16 inference on the CPU,
PyTorch's ``scaled_dot_product_attention`` otherwise), ``impl="reference"`` the plain einsum/softmax
formulation of eq. 1. ``"sdpa"`` is a deprecated alias of ``"fast"``.
The 1x1x1 convs run as linear maps on window tokens, each map partitioned into windows once for both
directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.kernels import attention, conv3d

Triple = tuple[int, int, int]


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
# BDSA
# ----------------------------------------------------------------------------------------------------
def _projection(name: str) -> property:
    """A read-only paper name (eq. 1) for the projection conv stored as ``name`` (the released key)."""
    return property(lambda self: getattr(self, name), doc=f"The 1x1x1 conv stored as ``{name}``.")


class DirectionalAttention(nn.Module):
    """One direction of BDSA (paper eq. 1): the target attends to the source (``A_self``) and to itself
    (``A_cross``), and one conv combines the two.

    The projections are stored under the released code's names (state_dict keys) and read under the
    paper's: ``Q_t, K_t, V_t`` = ``{Q,K,V}_conv_target_target`` (from the target), ``Q_s`` =
    ``Q_conv_source_target`` (from the target too: the queries of ``A_self``), ``K_s, V_s`` =
    ``{K,V}_conv_source_target`` (from the source); ``out`` is the combining conv.
    """

    Q_t = _projection("Q_conv_target_target")
    K_t = _projection("K_conv_target_target")
    V_t = _projection("V_conv_target_target")
    Q_s = _projection("Q_conv_source_target")
    K_s = _projection("K_conv_source_target")
    V_s = _projection("V_conv_source_target")

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
        impl: str = "fast",
    ) -> torch.Tensor:
        """``target, source``: tokens ``(N, n, C)`` of ``E_t, E_s`` (:func:`tokens`: one row of tokens per
        window, or per sample without ``window``) of maps of spatial size ``shape``; ``valid`` is a bool
        ``(N, n)`` mask of non-padding voxels; ``impl``: :data:`~h2aseg.models.kernels.ATTENTION_IMPLS`.
        Returns the attention term ``E'_t`` as a map ``(B, C, X, Y, Z)`` (without the residual)."""
        c, d = self.channels, self.qk_channels

        def project(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
            # one projection per tensor (no slices of a shared one): contiguous q/k/v, no stacking copies
            # and no zero-filled slice gradients in backward
            return F.linear(x, conv.weight.view(conv.out_channels, c))[:, None]  # (N, 1, n, .)

        def attend(q: nn.Conv3d, k: nn.Conv3d, v: nn.Conv3d, keys: torch.Tensor) -> torch.Tensor:
            """``V softmax(Q^T K / sqrt(d))^T``: queries from the target, keys and values from ``keys``."""
            return attention(
                project(q, target),
                project(k, keys),
                project(v, keys),
                scale=1.0 / math.sqrt(d),
                key_mask=valid,
                dropout_p=self.attn_dropout if self.training else 0.0,
                impl=impl,
            )[:, 0]  # (N, n, C)

        # eq. (1); A_cross first: with attention dropout, the masks are drawn in this order
        a_cross = attend(self.Q_t, self.K_t, self.V_t, target)
        a_self = attend(self.Q_s, self.K_s, self.V_s, source)
        if self.combine == "mean":
            y = F.linear((a_cross + a_self).mul_(0.5), self.out.weight.view(c, c))
        else:
            y = torch.cat([a_self, a_cross], dim=-1)  # the paper's order: concat(A_self, A_cross)
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
    """BDSA: ``(E_ct, E_pet) -> (E'_ct, E'_pet)``, each modality the target of one direction (``sa_ct``:
    CT the target, PET the source; ``sa_pet``: the reverse), both run on the same inputs."""

    def __init__(self, channels: int, qk_channels: int, *, residual: bool = False, **kwargs: object) -> None:
        """``residual``: return ``ct + attention``, ``pet + attention`` (the released code's global BDSA at
        levels 4-5) instead of the attention terms; ``kwargs`` go to both :class:`DirectionalAttention`."""
        super().__init__()
        self.sa_ct = DirectionalAttention(channels, qk_channels, **kwargs)  # type: ignore[arg-type]
        self.sa_pet = DirectionalAttention(channels, qk_channels, **kwargs)  # type: ignore[arg-type]
        self.residual = residual
        #: attention kernel choice, :data:`~h2aseg.models.kernels.ATTENTION_IMPLS` (``H2ASeg`` sets it)
        self.impl = "fast"

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
