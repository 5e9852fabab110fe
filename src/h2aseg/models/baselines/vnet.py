"""VNet baseline: MONAI's ``VNet`` with two input channels (CT, PET), registered as ``"vnet"``.

Source: ``monai.networks.nets.VNet`` (``monai/networks/nets/vnet.py``; Milletari et al., 2016), built as
baselines.md A4 suggests for the paper's "VNet" comparison: ``VNet(spatial_dims=3, in_channels=2,
out_channels=2)``, i.e. MONAI's defaults: fixed widths 16..256, ELU, batch norm, 5x5x5 convolutions,
``dropout_prob_down=0.5``, ``dropout_prob_up=(0.5, 0.5)`` (Dropout3d).

What differs: CT and PET enter as two channels of one input (``in_channels`` fixed at 2; MONAI needs
``16 % in_channels == 0``, which 2 meets); ``out_channels`` defaults to 2 and the trainer passes
``model.out_channels``; one logit map, no deep supervision; MONAI's state_dict keys (the adapter subclasses
VNet). Four downsamplings by 2 mean every input size must be divisible by 16: otherwise a ``ValueError``
names the size and the next size that works, instead of failing inside a concatenation.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import VNet

from h2aseg.models.baselines._common import IN_CHANNELS, SPATIAL_DIMS, check_input, fixed_layout
from h2aseg.models.registry import register_network

SIZE_DIVISOR = (16, 16, 16)  # four stride-2 down transitions


@register_network("vnet")
class VNet3D(VNet):
    """MONAI ``VNet`` on ``(B, 2, X, Y, Z)`` (CT, PET) returning ``(B, out_channels, X, Y, Z)`` logits.

    Args:
        out_channels: output channels (1: sigmoid, 2: softmax, more: classes).
        dropout_prob_down, dropout_prob_up: as MONAI's ``VNet`` (defaults 0.5 and (0.5, 0.5)).
        **kwargs: any further keyword of MONAI's ``VNet`` (``act``, ``dropout_dim``, ``bias``).
    """

    network_name = "vnet"

    def __init__(
        self,
        out_channels: int = 2,
        *,
        dropout_prob_down: float | None = 0.5,
        dropout_prob_up: tuple[float | None, float] = (0.5, 0.5),
        **kwargs: Any,
    ) -> None:
        kwargs = fixed_layout(self.network_name, kwargs)
        super().__init__(
            spatial_dims=SPATIAL_DIMS,
            in_channels=IN_CHANNELS,
            out_channels=out_channels,
            dropout_prob_down=dropout_prob_down,
            dropout_prob_up=tuple(dropout_prob_up),  # type: ignore[arg-type]
            **kwargs,
        )
        self.size_divisor = SIZE_DIVISOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)``; every spatial size must be divisible by 16."""
        check_input(self.network_name, x, self.size_divisor)
        return super().forward(x)
