"""UNETR baseline: MONAI's ``UNETR`` with two input channels (CT, PET), registered as ``"unetr"``.

Source: ``monai.networks.nets.UNETR`` (``monai/networks/nets/unetr.py``; Hatamizadeh et al., WACV 2022),
built as baselines.md A4 suggests for the paper's "UNETR" comparison: ``UNETR(in_channels=2,
out_channels=2, img_size=(128, 128, 64), feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12,
proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0)``.

What differs: CT and PET enter as two channels of one input (``in_channels`` fixed at 2); ``out_channels``
defaults to 2 and the trainer passes ``model.out_channels``; one logit map; MONAI's state_dict keys (the
adapter subclasses UNETR). The ViT's patch size is fixed at 16 and its position embeddings are learned for
``img_size``, so the network only accepts inputs of exactly ``img_size``:
:func:`h2aseg.models.factory.build_from_config` sets ``img_size`` to the training patch size
(``data.patch_size``) unless ``model.extra`` gives one, and sliding-window prediction must use that ROI.
Checked with a ``ValueError`` naming the sizes: ``img_size`` divisible by 16 and ``hidden_size`` by
``num_heads`` when the network is built, the input size equal to ``img_size`` at every forward.
MONAI's transformer blocks hold a cross-attention LayerNorm that UNETR never uses; it stays in the
state_dict but is frozen (``requires_grad=False``), so that DDP does not wait for gradients it never gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import UNETR

from h2aseg.models.baselines._common import (
    IN_CHANNELS,
    SPATIAL_DIMS,
    as_triple,
    check_input,
    divisibility_error,
    fixed_layout,
)
from h2aseg.models.registry import register_network

PATCH_SIZE = 16  # MONAI's UNETR: ViT patches of 16x16x16


@register_network("unetr")
class UNETR3D(UNETR):
    """MONAI ``UNETR`` on ``(B, 2, *img_size)`` (CT, PET) returning ``(B, out_channels, *img_size)`` logits.

    Args:
        out_channels: output channels (1: sigmoid, 2: softmax, more: classes).
        img_size: the (only) input size, each divisible by 16; default (128, 128, 64).
        feature_size, hidden_size, mlp_dim, num_heads, proj_type, norm_name, res_block, dropout_rate:
            as MONAI's ``UNETR`` (defaults: baselines.md A4).
        **kwargs: any further keyword of MONAI's ``UNETR`` (``conv_block``, ``qkv_bias``, ...).
    """

    network_name = "unetr"

    def __init__(
        self,
        out_channels: int = 2,
        *,
        img_size: int | Sequence[int] = (128, 128, 64),
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        proj_type: str = "conv",
        norm_name: tuple | str = "instance",
        res_block: bool = True,
        dropout_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs = fixed_layout(self.network_name, kwargs)
        size = as_triple(img_size, f"{self.network_name}: img_size")
        err = divisibility_error(self.network_name, "img_size", size, (PATCH_SIZE,) * 3)
        if err is not None:
            raise err
        if num_heads < 1:
            raise ValueError(f"{self.network_name}: num_heads must be >= 1, got {num_heads}")
        if hidden_size % num_heads:
            fix = max(num_heads, -(-hidden_size // num_heads) * num_heads)
            raise ValueError(
                f"{self.network_name}: hidden_size {hidden_size} is not divisible by num_heads {num_heads}; "
                f"use e.g. hidden_size {fix}"
            )
        super().__init__(
            in_channels=IN_CHANNELS,
            out_channels=out_channels,
            img_size=size,
            feature_size=feature_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            proj_type=proj_type,
            norm_name=norm_name,
            res_block=res_block,
            dropout_rate=dropout_rate,
            spatial_dims=SPATIAL_DIMS,
            **kwargs,
        )
        self.img_size = size
        # MONAI's transformer blocks always hold a cross-attention LayerNorm, used only with cross-attention:
        # frozen, so that DDP (find_unused_parameters=False) does not wait for its gradient
        for block in self.vit.blocks:
            if not getattr(block, "with_cross_attention", True):
                block.norm_cross_attn.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *img_size)``; the input's spatial size must equal ``img_size``."""
        check_input(self.network_name, x, (1, 1, 1))
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"{self.network_name}: input spatial size {tuple(x.shape[2:])} differs from img_size "
                f"{self.img_size}, the only size this network accepts (learned position embeddings); "
                f"use {self.img_size} (for prediction: infer.roi_size), or build the network with another "
                "img_size (each divisible by 16)"
            )
        return super().forward(x)
