"""A deliberately plain transcription of MCSA (paper section 2.1, Fig. 2, eq. 1) for the tests.

Test support code, not shipped. It shares no code with :mod:`h2aseg.models.mcsa` /
:mod:`h2aseg.models.attention` / :mod:`h2aseg.models.kernels`: every step is written out from the paper
(and, for the released variant, from ``shared/reference/released-code-notes.md``), with explicit loops over
windows and tokens, plain ``softmax(Q^T K / sqrt(d))`` matrix products, hand-written convolutions, trilinear
interpolation and instance norm. The weights are the module's, read off its parameters by name
(``dict(mcsa.named_parameters())``), so gradients flow to the module's own parameter tensors.

What it computes, for ``E_ct, E_pet`` of shape ``(B, C, X, Y, Z)``:

1. Inter-window attention. Each map is zero-padded at the far end of each axis to a multiple of the
   pooling window ``P`` and each ``P``-block is pooled to one token by a conv with kernel = stride = ``P``
   (``win_merge_ct`` / ``win_merge_pet``, with bias). BDSA (below) runs over the whole token map. The
   result is up-sampled trilinearly to the padded size, cropped to ``(X, Y, Z)`` and added to the input
   (residual): ``Ê = E + up(BDSA(tokens))``; released variant: then InstanceNorm -> PReLU.
2. Intra-window attention. ``Ê`` is zero-padded at the far end to a multiple of the window ``W`` (a window
   larger than the map is first clipped to it) and split into ``W``-windows; BDSA runs inside each window,
   padded voxels excluded from the keys; the windows are put back, cropped, and added to ``Ê``:
   ``F = Ê + BDSA_windows(Ê)``; released variant: then InstanceNorm -> PReLU.

BDSA, one direction (target ``E_t``, source ``E_s``, flattened to ``(C, n)``), eq. (1)::

    Q_t, K_t, V_t, Q_s = 1x1x1 convs of E_t      K_s, V_s = 1x1x1 convs of E_s
    A_self  = V_s softmax(Q_s^T K_s / sqrt(d))^T            (softmax over the keys)
    A_cross = V_t softmax(Q_t^T K_t / sqrt(d))^T

``d`` is the query/key width. Paper: ``E'_t = Conv3x3x3(concat(A_self, A_cross))`` (with bias, zero
padding at the border of the window, or of the token map in the inter-window stage; padded voxels are
zeroed before the conv). Released: ``E'_t = Conv1x1x1((A_self + A_cross) / 2)`` (no bias). The CT
direction (``sa_ct``) has CT as target and PET as source, ``sa_pet`` the reverse. Dropout is left out
(the tests run in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

Triple = tuple[int, int, int]
Params = Mapping[str, torch.Tensor]

IN_EPS = 1e-5  # torch.nn.InstanceNorm3d's default eps


# ---------------------------------------------------------------------------------------------- pieces
def pad_far_end(x: torch.Tensor, multiple: Triple) -> torch.Tensor:
    """Zero-pad ``(B, C, X, Y, Z)`` after the last voxel of each axis up to a multiple of ``multiple``."""
    b, c, *size = x.shape
    padded = [s + (-s) % m for s, m in zip(size, multiple, strict=True)]
    out = x.new_zeros((b, c, *padded))
    out[:, :, : size[0], : size[1], : size[2]] = x
    return out


def window_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, window: Triple) -> torch.Tensor:
    """A conv with kernel = stride = ``window`` written as one weighted sum per window (``x`` divisible)."""
    b, _, sx, sy, sz = x.shape
    wx, wy, wz = window
    nx, ny, nz = sx // wx, sy // wy, sz // wz
    rows = []
    for n in range(b):
        tokens = x.new_zeros((weight.shape[0], nx, ny, nz))
        for i in range(nx):
            for j in range(ny):
                for k in range(nz):
                    block = x[n, :, i * wx : (i + 1) * wx, j * wy : (j + 1) * wy, k * wz : (k + 1) * wz]
                    tokens[:, i, j, k] = torch.einsum("ocxyz,cxyz->o", weight, block) + bias
        rows.append(tokens)
    return torch.stack(rows)


def conv3x3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``(C_in, X, Y, Z)`` -> ``(C_out, X, Y, Z)``: a 3x3x3 cross-correlation with zero padding 1, as the sum
    of the 27 shifted maps times their weight matrices, plus the bias."""
    _, sx, sy, sz = x.shape
    xp = F.pad(x, (1, 1, 1, 1, 1, 1))
    out = bias[:, None, None, None].expand(weight.shape[0], sx, sy, sz)
    for dx in range(3):
        for dy in range(3):
            for dz in range(3):
                shifted = xp[:, dx : dx + sx, dy : dy + sy, dz : dz + sz]
                out = out + torch.einsum("oc,cxyz->oxyz", weight[:, :, dx, dy, dz], shifted)
    return out


