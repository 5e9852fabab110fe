"""TAMW: the literal eqs. 2-4 (``tamw_reference``) and the factored fast form, each on small hand-checked
examples (paper and released variants), and equal to each other on random inputs, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from h2aseg.models.kernels import use_reference_kernels
from h2aseg.models.outputs import foreground_probability
from h2aseg.models.tamw import TAMW, tamw_reference


def _constant_weights(tamw: TAMW, w_fore: float, w_back: float) -> None:
    """Make the MLPs output constant weights: fc1 = 0, so W = tanh(bias of fc2)."""
    with torch.no_grad():
        for mlp, w in ((tamw.CA_fore, w_fore), (tamw.CA_back, w_back)):
            mlp.fc1.weight.zero_()
            mlp.fc1.bias.zero_()
            mlp.fc2.weight.zero_()
            mlp.fc2.bias.fill_(math.atanh(w))


def _inputs() -> tuple[torch.Tensor, ...]:
    f_ct = torch.full((1, 1, 2, 1, 1), 2.0)
    f_pet = torch.full((1, 1, 2, 1, 1), 3.0)
    dec = torch.full((1, 2, 2, 1, 1), 1.0)
    p = torch.tensor([1.0, 0.25]).view(1, 1, 2, 1, 1)  # voxel 0 tumour, voxel 1 mostly background
    return f_ct, f_pet, dec, p


@pytest.mark.parametrize("reference", [False, True])
def test_paper_equation_four_by_hand(reference: bool) -> None:
    tamw = TAMW(1, 2, variant="paper", reference=reference)
    _constant_weights(tamw, 0.5, -0.25)
    f_ct, f_pet, dec, p = _inputs()
    out = tamw(f_ct, f_pet, dec, p)
    # F = concat(F_pet, F_ct, D); F_enh = F + 0.5 * p * F - 0.25 * (1 - p) * F
    # voxel 0 (p=1): F * 1.5; voxel 1 (p=0.25): F * (1 + 0.125 - 0.1875) = F * 0.9375
    feat = torch.tensor([3.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(out[0, :, 0, 0, 0], feat * 1.5)
    torch.testing.assert_close(out[0, :, 1, 0, 0], feat * 0.9375)


@pytest.mark.parametrize("reference", [False, True])
def test_released_minus_sign_and_unmasked_decoder_by_hand(reference: bool) -> None:
    tamw = TAMW(1, 2, variant="released", reference=reference)
    _constant_weights(tamw, 0.5, 0.25)
    f_ct, f_pet, dec, p = _inputs()
    out = tamw(f_ct, f_pet, dec, p)
    # F = concat(ct, pet, dec); fore = (p ct, p pet, dec); back = ((1-p) ct, (1-p) pet, dec)
    # out = F + 0.5 fore - 0.25 back
    v0 = torch.tensor([2 + 0.5 * 2 - 0, 3 + 0.5 * 3 - 0, 1 + 0.5 - 0.25, 1 + 0.5 - 0.25])
    v1 = torch.tensor(
        [2 + 0.5 * 0.5 - 0.25 * 1.5, 3 + 0.5 * 0.75 - 0.25 * 2.25, 1 + 0.5 - 0.25, 1 + 0.5 - 0.25]
    )
    torch.testing.assert_close(out[0, :, 0, 0, 0], v0)
    torch.testing.assert_close(out[0, :, 1, 0, 0], v1)


@pytest.mark.parametrize("reference", [False, True])
def test_mlp_sees_global_average_of_foreground_features(reference: bool) -> None:
    tamw = TAMW(1, 2, variant="paper", reference=reference)
    f_ct, f_pet, dec, p = _inputs()
    seen = {}
    tamw.CA_fore.register_forward_hook(lambda m, i, o: seen.setdefault("fore", i[0].clone()))
    tamw.CA_back.register_forward_hook(lambda m, i, o: seen.setdefault("back", i[0].clone()))
    tamw(f_ct, f_pet, dec, p)
    feat = torch.tensor([3.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(seen["fore"][0], feat * (1.0 + 0.25) / 2)
    torch.testing.assert_close(seen["back"][0], feat * (0.0 + 0.75) / 2)


def test_tamw_works_at_any_size() -> None:
    tamw = TAMW(2, 4, variant="paper")
    for shape in [(3, 5, 7), (8, 8, 4)]:
        out = tamw(
            torch.randn(1, 2, *shape),
            torch.randn(1, 2, *shape),
            torch.randn(1, 4, *shape),
            torch.rand(1, 1, *shape),
        )
        assert out.shape == (1, 8, *shape)


def test_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        TAMW(1, 2, variant="v3")


def test_foreground_probability() -> None:
    logits = torch.tensor([0.3, -1.0]).view(1, 2, 1, 1, 1)
    torch.testing.assert_close(foreground_probability(logits), torch.softmax(logits, 1)[:, 1:])
    one = torch.tensor([0.7]).view(1, 1, 1, 1, 1)
    torch.testing.assert_close(foreground_probability(one), torch.sigmoid(one))
    three = torch.tensor([0.2, 0.1, -0.4]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(
        foreground_probability(three), torch.softmax(three, 1)[:, 1:].sum(1, keepdim=True)
    )


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_factored_form_equals_the_equations(variant: str) -> None:
    torch.manual_seed(3)
    tamw = TAMW(3, 4, variant=variant)
    f_ct, f_pet = torch.randn(2, 3, 5, 6, 7), torch.randn(2, 3, 5, 6, 7) + 1.0
    dec, p = torch.randn(2, 4, 5, 6, 7), torch.rand(2, 1, 5, 6, 7)
    inputs = [t.requires_grad_() for t in (f_ct, f_pet, dec)]
    out = tamw(*inputs, p)
    ref = tamw_reference(tamw, *inputs, p)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    params = list(tamw.parameters())
    grads = torch.autograd.grad(out.square().sum(), inputs + params)
    ref_grads = torch.autograd.grad(ref.square().sum(), inputs + params)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_reference_is_selectable(variant: str) -> None:
    """``reference=True`` and the forced reference path of h2aseg.models.kernels run the literal
    equations (the recorded weights come from them too)."""
    torch.manual_seed(4)
    tamw = TAMW(2, 4, variant=variant)
    inputs = (torch.randn(1, 2, 4, 4, 2), torch.randn(1, 2, 4, 4, 2), torch.randn(1, 4, 4, 4, 2))
    p = torch.rand(1, 1, 4, 4, 2)
    tamw.record = True
    fast = tamw(*inputs, p)
    fast_weights = tamw.last_weights
    expected = tamw_reference(tamw, *inputs, p)
    tamw.reference = True
    assert torch.equal(tamw(*inputs, p), expected)
    for w, r in zip(tamw.last_weights, fast_weights, strict=True):  # type: ignore[arg-type]
        torch.testing.assert_close(w, r, rtol=1e-5, atol=1e-6)
    tamw.reference = False
    with use_reference_kernels():
        assert torch.equal(tamw(*inputs, p), expected)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_autocast_stays_finite_on_large_maps(dtype: torch.dtype) -> None:
    # the global sums run over every voxel: in fp16 they would overflow (65504) on a 64x64x32 map
    torch.manual_seed(0)
    tamw = TAMW(4, 8, variant="paper")
    f_ct, f_pet = torch.randn(1, 4, 64, 64, 32) + 3.0, torch.randn(1, 4, 64, 64, 32) + 3.0
    dec, p = torch.randn(1, 8, 64, 64, 32) + 3.0, torch.rand(1, 1, 64, 64, 32)
    ref = tamw(f_ct, f_pet, dec, p)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = tamw(f_ct.to(dtype), f_pet.to(dtype), dec.to(dtype), p)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
