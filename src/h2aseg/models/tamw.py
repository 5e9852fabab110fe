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
    """Re-weights the concatenated skip and decoder features by foreground / background emphasis.

    Eq. (4) is evaluated in its factored form. With ``m_c = 1`` for channels masked by ``P~`` (all of them in
    the paper; the CT and PET channels in the released code, whose decoder channels enter both branches
    unmasked), ``F_fore = (m P~ + 1 - m) F`` and ``F_back = (m (1 - P~) + 1 - m) F``, so
    ``F + W_f F_fore + s W_b F_back = F (a + b P~)`` per channel with ``a = 1 + W_f (1 - m) + s W_b`` and
    ``b = m (W_f - s W_b)`` (``s = +1`` paper, ``-1`` released). Both GAPs come from one weighted sum:
    ``GAP(F_fore) = mean(F) - m (mean(F) - mean(F P~))``, ``GAP(F_back) = mean(F) - m mean(F P~)``. The
    result equals eqs. (2)-(4) term by term (tested against them) but reads the full-resolution features
    about three times instead of about twenty, and keeps no ``F_fore``/``F_back`` copies for the backward
    pass.
    """

    def __init__(self, skip_channels: int, dec_channels: int, *, variant: str = "paper", reduction: int = 4):
        super().__init__()
        if variant not in ("paper", "released"):
            raise ValueError(f"TAMW variant must be 'paper' or 'released', got {variant!r}")
        total = 2 * skip_channels + dec_channels
        self.CA_fore = ChannelWeights(total, reduction)
        self.CA_back = ChannelWeights(total, reduction)
        self.variant = variant
        masked = torch.ones(total)
        if variant == "released":
            masked[2 * skip_channels :] = 0.0
        self.register_buffer("masked", masked, persistent=False)  # m_c: 1 where P~ masks the channel
        self.sign = 1.0 if variant == "paper" else -1.0
        self.last_weights: tuple[torch.Tensor, torch.Tensor] | None = None  # (W_fore, W_back) for analysis
        self.record = False

    def forward(
        self, f_ct: torch.Tensor, f_pet: torch.Tensor, dec: torch.Tensor, p_fore: torch.Tensor
    ) -> torch.Tensor:
        """Returns ``F_enh`` with ``2 C_k + 2 C_{k+1}`` channels at the level's resolution."""
        feat = torch.cat([f_pet, f_ct, dec] if self.variant == "paper" else [f_ct, f_pet, dec], dim=1)
        b, c = feat.shape[:2]
        p = p_fore.to(feat.dtype).reshape(b, 1, -1)
        # one pass over F: per-channel sums of F * P~ and of F (a (B, C, N) @ (B, N, 2) product), outside
        # autocast and never in fp16, where a sum over a million voxels overflows
        acc = torch.float32 if feat.dtype == torch.float16 else feat.dtype
        weights = torch.cat([p, torch.ones_like(p)], dim=1).transpose(1, 2).to(acc)
        with torch.autocast(feat.device.type, enabled=False):
            sums = torch.bmm(feat.view(b, c, -1).to(acc), weights).float() / p.shape[-1]
        mean_pf, mean_f = sums[..., 0], sums[..., 1]
        m = self.masked
        w_fore = self.CA_fore(mean_f - m * (mean_f - mean_pf))
        w_back = self.CA_back(mean_f - m * mean_pf)
        if self.record:
            self.last_weights = (w_fore.detach(), w_back.detach())
        a = 1.0 + w_fore * (1.0 - m) + self.sign * w_back
        slope = m * (w_fore - self.sign * w_back)
        # a + slope * P~ for every channel and voxel, as a rank-1 batched product (fast in bf16 too)
        coef = torch.baddbmm(a[..., None], slope[..., None], p).to(feat.dtype).view(feat.shape)
        if torch.is_grad_enabled():
            return feat * coef
        return feat.mul_(coef)  # feat is this call's own concatenation