def linear_weights(n_in: int, n_out: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-D linear interpolation, PyTorch's source-coordinate convention."""
    m = like.new_zeros((n_out, n_in))
    for i in range(n_out):
        if align_corners:
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(math.floor(src), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


def trilinear(x: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> torch.Tensor:
    """Trilinear resize of ``(B, C, X, Y, Z)``: linear interpolation along x, then y, then z."""
    mx = linear_weights(x.shape[2], size[0], align_corners, x)
    my = linear_weights(x.shape[3], size[1], align_corners, x)
    mz = linear_weights(x.shape[4], size[2], align_corners, x)
    return torch.einsum("xi,yj,zk,ncijk->ncxyz", mx, my, mz, x)


def instance_norm_prelu(x: torch.Tensor, prelu_weight: torch.Tensor) -> torch.Tensor:
    """InstanceNorm (no affine, biased variance, eps 1e-5) over each sample's channel, then PReLU with one
    parameter."""
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3, 4), keepdim=True)
    y = (x - mean) / torch.sqrt(var + IN_EPS)
    return torch.where(y >= 0, y, prelu_weight * y)


def matrix(conv_weight: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 conv's weight ``(out, in, 1, 1, 1)`` as the matrix ``(out, in)``."""
    return conv_weight[:, :, 0, 0, 0]


# ---------------------------------------------------------------------------------------------- eq. (1)
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """``V softmax(Q^T K / sqrt(d))^T``: ``q, k`` ``(d, n)``, ``v`` ``(C, n)``, ``key_valid`` bool ``(n,)``
    (False keys get weight 0). Returns ``(C, n)``."""
    d = q.shape[0]
    scores = (q.T @ k) / math.sqrt(d)  # (n queries, n keys)
    scores = scores.masked_fill(~key_valid[None, :], float("-inf"))
    weights = torch.softmax(scores, dim=1)  # each query's weights over the keys sum to one
    return v @ weights.T


def direction(
    p: Params, prefix: str, target: torch.Tensor, source: torch.Tensor, valid: torch.Tensor, combine: str
) -> torch.Tensor:
    """One direction of BDSA on one window (or one token map): ``target, source`` ``(C, wx, wy, wz)``,
    ``valid`` bool ``(wx, wy, wz)``. Returns ``E'_t`` ``(C, wx, wy, wz)``."""
    c, *win = target.shape
    t, s, key_valid = target.reshape(c, -1), source.reshape(c, -1), valid.reshape(-1)
    q_t = matrix(p[f"{prefix}.Q_conv_target_target.weight"]) @ t
    k_t = matrix(p[f"{prefix}.K_conv_target_target.weight"]) @ t
    v_t = matrix(p[f"{prefix}.V_conv_target_target.weight"]) @ t
    q_s = matrix(p[f"{prefix}.Q_conv_source_target.weight"]) @ t  # Q_s: from the target
    k_s = matrix(p[f"{prefix}.K_conv_source_target.weight"]) @ s
    v_s = matrix(p[f"{prefix}.V_conv_source_target.weight"]) @ s
    a_self = attend(q_s, k_s, v_s, key_valid)
    a_cross = attend(q_t, k_t, v_t, key_valid)
    if combine == "concat":
        fused = torch.cat([a_self, a_cross], dim=0)  # (2C, n): A_self first
        fused = fused * valid.reshape(1, -1).to(fused.dtype)  # padded voxels do not reach the conv
        return conv3x3x3(fused.reshape(2 * c, *win), p[f"{prefix}.out.weight"], p[f"{prefix}.out.bias"])
    if combine == "mean":
        return (matrix(p[f"{prefix}.out.weight"]) @ ((a_self + a_cross) / 2)).reshape(c, *win)
    raise ValueError(combine)


def bdsa(
    p: Params, prefix: str, ct: torch.Tensor, pet: torch.Tensor, valid: torch.Tensor, combine: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of BDSA on one window: ``(E'_ct, E'_pet)``."""
    return (
        direction(p, f"{prefix}.sa_ct", ct, pet, valid, combine),
        direction(p, f"{prefix}.sa_pet", pet, ct, valid, combine),
    )


# ---------------------------------------------------------------------------------------------- MCSA
def inter_window(
    p: Params, e_ct: torch.Tensor, e_pet: torch.Tensor, pool: Triple, combine: str, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inter-window attention term of each modality, at the map size (before the residual)."""
    size = tuple(e_ct.shape[2:])
    ct_p, pet_p = pad_far_end(e_ct, pool), pad_far_end(e_pet, pool)
    tok_ct = window_pool(ct_p, p["win_merge_ct.weight"], p["win_merge_ct.bias"], pool)
    tok_pet = window_pool(pet_p, p["win_merge_pet.weight"], p["win_merge_pet.bias"], pool)
    out_ct, out_pet = [], []
    for n in range(e_ct.shape[0]):  # every token is real: pooled windows, padded or not
        all_real = torch.ones(tok_ct.shape[2:], dtype=torch.bool, device=tok_ct.device)
        y_ct, y_pet = bdsa(p, "inter_window_attention", tok_ct[n], tok_pet[n], all_real, combine)
        out_ct.append(y_ct)
        out_pet.append(y_pet)
    padded = tuple(ct_p.shape[2:])
    up_ct = trilinear(torch.stack(out_ct), padded, align_corners)
    up_pet = trilinear(torch.stack(out_pet), padded, align_corners)
    crop = (..., slice(0, size[0]), slice(0, size[1]), slice(0, size[2]))
    return up_ct[crop], up_pet[crop]


def intra_window(
    p: Params, e_ct: torch.Tensor, e_pet: torch.Tensor, window: Triple, combine: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The intra-window attention term of each modality (before the residual)."""
    b, _, *size = e_ct.shape
    wx, wy, wz = (min(w, s) for w, s in zip(window, size, strict=True))
    ct_p, pet_p = pad_far_end(e_ct, (wx, wy, wz)), pad_far_end(e_pet, (wx, wy, wz))
    real = pad_far_end(e_ct.new_ones((1, 1, *size)), (wx, wy, wz))[0, 0] > 0  # False at padding
    out_ct, out_pet = torch.zeros_like(ct_p), torch.zeros_like(pet_p)
    _, _, sx, sy, sz = ct_p.shape
    for n in range(b):
        for i in range(0, sx, wx):
            for j in range(0, sy, wy):
                for k in range(0, sz, wz):
                    win = (slice(i, i + wx), slice(j, j + wy), slice(k, k + wz))
                    y_ct, y_pet = bdsa(
                        p,
                        "intra_window_attention.sa",
                        ct_p[n, :, *win],
                        pet_p[n, :, *win],
                        real[win],
                        combine,
                    )
                    out_ct[n, :, *win] = y_ct
                    out_pet[n, :, *win] = y_pet
    crop = (..., slice(0, size[0]), slice(0, size[1]), slice(0, size[2]))
    return out_ct[crop], out_pet[crop]


def mcsa_reference(
    params: Params,
    e_ct: torch.Tensor,
    e_pet: torch.Tensor,
    *,
    window: Triple,
    pool_window: Triple | None = None,
    combine: str = "concat",
    norm_act: bool = False,
    align_corners: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MCSA written out: ``(E_ct, E_pet) -> (F_ct, F_pet)`` with the weights ``params`` (an MCSA's
    ``dict(named_parameters())``).

    Paper: ``combine="concat"``, ``pool_window=None`` (the window), ``norm_act=False``. Released:
    ``combine="mean"``, ``pool_window=(min(window),) * 3``, ``norm_act=True``, ``align_corners=True`` (and
    queries/keys of ``C / 4`` channels, which the weights' shapes carry).
    """
    pool = tuple(window) if pool_window is None else tuple(pool_window)
    # stage 1: inter-window attention, residual
    up_ct, up_pet = inter_window(params, e_ct, e_pet, pool, combine, align_corners)  # type: ignore[arg-type]
    e_hat_ct, e_hat_pet = e_ct + up_ct, e_pet + up_pet
    if norm_act:
        e_hat_ct = instance_norm_prelu(e_hat_ct, params["IR_ct1.1.weight"])
        e_hat_pet = instance_norm_prelu(e_hat_pet, params["IR_pet1.1.weight"])
    # stage 2: intra-window attention on the result of stage 1, residual
    loc_ct, loc_pet = intra_window(params, e_hat_ct, e_hat_pet, window, combine)
    f_ct, f_pet = e_hat_ct + loc_ct, e_hat_pet + loc_pet
    if norm_act:
        f_ct = instance_norm_prelu(f_ct, params["IR_ct2.1.weight"])
        f_pet = instance_norm_prelu(f_pet, params["IR_pet2.1.weight"])
    return f_ct, f_pet
