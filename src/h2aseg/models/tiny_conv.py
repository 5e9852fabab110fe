"""A workaround for NaN weight gradients of bf16/fp16 3D convolutions on tiny maps (CPU, oneDNN).

With torch 2.13.0 on the CPU, the weight gradient of a 3x3x3 convolution in bf16 over a map of 2x2x2 or
2x2x1 voxels (H2ASeg's deepest level at 32^3 patches, and windows clipped to such sizes) contains NaN in
about half of the calls, with finite inputs, on one thread as on several
(``tests/models/test_tiny_conv.py`` reproduces it). It was the cause of the occasional non-finite bf16
training steps. Maps that small cost nothing to convolve in float32, which is what these functions do.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: maps with fewer voxels than this are convolved in float32 on the CPU under bf16/fp16
TINY_VOXELS = 32


def tiny_on_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` (``(B, C, X, Y, Z)``, on the CPU) is a map small enough to hit the bug."""
    return x.device.type == "cpu" and math.prod(x.shape[2:]) < TINY_VOXELS


def conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; for a tiny map under bf16/fp16 (input or autocast) on the CPU, in float32, with the
    result in the dtype ``conv(x)`` would have had."""
    autocast = torch.is_autocast_enabled("cpu")
    low = x.dtype in (torch.bfloat16, torch.float16)
    if not (tiny_on_cpu(x) and (low or autocast)):
        return conv(x)
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    with torch.autocast("cpu", enabled=False):
        bias = None if conv.bias is None else conv.bias.float()
        y = F.conv3d(
            x.float(), conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )
    return y.to(dtype)
