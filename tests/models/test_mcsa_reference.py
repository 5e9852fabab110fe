"""MCSA equals a plain transcription of the paper (``mcsa_reference``), forward and gradients.

``tests/models/test_attention.py`` compares the fast and the reference attention kernels under the same
composition code; here the module is compared with :func:`mcsa_reference.mcsa_reference`, which shares no
code with it (loops over windows, hand-written convs, interpolation and norms), in both variants, on a map
the windows divide and on one that needs padding. The mutation tests check that the comparison catches a
wrong composition (stage order, a missing residual, the concat order, unmasked padding, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from mcsa_reference import linear_weights, mcsa_reference, trilinear

import h2aseg.models.attention as attention_module
import h2aseg.models.mcsa as mcsa_module
from h2aseg.models.kernels import use_reference_kernels
from h2aseg.models.mcsa import MCSA

CHANNELS = 8
WINDOW = (4, 4, 2)
DIVIDED = (8, 8, 4)  # the window (and the released pooling window 2x2x2) divide it
PADDED = (7, 6, 3)  # needs padding along every axis (x, z also for the released pooling window)

#: (MCSA keywords, mcsa_reference keywords) per variant
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "paper": ({"combine": "concat", "norm_act": False}, {"combine": "concat", "norm_act": False}),
    "released": (
        {
            "combine": "mean",
            "pool_window": (min(WINDOW),) * 3,
            "qk_channels": CHANNELS // 4,
            "norm_act": True,
            "align_corners": True,
        },
        {"combine": "mean", "pool_window": (min(WINDOW),) * 3, "norm_act": True, "align_corners": True},
    ),
}


def _mcsa(variant: str) -> MCSA:
    """An MCSA in eval mode without dropout, float64, every parameter moved off its initial value."""
    torch.manual_seed(11)
    module = MCSA(CHANNELS, WINDOW, attn_dropout=0.0, dropout=0.0, **VARIANTS[variant][0]).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module


def _inputs(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(12)
    ct = torch.randn(2, CHANNELS, *shape, dtype=torch.float64, requires_grad=True)
    pet = torch.randn(2, CHANNELS, *shape, dtype=torch.float64, requires_grad=True)
    return ct, pet


def assert_matches_reference(module: MCSA, variant: str, shape: tuple[int, int, int]) -> None:
    """Forward (without and with autograd) and the gradients w.r.t. both inputs and every parameter."""
    ct, pet = _inputs(shape)
    names, params = zip(*module.named_parameters(), strict=True)
    ref_kwargs = VARIANTS[variant][1]

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        return mcsa_reference(dict(zip(names, params, strict=True)), ct, pet, window=WINDOW, **ref_kwargs)

    with torch.no_grad():  # inference routes of the kernels
        for got, want in zip(module(ct, pet), reference(), strict=True):
            assert got.shape == want.shape == ct.shape
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    outs, ref_outs = module(ct, pet), reference()  # training routes (autograd), still eval mode
    for got, want in zip(outs, ref_outs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    torch.manual_seed(13)
    g_ct, g_pet = torch.randn_like(ct), torch.randn_like(pet)
    leaves = (ct, pet, *params)
    grads = torch.autograd.grad((outs[0] * g_ct).sum() + (outs[1] * g_pet).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_outs[0] * g_ct).sum() + (ref_outs[1] * g_pet).sum(), leaves)
    for name, got, want in zip(("ct", "pet", *names), grads, ref_grads, strict=True):
        assert want.abs().max() > 0, f"the gradient w.r.t. {name} is zero: the comparison would be empty"
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"d/d {n}: {m}")


# ------------------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("kernels", ["fast", "reference-kernels"])
@pytest.mark.parametrize("shape", [DIVIDED, PADDED], ids=["divided", "padded"])
@pytest.mark.parametrize("variant", ["paper", "released"])
def test_mcsa_equals_paper_transcription(variant: str, shape: tuple[int, int, int], kernels: str) -> None:
    module = _mcsa(variant)
    if kernels == "fast":
        assert_matches_reference(module, variant, shape)
    else:
        with use_reference_kernels():
            assert_matches_reference(module, variant, shape)


def test_reference_interpolation_is_pytorchs() -> None:
    """The hand-written trilinear resize follows PyTorch's coordinate conventions (both corner modes)."""
    x = torch.randn(2, 3, 3, 2, 4, dtype=torch.float64)
    for corners in (True, False):
        want = torch.nn.functional.interpolate(x, size=(8, 6, 5), mode="trilinear", align_corners=corners)
        torch.testing.assert_close(trilinear(x, (8, 6, 5), corners), want, rtol=0, atol=1e-12)
    assert linear_weights(2, 4, True, x).sum(dim=1).allclose(torch.ones(4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- mutations
def _composed(
    self: MCSA,
    e_ct: torch.Tensor,
    e_pet: torch.Tensor,
    *,
    swap_stages: bool = False,
    inter_residual: bool = True,
    intra_residual: bool = True,
    first_norm_act: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MCSA's forward rebuilt from its parts, with one composition bug switched on by a keyword."""
    sx, sy, sz = e_ct.shape[2:]

    def inter(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a_p = mcsa_module.pad_to_multiple(a, self.pool_window)  # type: ignore[arg-type]
        b_p = mcsa_module.pad_to_multiple(b, self.pool_window)  # type: ignore[arg-type]
        ta, tb = self.inter_window_attention(self.win_merge_ct(a_p), self.win_merge_pet(b_p))
        size = tuple(a_p.shape[2:])
        return (
            mcsa_module.upsample(ta, size, self.align_corners)[..., :sx, :sy, :sz],
            mcsa_module.upsample(tb, size, self.align_corners)[..., :sx, :sy, :sz],
        )

    first, second = (
        (self.intra_window_attention, inter) if swap_stages else (inter, self.intra_window_attention)
    )
    t_ct, t_pet = first(e_ct, e_pet)
    h_ct, h_pet = (e_ct + t_ct, e_pet + t_pet) if inter_residual else (t_ct, t_pet)
    if self.norm_act and first_norm_act:
        h_ct, h_pet = self.IR_ct1(h_ct), self.IR_pet1(h_pet)
    u_ct, u_pet = second(h_ct, h_pet)
    f_ct, f_pet = (h_ct + u_ct, h_pet + u_pet) if intra_residual else (u_ct, u_pet)
    if self.norm_act:
        f_ct, f_pet = self.IR_ct2(f_ct), self.IR_pet2(f_pet)
    return f_ct, f_pet


class _ConcatSwapped:
    """``torch`` as :mod:`h2aseg.models.attention` sees it, ``cat`` reversing its list: concat(A_cross,
    A_self)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def cat(tensors: Any, dim: int = 0) -> torch.Tensor:
        return torch.cat(list(tensors)[::-1], dim=dim)


def _forward_with(**bug: bool) -> Callable[[pytest.MonkeyPatch], None]:
    def apply(mp: pytest.MonkeyPatch) -> None:
        mp.setattr(MCSA, "forward", lambda self, a, b: _composed(self, a, b, **bug))

    return apply


def _flipped_corners(mp: pytest.MonkeyPatch) -> None:
    upsample = mcsa_module.upsample
    mp.setattr(mcsa_module, "upsample", lambda x, size, corners: upsample(x, size, not corners))


#: name -> (how to break MCSA, the variants and shapes where the comparison must then fail)
MUTATIONS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], list[tuple[str, tuple[int, int, int]]]]] = {
    "control: the rebuilt forward, no bug": (_forward_with(), []),
    "intra-window stage before inter-window": (
        _forward_with(swap_stages=True),
        [("paper", DIVIDED), ("paper", PADDED), ("released", DIVIDED)],
    ),
    "inter-window residual dropped": (
        _forward_with(inter_residual=False),
        [("paper", DIVIDED), ("released", PADDED)],
    ),
    "intra-window residual dropped": (
        _forward_with(intra_residual=False),
        [("paper", PADDED), ("released", DIVIDED)],
    ),
    "no norm-act after the inter-window stage": (
        _forward_with(first_norm_act=False),
        [("released", DIVIDED)],
    ),
    "concat(A_cross, A_self)": (
        lambda mp: mp.setattr(attention_module, "torch", _ConcatSwapped()),
        [("paper", DIVIDED), ("paper", PADDED)],
    ),
    "padded keys not masked": (
        lambda mp: mp.setattr(mcsa_module, "valid_window_mask", lambda *args: None),
        [("paper", PADDED), ("released", PADDED)],
    ),
    "align_corners flipped": (_flipped_corners, [("paper", DIVIDED), ("released", DIVIDED)]),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_comparison_catches_a_wrong_composition(mutation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bug makes the comparison fail where it matters; the control (the same rebuilt forward without
    a bug) passes, so the failures come from the bug alone."""
    apply, broken = MUTATIONS[mutation]
    apply(monkeypatch)
    if not broken:  # the control
        for variant in VARIANTS:
            for shape in (DIVIDED, PADDED):
                assert_matches_reference(_mcsa(variant), variant, shape)
        return
    for variant, shape in broken:
        with pytest.raises(AssertionError, match="not close"):  # values differ (not some other error)
            assert_matches_reference(_mcsa(variant), variant, shape)
