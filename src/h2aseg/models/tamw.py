"""Target-Aware Modality Weighting (TAMW, paper section 2.2, eqs. 2-4).

At decoder level k, with skip features ``F_ct, F_pet`` (``C_k`` channels each), the up-sampled decoder
feature ``D~`` of level k+1 (``2 C_{k+1}`` channels) and the up-sampled foreground probability ``P~`` of
level k+1 (``(B, 1, X, Y, Z)``):

- paper (``variant="paper"``)::

    F      = concat(F_pet, F_ct, D~)
    F_fore = P~ * F,   F_back = (1 - P~) * F                          (2)
    W_fore = tanh(MLP(GAP(F_fore))), W_back = tanh(MLP(GAP(F_back)))  (3)
    F_enh  = F + W_fore * F_fore + W_back * F_back                    (4)

- released code (``variant="released"``): ``F = concat(F_ct, F_pet, D~)``; only the CT and PET parts are
  masked by ``P~`` (the decoder feature is not); ``F_enh = F + W_fore * F_fore - W_back * F_back``.

GAP is a global (adaptive) average over all voxels, so any input size works; the released code used an
``AvgPool3d`` whose kernel was the training patch size, which equals GAP at that size only.
The MLP (``fc1``: reduction 4, tanh, ``fc2``, tanh) gives one weight per channel.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ChannelWeights(nn.Module):
    """``(B, C)`` channel intensities -> ``(B, C)`` weights in (-1, 1): fc1 -> tanh -> fc2 -> tanh."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(torch.tanh(self.fc1(x))))


class TAMW(nn.Module):
    """Re-weights the concatenated skip and decoder features by foreground / background emphasis."""

    def __init__(self, skip_channels: int, dec_channels: int, *, variant: str = "paper", reduction: int = 4):
        super().__init__()
        if variant not in ("paper", "released"):
            raise ValueError(f"TAMW variant must be 'paper' or 'released', got {variant!r}")
        total = 2 * skip_channels + dec_channels
        self.CA_fore = ChannelWeights(total, reduction)
        self.CA_back = ChannelWeights(total, reduction)
        self.variant = variant
        self.last_weights: tuple[torch.Tensor, torch.Tensor] | None = None  # (W_fore, W_back) for analysis
        self.record = False

    def forward(
        self, f_ct: torch.Tensor, f_pet: torch.Tensor, dec: torch.Tensor, p_fore: torch.Tensor
    ) -> torch.Tensor:
        """Returns ``F_enh`` with ``2 C_k + 2 C_{k+1}`` channels at the level's resolution."""
        if self.variant == "paper":
            feat = torch.cat([f_pet, f_ct, dec], dim=1)
            fore, back = p_fore * feat, (1.0 - p_fore) * feat
        else:
            feat = torch.cat([f_ct, f_pet, dec], dim=1)
            fore = torch.cat([p_fore * f_ct, p_fore * f_pet, dec], dim=1)
            back = torch.cat([(1.0 - p_fore) * f_ct, (1.0 - p_fore) * f_pet, dec], dim=1)
        w_fore = self.CA_fore(fore.mean(dim=(2, 3, 4)))[..., None, None, None]
        w_back = self.CA_back(back.mean(dim=(2, 3, 4)))[..., None, None, None]
        if self.record:
            self.last_weights = (w_fore.flatten(1).detach(), w_back.flatten(1).detach())
        sign = 1.0 if self.variant == "paper" else -1.0
        return feat + w_fore * fore + sign * (w_back * back)
