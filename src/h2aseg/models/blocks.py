"""Residual 3D conv blocks and segmentation heads of the dual-branch ResUNet-3D (paper Fig. 1).

The paper builds H2ASeg on a ResUNet-3D without detailing its blocks; these follow the authors' released
code. Normalisation is InstanceNorm3d without affine parameters or running statistics, activation PReLU
with one parameter.

The layers live in ``nn.Sequential`` containers (``conv_block``, ``conv_skip``, ``conv``) only because
their indices are the released state_dict's keys (``conv_block.4.weight`` ...); each block names them
(``conv1``, ``norm1``, ``act1`` ...) with read-only properties, and its ``forward`` reads those names.
``InstanceNorm3d -> PReLU -> Conv3d`` runs through :func:`h2aseg.models.kernels.norm_prelu_conv`, which
chooses between the modules and a fused node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.kernels import norm_prelu, norm_prelu_conv


class InstanceNorm3dFP32(nn.InstanceNorm3d):
    """InstanceNorm3d computed in float32 even under bf16/fp16 autocast, cast back to the input dtype.

    CPU autocast runs instance norm in bf16, where the variance of a large, nearly constant map can come
    out negative and produce NaN; the statistics need float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.bfloat16, torch.float16):
            return super().forward(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def upsample(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Trilinear resize of ``(B, C, X, Y, Z)`` to ``size``. On the CPU, maps of 8+ channels go through
    PyTorch's channels-last kernel (measured 1.7x faster forward, 1.3x with backward, layout copies
    included); the result is in the usual layout either way."""
    if x.device.type == "cpu" and x.shape[1] >= 8:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        out = F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=align_corners)
        return out.contiguous()
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=align_corners)


def norm(channels: int) -> nn.Module:
    return InstanceNorm3dFP32(channels, affine=False, track_running_stats=False)


def conv3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def _layer(index: int, container: str | None = None) -> Any:
    """A read-only name for layer ``index`` of the ``nn.Sequential`` attribute ``container`` (of the module
    itself when None): the index stays the state_dict key, the name is what ``forward`` reads."""
    key = str(index)

    def get(self: nn.Module) -> nn.Module:
        seq = self if container is None else self._modules[container]
        return seq._modules[key]  # type: ignore[union-attr,return-value]

    where = "self" if container is None else container
    return property(get, doc=f"``{where}[{index}]``")


class InputResBlock(nn.Module):
    """Level-1 encoder block: ``conv1 -> norm1 -> act1 -> drop -> conv2``, plus a ``skip_conv`` shortcut
    (all 3x3x3 convs)."""

    conv1, norm1, act1, drop, conv2 = (_layer(i, "conv_block") for i in range(5))
    skip_conv = _layer(0, "conv_skip")

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            conv3(in_ch, out_ch), norm(out_ch), nn.PReLU(), nn.Dropout3d(dropout), conv3(out_ch, out_ch)
        )
        self.conv_skip = nn.Sequential(conv3(in_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # both paths open with a conv of x: one conv with the two weight sets stacked (one pass over x)
        conv1, skip = self.conv1, self.skip_conv
        both = F.conv3d(
            x, torch.cat([conv1.weight, skip.weight]), torch.cat([conv1.bias, skip.bias]), padding=1
        )
        h, s = both.split(conv1.out_channels, dim=1)
        (h,) = norm_prelu_conv(h, self.norm1, (self.act1, self.drop, self.conv2))
        return h.add_(s)


class PreActResBlock(nn.Module):
    """Pre-activation residual block (levels 2-5 and decoder): ``(B, in, S) -> (B, out, S / stride)``.

    ``norm1 -> act1 -> conv1 (stride) -> drop -> norm2 -> act2 -> conv2``, plus the shortcut
    ``skip_norm -> skip_act -> skip_conv (stride)``. ``norm1`` and ``skip_norm`` are the same
    parameter-free instance norm of ``x``, so it is computed once (and fused with the PReLUs and convs that
    follow, :func:`~h2aseg.models.kernels.norm_prelu_conv`).
    """

    norm1, act1, conv1, drop, norm2, act2, conv2 = (_layer(i, "conv_block") for i in range(7))
    skip_norm, skip_act, skip_conv = (_layer(i, "conv_skip") for i in range(3))

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            norm(in_ch),
            nn.PReLU(),
            conv3(in_ch, out_ch, stride),
            nn.Dropout3d(dropout),
            norm(out_ch),
            nn.PReLU(),
            conv3(out_ch, out_ch),
        )
        self.conv_skip = nn.Sequential(norm(in_ch), nn.PReLU(), conv3(in_ch, out_ch, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, s = norm_prelu_conv(x, self.norm1, (self.act1, self.conv1), (self.skip_act, self.skip_conv))
        (h,) = norm_prelu_conv(self.drop(h), self.norm2, (self.act2, self.conv2))
        return h.add_(s)  # h is a conv output that no backward needs: add in place


class SegHead(nn.Module):
    """``norm -> act -> to_logits`` (3x3x3 conv to ``out_channels`` logits)."""

    norm, act, to_logits = (_layer(i, "conv") for i in range(3))

    def __init__(self, in_ch: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(norm(in_ch), nn.PReLU(), conv3(in_ch, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_prelu_conv(x, self.norm, (self.act, self.to_logits))[0]


class NormAct(nn.Sequential):
    """``norm -> act`` (IN -> PReLU: the released MCSA's ``IR_*`` modules)."""

    norm, act = _layer(0), _layer(1)

    def __init__(self, channels: int) -> None:
        super().__init__(norm(channels), nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_prelu(x, self.norm, self.act)[0]
