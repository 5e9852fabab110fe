"""UNet-3D baseline: MONAI's ``UNet`` with two input channels (CT, PET), registered as ``"unet3d"``.

Source: ``monai.networks.nets.UNet`` (``monai/networks/nets/unet.py``), built as baselines.md A4 suggests for
the paper's "UNet-3D" comparison: ``UNet(spatial_dims=3, in_channels=2, out_channels=2,
channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=0, norm="instance")``.

What differs from that call and from the original 3D U-Net (Çiçek et al., 2016):

- This is MONAI's UNet, not Çiçek's network: each encoder level is one strided 3x3x3 convolution
  (instance norm, PReLU) instead of two convolutions and max-pooling, and each decoder level one transposed
  convolution; the paper does not say which implementation it compared against.
- CT and PET enter as two channels of one input (early fusion); ``in_channels`` is fixed at 2.
- ``out_channels`` defaults to 2 (softmax, as A4); the trainer passes ``model.out_channels`` (often 1:
  sigmoid).
- One logit map, no deep supervision; the state_dict keys are MONAI's own (the adapter subclasses UNet).
- An input whose sizes are not divisible by the product of the strides (16) raises a ``ValueError`` naming
  the size and the next size that works, instead of failing inside a concatenation; so does an input
  whose deepest level would be a single voxel (16x16x16: instance norm needs more than one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import UNet

from h2aseg.models.baselines._common import (
    IN_CHANNELS,
    SPATIAL_DIMS,
    check_sized_input,
    fixed_layout,
    is_instance_norm,
    stride_divisor,
)
from h2aseg.models.registry import register_network


@register_network("unet3d")
class UNet3D(UNet):
    """MONAI ``UNet`` on ``(B, 2, X, Y, Z)`` (CT, PET) returning ``(B, out_channels, X, Y, Z)`` logits.

    Args:
        out_channels: output channels (1: sigmoid, 2: softmax, more: classes).
        channels, strides, num_res_units, norm: as MONAI's ``UNet`` (defaults: baselines.md A4).
        **kwargs: any further keyword of MONAI's ``UNet`` (``kernel_size``, ``act``, ``dropout``, ...).
    """

    network_name = "unet3d"

    def __init__(
        self,
        out_channels: int = 2,
        *,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2),
        num_res_units: int = 0,
        norm: tuple | str = "instance",
        **kwargs: Any,
    ) -> None:
        kwargs = fixed_layout(self.network_name, kwargs)
        if len(channels) != len(strides) + 1:
            raise ValueError(
                f"{self.network_name}: channels needs one entry more than strides, "
                f"got {len(channels)} channels and {len(strides)} strides"
            )
        super().__init__(
            spatial_dims=SPATIAL_DIMS,
            in_channels=IN_CHANNELS,
            out_channels=out_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm=norm,
            **kwargs,
        )
        self.size_divisor = stride_divisor(strides)
        self._instance_norm = is_instance_norm(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)``; sizes must be divisible by the strides' product."""
        check_sized_input(self.network_name, x, self.size_divisor, self._instance_norm)
        return super().forward(x)
