"""MCSA's ``term_norm`` option (ours): identity at initialisation, terms at a learned multiple of unit
scale, gradients reach the gains; on in the default variant (ours), off in the paper and released
variants, so those networks are unchanged."""

from __future__ import annotations

import math

import torch

from h2aseg.config import load_config
from h2aseg.models.factory import build_from_config
from h2aseg.models.mcsa import MCSA

TINY = ["model.channels=[4,8,8,8,8]", "model.window_size=[4,4,2]"]


def test_starts_as_the_identity_and_gains_get_gradients() -> None:
    torch.manual_seed(0)
    mcsa = MCSA(6, (4, 4, 2), term_norm=True)
    ct, pet = torch.randn(2, 6, 8, 8, 4), torch.randn(2, 6, 8, 8, 4)
    f_ct, f_pet = mcsa(ct, pet)
    torch.testing.assert_close(f_ct, ct, rtol=0, atol=0)
    torch.testing.assert_close(f_pet, pet, rtol=0, atol=0)
    (f_ct.square().sum() + (f_pet * torch.randn_like(f_pet)).sum()).backward()
    assert mcsa.gain.grad is not None and bool((mcsa.gain.grad != 0).all())


def test_added_terms_are_the_gain_times_unit_scale() -> None:
    torch.manual_seed(1)
    mcsa = MCSA(6, (4, 4, 2), term_norm=True)
    with torch.no_grad():
        mcsa.gain.fill_(2.0)
        for direction in (mcsa.inter_window_attention.sa_ct, mcsa.intra_window_attention.sa.sa_pet):
            direction.out.weight.mul_(1000.0)  # a term that would otherwise be 1000 times larger
    terms: list[torch.Tensor] = []
    mcsa.probe = lambda _m, _e, inter, _h, intra: terms.extend([*inter, *intra])
    with torch.no_grad():
        mcsa(torch.randn(1, 6, 8, 8, 4), torch.randn(1, 6, 8, 8, 4))
    for t in terms:  # group norm (one group) then x 2: root mean square 2 (up to eps), whatever the raw scale
        assert math.isclose(float(t.square().mean().sqrt()), 2.0, rel_tol=1e-2)


def test_on_for_ours_off_for_paper_and_released_settable_for_each() -> None:
    """The default variant (ours) normalises MCSA's terms; the paper as written and the released code do
    not; ``model.extra.mcsa_term_norm`` sets it either way for any variant."""

    def gains(overrides: list[str]) -> list[str]:
        model = build_from_config(load_config("synthetic", [*TINY, *overrides]).model)
        return [k for k in model.state_dict() if k.endswith(".gain")]

    every_level = [f"encoder.sa{k}.gain" for k in (2, 3, 4, 5)]
    assert load_config("synthetic").model.variant == "ours" and gains([]) == every_level
    assert gains(["model.variant=paper"]) == []
    assert gains(["model.variant=released", "model.out_channels=2"]) == []
    assert gains(["model.extra.mcsa_term_norm=false"]) == []
    cfg = load_config("synthetic", [*TINY, "model.variant=paper", "model.extra.mcsa_term_norm=true"])
    model = build_from_config(cfg.model)
    assert [k for k in model.state_dict() if k.endswith(".gain")] == every_level
    out = model(torch.rand(1, 2, 32, 32, 32))
    assert out[0].shape == (1, 1, 32, 32, 32) and bool(torch.isfinite(out[0]).all())


def test_ours_is_the_paper_network_plus_the_gains() -> None:
    """``variant="ours"`` changes nothing but MCSA's term normalisation: its weights are the paper
    variant's plus one gain per MCSA stage, each of the same shape, and the paper's weights load into it."""
    from h2aseg.models.registry import build_network

    ours, paper = build_network("h2aseg"), build_network("h2aseg", variant="paper")
    extra = set(ours.state_dict()) - set(paper.state_dict())
    assert extra == {f"encoder.sa{k}.gain" for k in (1, 2, 3, 4, 5)}
    assert all(ours.state_dict()[k].shape == v.shape for k, v in paper.state_dict().items())
    missing, unexpected = ours.load_state_dict(paper.state_dict(), strict=False)
    assert set(missing) == extra and not unexpected


def test_norm_act_follows_the_variant_unless_set() -> None:
    """``mcsa_norm_act``: off for the paper variant, on for the released one, settable for either."""

    def norm_keys(overrides: list[str]) -> list[str]:
        model = build_from_config(load_config("synthetic", [*TINY, *overrides]).model)
        return sorted({k.split(".")[1] for k in model.state_dict() if ".IR_ct1." in k or ".IR_pet2." in k})

    assert norm_keys([]) == []  # the paper variant: identity residuals only
    assert norm_keys(["model.extra.mcsa_norm_act=true"]) == ["sa2", "sa3", "sa4", "sa5"]
    cfg = load_config("synthetic", [*TINY, "model.extra.mcsa_norm_act=true"])
    model = build_from_config(cfg.model).eval()
    mcsa = model.encoder.sa2
    assert mcsa.norm_act and all(hasattr(mcsa, n) for n in ("IR_ct1", "IR_pet1", "IR_ct2", "IR_pet2"))
    with torch.no_grad():
        out = model(torch.rand(1, 2, 32, 32, 32))
    assert bool(torch.isfinite(out).all())
