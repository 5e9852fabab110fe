"""Modality-Cooperative Spatial Attention (MCSA, paper section 2.1, Fig. 2a).

``(E_ct^k, E_pet^k) -> (F_ct^k, F_pet^k)``, each ``(B, C^k, H^k, W^k, D^k)``:

1. Inter-window attention: each window of ``E`` is pooled to one token by a conv whose kernel and stride
   equal the window (``win_merge_ct``/``win_merge_pet``), BDSA (eq. 1) runs over the tokens, and window
   up-sampling (trilinear) brings the result back to the map size: ``Ê_ct, Ê_pet``.
2. Intra-window attention: window partition splits ``Ê`` into the ordered sets of windows ``S_ct, S_pet``,
   BDSA runs inside each window, and window reconstruction puts them back in order: ``F_ct, F_pet``.

Each stage is added to its input (identity residual). The paper's text does not spell the residuals out,
but without them the intra-window stage would only see the up-sampled token map and fine detail would
be lost; the released code has them, followed by InstanceNorm -> PReLU (``norm_act=True``).

Maps that a window does not divide are zero-padded at the far end and cropped back (padded voxels are
masked out of the keys); a window larger than the map is clipped to it. In the released code the pooling
window is cubic with side ``min(window)`` (``pool_window``), not the attention window.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.attention import (
    BiDirectionalSpatialAttention,
    Triple,
    clip_window,
    pad_to_multiple,
    valid_window_mask,
)
from h2aseg.models.blocks import NormAct, upsample


class IntraWindowAttention(nn.Module):
    """Window partition of the (padded) maps, BDSA inside each window, window reconstruction, crop."""

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
    """Inter-window then intra-window bi-directional spatial attention between CT and PET features.

    ``pool_window`` (default: the window) sets the inter-window pooling, ``qk_channels`` the query/key
    width, ``combine`` the BDSA variant (:mod:`h2aseg.models.attention`), ``norm_act`` the released
    code's InstanceNorm -> PReLU after each stage (``IR_*``), ``align_corners`` the up-sampling.

    ``term_norm`` (ours; neither the paper nor the released code): each of the four attention terms is
    normalised (group norm with one group, no affine) and multiplied by a learned per-channel gain that
    starts at zero (``gain``: rows inter CT, inter PET, intra CT, intra PET) before it is added. MCSA then
    starts as the identity and its terms stay within a learned multiple of unit scale, where the plain
    terms outgrow the features they are added to (``docs/results.md``, ``h2aseg analyze mcsa``).

    ``probe`` (None by default; set per instance by :mod:`h2aseg.analysis.mcsa_scale`) is called on every
    forward with the stage inputs and attention terms: ``probe(self, (E_ct, E_pet), (inter_ct, inter_pet),
    (Ê_ct, Ê_pet), (intra_ct, intra_pet))``, the terms as they are added (before any norm of the sum).

    ``knockout`` (False by default; :func:`knock_out`, ``infer.mcsa_knockout``): the stage adds no attention
    term, its inputs pass through (the released variant's norms still apply), to measure what MCSA
    contributes to a trained model.
    """

    probe: Callable[..., None] | None = None
    knockout: bool = False

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
        term_norm: bool = False,
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
        self.term_norm = term_norm
        if term_norm:
            self.gain = nn.Parameter(torch.zeros(4, channels))

    def _term(self, t: torch.Tensor, i: int) -> torch.Tensor:
        """The attention term as it is added: itself, or normalised and scaled by ``gain[i]``."""
        if not self.term_norm:
            return t
        return F.group_norm(t, 1) * self.gain[i].view(1, -1, 1, 1, 1)

    def forward(self, e_ct: torch.Tensor, e_pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E_ct, E_pet``: ``(B, C, X, Y, Z)`` -> ``(F_ct, F_pet)`` of the same shape."""
        if self.knockout:
            if not self.norm_act:
                return e_ct, e_pet
            return self.IR_ct2(self.IR_ct1(e_ct)), self.IR_pet2(self.IR_pet1(e_pet))
        sx, sy, sz = e_ct.shape[2:]
        # inter-window: pool each window to a token, BDSA across the tokens, window up-sampling
        e_ct_p = pad_to_multiple(e_ct, self.pool_window)  # type: ignore[arg-type]
        e_pet_p = pad_to_multiple(e_pet, self.pool_window)  # type: ignore[arg-type]
        tok_ct, tok_pet = self.inter_window_attention(self.win_merge_ct(e_ct_p), self.win_merge_pet(e_pet_p))
        size = tuple(e_ct_p.shape[2:])
        up_ct = self._term(upsample(tok_ct, size, self.align_corners)[..., :sx, :sy, :sz], 0)
        up_pet = self._term(upsample(tok_pet, size, self.align_corners)[..., :sx, :sy, :sz], 1)
        e_hat_ct, e_hat_pet = e_ct + up_ct, e_pet + up_pet
        if self.norm_act:
            e_hat_ct, e_hat_pet = self.IR_ct1(e_hat_ct), self.IR_pet1(e_hat_pet)
        # intra-window: window partition, BDSA inside each window, window reconstruction
        loc_ct, loc_pet = self.intra_window_attention(e_hat_ct, e_hat_pet)
        loc_ct, loc_pet = self._term(loc_ct, 2), self._term(loc_pet, 3)
        if self.probe is not None:
            self.probe(self, (e_ct, e_pet), (up_ct, up_pet), (e_hat_ct, e_hat_pet), (loc_ct, loc_pet))
        f_ct, f_pet = e_hat_ct + loc_ct, e_hat_pet + loc_pet
        if self.norm_act:
            f_ct, f_pet = self.IR_ct2(f_ct), self.IR_pet2(f_pet)
        return f_ct, f_pet


def knock_out(model: nn.Module, on: bool = True) -> int:
    """Switch every MCSA stage of ``model`` to add no attention term (``on=False``: back); returns how many
    stages there are (0: the network has no MCSA)."""
    stages = [m for m in model.modules() if isinstance(m, MCSA)]
    for m in stages:
        m.knockout = on
    return len(stages)
