"""Modality-Cooperative Spatial Attention (MCSA, paper section 2.1).

``(E_ct, E_pet) -> (F_ct, F_pet)``, each ``(B, C, X, Y, Z)``:

1. Inter-window attention: each modality's windows are pooled to one token by a conv whose kernel and
   stride equal the window (``win_merge_ct``/``win_merge_pet``), BDSA runs over the tokens, and trilinear
   up-sampling brings the result back to the map size.
2. Intra-window attention: the maps are partitioned into windows, BDSA runs inside each, and the windows
   are put back in order.

Each stage is added to its input (identity residual). The paper's text does not spell the residuals out,
but without them the intra-window stage would only see the up-sampled token map and fine detail would
be lost; the released code has them, followed by InstanceNorm -> PReLU (``norm_act=True``).

Maps that a window does not divide are zero-padded at the far end and cropped back (padded voxels are
masked out of the keys); a window larger than the map is clipped to it. In the released code the pooling
window is cubic with side ``min(window)`` (``pool_window``), not the attention window.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from h2aseg.models.attention import (
    BiDirectionalSpatialAttention,
    Triple,
    clip_window,
    pad_to_multiple,
    valid_window_mask,
)
from h2aseg.models.blocks import NormAct, upsample


class IntraWindowAttention(nn.Module):
    """BDSA inside each window of the (padded) maps, then windows reversed and cropped."""

    def __init__(self, channels: int, qk_channels: int, window: Triple, **kwargs: object) -> None:
        super().__init__()
        self.window = window
        self.sa = BiDirectionalSpatialAttention(channels, qk_channels, **kwargs)

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(ct.shape[2:])
        win = clip_window(self.window, shape)
        valid = valid_window_mask(shape, win, ct.shape[0], ct.device)  # type: ignore[arg-type]
        out_ct, out_pet = self.sa(pad_to_multiple(ct, win), pad_to_multiple(pet, win), win, valid)
        sx, sy, sz = shape
        return out_ct[..., :sx, :sy, :sz], out_pet[..., :sx, :sy, :sz]


class MCSA(nn.Module):
    """Inter-window then intra-window bi-directional attention between CT and PET features."""

    def __init__(
        self,
        channels: int,
        window: Triple = (8, 8, 4),
        *,
        pool_window: Triple | None = None,
        qk_channels: int | None = None,
        combine: str = "concat",
        norm_act: bool = False,
        align_corners: bool = False,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = tuple(window)
        self.pool_window = tuple(pool_window) if pool_window is not None else self.window
        qk = qk_channels if qk_channels is not None else channels
        kw = {"combine": combine, "attn_dropout": attn_dropout, "dropout": dropout}
        self.win_merge_ct = nn.Conv3d(channels, channels, self.pool_window, stride=self.pool_window)
        self.win_merge_pet = nn.Conv3d(channels, channels, self.pool_window, stride=self.pool_window)
        self.inter_window_attention = BiDirectionalSpatialAttention(channels, qk, **kw)
        self.intra_window_attention = IntraWindowAttention(channels, qk, self.window, **kw)  # type: ignore[arg-type]
        self.norm_act = norm_act
        if norm_act:
            self.IR_ct1, self.IR_pet1 = NormAct(channels), NormAct(channels)
            self.IR_ct2, self.IR_pet2 = NormAct(channels), NormAct(channels)
        self.align_corners = align_corners

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ct, pet``: ``(B, C, X, Y, Z)`` -> ``(F_ct, F_pet)`` of the same shape."""
        sx, sy, sz = ct.shape[2:]
        # inter-window: pool each window to a token, attend across tokens, up-sample back
        ct_p = pad_to_multiple(ct, self.pool_window)  # type: ignore[arg-type]
        pet_p = pad_to_multiple(pet, self.pool_window)  # type: ignore[arg-type]
        tok_ct, tok_pet = self.inter_window_attention(self.win_merge_ct(ct_p), self.win_merge_pet(pet_p))
        size = tuple(ct_p.shape[2:])
        up_ct = upsample(tok_ct, size, self.align_corners)
        up_pet = upsample(tok_pet, size, self.align_corners)
        ct1 = ct + up_ct[..., :sx, :sy, :sz]
        pet1 = pet + up_pet[..., :sx, :sy, :sz]
        if self.norm_act:
            ct1, pet1 = self.IR_ct1(ct1), self.IR_pet1(pet1)
        # intra-window: attention inside each window
        loc_ct, loc_pet = self.intra_window_attention(ct1, pet1)
        ct2, pet2 = ct1 + loc_ct, pet1 + loc_pet
        if self.norm_act:
            ct2, pet2 = self.IR_ct2(ct2), self.IR_pet2(pet2)
        return ct2, pet2
