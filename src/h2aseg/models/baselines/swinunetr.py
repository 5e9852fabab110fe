"""SwinUNETR baseline: MONAI's ``SwinUNETR`` with two input channels (CT, PET), registered as ``"swinunetr"``.

Source: ``monai.networks.nets.SwinUNETR`` (``monai/networks/nets/swin_unetr.py``; Hatamizadeh et al.,
BrainLes 2021), built as baselines.md A4 suggests for the paper's "SwinUNETR" comparison:
``SwinUNETR(in_channels=2, out_channels=2, feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
window_size=7, use_v2=False)``.

What differs: CT and PET enter as two channels of one input (``in_channels`` fixed at 2); ``out_channels``
defaults to 2 and the trainer passes ``model.out_channels``; one logit map; trained from scratch (no
self-supervised pre-trained weights); MONAI's state_dict keys (the adapter subclasses SwinUNETR).
MONAI 1.5 removed ``img_size`` (any input size divisible by ``patch_size**5 = 32`` works; windows larger
than a feature map are clipped), so passing one is refused with an explanation. Checked with a
``ValueError`` naming the sizes: ``feature_size`` divisible by 12 when the network is built, every input
size divisible by 32 at every forward (MONAI's own check, with the next size that works added), and not
32x32x32 alone (a 1x1x1 bottleneck, which instance norm cannot normalise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import SwinUNETR

from h2aseg.models.baselines._common import (
    IN_CHANNELS,
    SPATIAL_DIMS,
    check_sized_input,
    fixed_layout,
    is_instance_norm,
)
from h2aseg.models.registry import register_network


@register_network("swinunetr")
class SwinUNETR3D(SwinUNETR):
    """MONAI ``SwinUNETR`` on ``(B, 2, X, Y, Z)`` (CT, PET) returning ``(B, out_channels, X, Y, Z)`` logits.

    Args:
        out_channels: output channels (1: sigmoid, 2: softmax, more: classes).
        feature_size, depths, num_heads, window_size, use_v2: as MONAI's ``SwinUNETR`` (defaults:
            baselines.md A4; ``feature_size`` must be divisible by 12).
        **kwargs: any further keyword of MONAI's ``SwinUNETR`` (``patch_size``, ``drop_rate``,
            ``use_checkpoint``, ...), except the removed ``img_size``.
    """

    network_name = "swinunetr"

    def __init__(
        self,
        out_channels: int = 2,
        *,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        use_v2: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs = fixed_layout(self.network_name, kwargs)
        if "img_size" in kwargs:
            raise ValueError(
                f"{self.network_name}: img_size {kwargs['img_size']!r} is not a SwinUNETR argument since "
                "MONAI 1.5; drop it (any input size divisible by 32 works)"
            )
        if feature_size < 12 or feature_size % 12:
            fix = max(12, -(-feature_size // 12) * 12)
            raise ValueError(
                f"{self.network_name}: feature_size {feature_size} is not a positive multiple of 12; "
                f"use e.g. feature_size {fix}"
            )
        super().__init__(
            in_channels=IN_CHANNELS,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            use_v2=use_v2,
            spatial_dims=SPATIAL_DIMS,
            **kwargs,
        )
        divisor = int(self.patch_size) ** 5
        self.size_divisor = (divisor, divisor, divisor)
        self._instance_norm = is_instance_norm(kwargs.get("norm_name", "instance"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)``; every spatial size must be divisible by 32."""
        check_sized_input(self.network_name, x, self.size_divisor, self._instance_norm)
        return super().forward(x)
