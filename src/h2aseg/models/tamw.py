"""Target-Aware Modality Weighting (TAMW, paper section 2.2, eqs. 2-4).

At decoder level k, with the MCSA outputs ``F_ct, F_pet`` (``C_k`` channels each), the up-sampled decoder
feature ``D~`` of level k+1 (``2 C_{k+1}`` channels) and the up-sampled foreground probability ``P~`` of
level k+1 (``(B, 1, X, Y, Z)``):

- paper (``variant="paper"``)::

    F      = concat(F_pet, F_ct, D~)
    F_fore = P~ * F,   F_back = (1 - P~) * F                          (2)
    I_fore = GAP(F_fore),   I_back = GAP(F_back)
    W_fore = tanh(MLP(I_fore)),   W_back = tanh(MLP(I_back))          (3)
    F_enh  = F + W_fore * F_fore + W_back * F_back                    (4)

- released code (``variant="released"``): ``F = concat(F_ct, F_pet, D~)``; only the CT and PET parts are
  masked by ``P~`` (the decoder feature is not); ``F_enh = F + W_fore * F_fore - W_back * F_back``.

GAP is a global (adaptive) average over all voxels, so any input size works; the released code used an
``AvgPool3d`` whose kernel was the training patch size, which equals GAP at that size only.
The MLP (``fc1``: reduction 4, tanh, ``fc2``, tanh) gives one weight per channel.

Two implementations of the same function: :func:`tamw_reference` writes eqs. (2)-(4) out literally, and
:meth:`TAMW.forward` evaluates them in a factored form that reads the features a few times instead of
about twenty (tests/models/test_tamw.py keeps the two equal). ``TAMW(..., reference=True)``, or the
forced reference path of :mod:`h2aseg.models.kernels`, runs the literal one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from h2aseg.models.kernels import reference_kernels


class ChannelWeights(nn.Module):
    """Eq. (3)'s ``tanh(MLP(I))``: ``(B, C)`` channel intensities -> ``(B, C)`` weights in (-1, 1),
    ``fc1 -> tanh -> fc2 -> tanh``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(torch.tanh(self.fc1(x))))


def tamw_reference(
    tamw: TAMW, f_ct: torch.Tensor, f_pet: torch.Tensor, d_up: torch.Tensor, p_up: torch.Tensor
) -> torch.Tensor:
    """Eqs. (2)-(4) as written (and the released variant's form), with ``tamw``'s MLPs: the plain, slow
    reference that the factored :meth:`TAMW.forward` is tested against."""
    paper = tamw.variant == "paper"
    f = torch.cat([f_pet, f_ct, d_up] if paper else [f_ct, f_pet, d_up], dim=1)
    p = p_up.to(f.dtype)
    if paper:  # eq. (2)
        f_fore, f_back = p * f, (1.0 - p) * f
    else:  # the decoder feature enters both branches unmasked
        f_fore = torch.cat([p * f_ct, p * f_pet, d_up], dim=1)
        f_back = torch.cat([(1.0 - p) * f_ct, (1.0 - p) * f_pet, d_up], dim=1)
    i_fore, i_back = f_fore.mean(dim=(2, 3, 4)), f_back.mean(dim=(2, 3, 4))  # global average pooling
    w_fore, w_back = tamw.mlp_fore(i_fore), tamw.mlp_back(i_back)  # eq. (3)
    if tamw.record:
        tamw.last_weights = (w_fore.detach(), w_back.detach())
    w_fore, w_back = w_fore[..., None, None, None], w_back[..., None, None, None]
    if paper:  # eq. (4)
        return f + w_fore * f_fore + w_back * f_back
    return f + w_fore * f_fore - w_back * f_back


