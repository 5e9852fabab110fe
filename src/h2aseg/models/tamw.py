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

    Eq. (4) is evaluated in its factored form: with ``F_fore = P~ F`` and ``F_back = (1 - P~) F``,
    ``F + W_f F_fore + s W_b F_back = F * (a + b P~)`` per channel, ``a = 1 + s W_b``, ``b = W_f - s W_b``
    (``s = +1`` paper, ``-1`` released; the released decoder channels are unmasked, so there
    ``a = 1 + W_f - W_b, b = 0``). The GAP of ``F_fore`` is one weighted sum ``sum(F P~)``, and that of
    ``F_back`` is ``mean(F) - mean(F_fore)``. The result equals eqs. (2)-(4) term by term (tested against
    them) but reads the full-resolution features about three times instead of about twenty, and keeps
    no ``F_fore``/``F_back`` copies for the backward pass.
    """

    def __init__(self, skip_channels: int, dec_channels: int, *, variant: str = "paper", reduction: int = 4):
        super().__init__()
        if variant not in ("paper", "released"):
            raise ValueError(f"TAMW variant must be 'paper' or 'released', got {variant!r}")
        total = 2 * skip_channels + dec_channels
        self.CA_fore = ChannelWeights(total, reduction)
        self.CA_back = ChannelWeights(total, reduction)
        self.variant = variant
        self.skip_channels = skip_channels
        self.last_weights: tuple[torch.Tensor, torch.Tensor] | None = None  # (W_fore, W_back) for analysis
        self.record = False

    def forward(
        self, f_ct: torch.Tensor, f_pet: torch.Tensor, dec: torch.Tensor, p_fore: torch.Tensor
    ) -> torch.Tensor:
        """Returns ``F_enh`` with ``2 C_k + 2 C_{k+1}`` channels at the level's resolution."""
        paper = self.variant == "paper"
        feat = torch.cat([f_pet, f_ct, dec] if paper else [f_ct, f_pet, dec], dim=1)
        b, c = feat.shape[:2]
        p = p_fore.to(feat.dtype)
        # one pass over F: per-channel sums of F * P~ and of F (a (B, C, N) @ (B, N, 2) product), outside
        # autocast and never in fp16, where a sum over a million voxels overflows
        acc = torch.float32 if feat.dtype == torch.float16 else feat.dtype
        weights = torch.stack([p.flatten(1), torch.ones_like(p).flatten(1)], dim=-1).to(acc)
        with torch.autocast(feat.device.type, enabled=False):
            sums = torch.bmm(feat.view(b, c, -1).to(acc), weights) / feat[0, 0].numel()
        mean_pf, mean_f = sums[..., 0], sums[..., 1]
        if paper:
            fore, back = mean_pf, mean_f - mean_pf
        else:  # the released decoder channels enter both branches unmasked
            n_skip = 2 * self.skip_channels
            fore = torch.cat([mean_pf[:, :n_skip], mean_f[:, n_skip:]], dim=1)
            back = torch.cat([(mean_f - mean_pf)[:, :n_skip], mean_f[:, n_skip:]], dim=1)
        w_fore = self.CA_fore(fore.float()).to(feat.dtype)
        w_back = self.CA_back(back.float()).to(feat.dtype)
        if self.record:
            self.last_weights = (w_fore.detach(), w_back.detach())
        if paper:
            a, slope = 1.0 + w_back, w_fore - w_back
        else:
            a, slope = 1.0 - w_back, w_fore + w_back
            n_skip = 2 * self.skip_channels
            a = torch.cat([a[:, :n_skip], 1.0 + w_fore[:, n_skip:] - w_back[:, n_skip:]], dim=1)
            slope = torch.cat([slope[:, :n_skip], torch.zeros_like(slope[:, n_skip:])], dim=1)
        # a + slope * P~ for every channel and voxel, as a rank-1 batched product (fast in bf16 too)
        coef = torch.baddbmm(a.view(b, c, 1), slope.view(b, c, 1), p.reshape(b, 1, -1)).view(feat.shape)
        if torch.is_grad_enabled():
            return feat * coef
        return feat.mul_(coef)  # feat is this call's own concatenation
