"""ResUNet-3D baseline: MONAI's ``UNet`` with residual units, registered as ``"resunet3d"``.

Source: ``monai.networks.nets.UNet`` (``monai/networks/nets/unet.py``) with ``num_res_units=2``, the
"enhanced version of UNet which has residual units" (Kerfoot et al., 2018) of MONAI's docstring, built as
baselines.md A4 suggests for the paper's "ResUNet-3D" comparison: ``UNet(spatial_dims=3, in_channels=2,
out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="instance")``.

What differs: the same as :mod:`h2aseg.models.baselines.unet3d` (early fusion of CT and PET as two
channels, ``out_channels`` from the config, one logit map, a clear error for sizes not divisible by 16).
It is not H2ASeg's own dual-branch ResUNet-3D of Table 2, which is
``build_network("h2aseg", use_mcsa=False, use_tamw=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from h2aseg.models.baselines.unet3d import UNet3D
from h2aseg.models.registry import register_network


@register_network("resunet3d")
class ResUNet3D(UNet3D):
    """MONAI ``UNet`` with ``num_res_units=2`` on ``(B, 2, X, Y, Z)`` (CT, PET); logits at input size.

    Args:
        out_channels: output channels (1: sigmoid, 2: softmax, more: classes).
        channels, strides, num_res_units, norm: as MONAI's ``UNet`` (defaults: baselines.md A4).
        **kwargs: any further keyword of MONAI's ``UNet``.
    """

    network_name = "resunet3d"

    def __init__(
        self,
        out_channels: int = 2,
        *,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "instance",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            out_channels, channels=channels, strides=strides, num_res_units=num_res_units, norm=norm, **kwargs
        )