class TAMW(nn.Module):
    """Re-weights the concatenated skip and decoder features by foreground / background emphasis.

    ``forward`` evaluates eq. (4) in its factored form (``reference=True``: :func:`tamw_reference`). With
    ``m_c = 1`` for channels masked by ``P~`` (all of them in the paper; the CT and PET channels in the
    released code, whose decoder channels enter both branches unmasked), ``F_fore = (m P~ + 1 - m) F`` and
    ``F_back = (m (1 - P~) + 1 - m) F``, so ``F + W_f F_fore + s W_b F_back = F (a + b P~)`` per channel
    with ``a = 1 + W_f (1 - m) + s W_b`` and ``b = m (W_f - s W_b)`` (``s = +1`` paper, ``-1`` released).
    Both GAPs come from one weighted sum: ``I_fore = mean(F) - m (mean(F) - mean(F P~))``,
    ``I_back = mean(F) - m mean(F P~)``. The result equals eqs. (2)-(4) term by term but reads the
    full-resolution features about three times instead of about twenty, and keeps no ``F_fore``/``F_back``
    copies for the backward pass.

    The MLPs are stored as ``CA_fore``/``CA_back`` (the released state_dict's keys) and read as
    ``mlp_fore``/``mlp_back``. With ``record = True`` each call keeps ``(W_fore, W_back)`` in
    ``last_weights`` for analysis.
    """

    def __init__(
        self,
        skip_channels: int,
        dec_channels: int,
        *,
        variant: str = "paper",
        reduction: int = 4,
        reference: bool = False,
    ) -> None:
        super().__init__()
        if variant not in ("paper", "released"):
            raise ValueError(f"TAMW variant must be 'paper' or 'released', got {variant!r}")
        total = 2 * skip_channels + dec_channels
        self.CA_fore = ChannelWeights(total, reduction)
        self.CA_back = ChannelWeights(total, reduction)
        self.variant = variant
        self.reference = reference
        masked = torch.ones(total)
        if variant == "released":
            masked[2 * skip_channels :] = 0.0
        self.register_buffer("masked", masked, persistent=False)  # m_c: 1 where P~ masks the channel
        self.sign = 1.0 if variant == "paper" else -1.0
        self.last_weights: tuple[torch.Tensor, torch.Tensor] | None = None  # (W_fore, W_back) for analysis
        self.record = False

    @property
    def mlp_fore(self) -> ChannelWeights:
        """Eq. (3)'s MLP of the foreground branch (stored as ``CA_fore``)."""
        return self.CA_fore

    @property
    def mlp_back(self) -> ChannelWeights:
        """Eq. (3)'s MLP of the background branch (stored as ``CA_back``)."""
        return self.CA_back

    def forward(
        self, f_ct: torch.Tensor, f_pet: torch.Tensor, d_up: torch.Tensor, p_up: torch.Tensor
    ) -> torch.Tensor:
        """``F_ct, F_pet, D~, P~`` -> ``F_enh`` with ``2 C_k + 2 C_{k+1}`` channels at the level's
        resolution."""
        if self.reference or reference_kernels():
            return tamw_reference(self, f_ct, f_pet, d_up, p_up)
        f = torch.cat([f_pet, f_ct, d_up] if self.variant == "paper" else [f_ct, f_pet, d_up], dim=1)
        b, c = f.shape[:2]
        p = p_up.to(f.dtype).reshape(b, 1, -1)
        # one pass over F: per-channel sums of F * P~ and of F (a (B, C, N) @ (B, N, 2) product), outside
        # autocast and never in fp16, where a sum over a million voxels overflows
        acc = torch.float32 if f.dtype == torch.float16 else f.dtype
        weights = torch.cat([p, torch.ones_like(p)], dim=1).transpose(1, 2).to(acc)
        with torch.autocast(f.device.type, enabled=False):
            sums = torch.bmm(f.view(b, c, -1).to(acc), weights).float() / p.shape[-1]
        mean_pf, mean_f = sums[..., 0], sums[..., 1]
        m = self.masked
        w_fore = self.CA_fore(mean_f - m * (mean_f - mean_pf))  # eq. (3) of I_fore
        w_back = self.CA_back(mean_f - m * mean_pf)  # eq. (3) of I_back
        if self.record:
            self.last_weights = (w_fore.detach(), w_back.detach())
        a = 1.0 + w_fore * (1.0 - m) + self.sign * w_back
        slope = m * (w_fore - self.sign * w_back)
        # eq. (4) as F (a + slope P~) for every channel and voxel: a rank-1 batched product (fast in bf16 too)
        coef = torch.baddbmm(a[..., None], slope[..., None], p).to(f.dtype).view(f.shape)
        if torch.is_grad_enabled():
            return f * coef
        return f.mul_(coef)  # f is this call's own concatenation
