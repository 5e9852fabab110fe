"""A workaround for NaN weight gradients of bf16/fp16 3D convolutions on tiny maps (CPU, oneDNN).

With torch 2.13.0 on the CPU, the weight gradient of a 3x3x3 convolution in bf16 over a map of 2x2x2 or
2x2x1 voxels (H2ASeg's deepest level at 32^3 patches, and windows clipped to such sizes) contains NaN in
about half of the calls, with finite inputs, on one thread as on several (reproduced standalone; it
shows on AVX-512 BF16 CPUs, not on every machine). It was the cause of the occasional non-finite bf16
training steps. Maps that small cost nothing to convolve in float32, which is what these functions do.

This is a correctness fix, not a speed kernel: it applies on the reference path too
(:func:`h2aseg.models.kernels.use_reference_kernels` does not turn it off).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: maps with fewer voxels than this are convolved in float32 on the CPU under bf16/fp16
TINY_VOXELS = 32


def conv_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype to convolve ``x`` (``(B, C, X, Y, Z)``) in when the conv would run in ``dtype``: float32
    instead of bf16/fp16 for a map small enough to hit the bug on the CPU, else ``dtype`` unchanged."""
    tiny = x.device.type == "cpu" and math.prod(x.shape[2:]) < TINY_VOXELS
    return torch.float32 if tiny and dtype in (torch.bfloat16, torch.float16) else dtype


def conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; for a tiny map under bf16/fp16 (input or autocast) on the CPU, in float32, with the
    result in the dtype ``conv(x)`` would have had."""
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    if conv_dtype(x, dtype) == dtype:
        return conv(x)
    with torch.autocast(x.device.type, enabled=False):
        bias = None if conv.bias is None else conv.bias.float()
        y = F.conv3d(
            x.float(), conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )
    return y.to(dtype)
