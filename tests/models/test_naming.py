"""Reports name a network for what it is: H2ASeg only with both MCSA and TAMW; two spellings of one
network become one."""

from __future__ import annotations

import torch

from h2aseg.config import ModelConfig
from h2aseg.models.factory import build_from_config
from h2aseg.models.naming import network_title, one_spelling


def test_titles_follow_the_modules():
    ours = "H2ASeg [MCSA terms normalised, gains from zero (ours)]"
    assert network_title(ModelConfig()) == ours  # the default variant
    assert network_title(ModelConfig(variant="paper")) == "H2ASeg"
    assert network_title(ModelConfig(extra={"mcsa_term_norm": False})) == "H2ASeg"
    assert network_title(ModelConfig(use_mcsa=False)) == "H2ASeg without MCSA (dual-branch ResUNet-3D + TAMW)"
    no_tamw = "H2ASeg without TAMW (dual-branch ResUNet-3D + MCSA)"
    assert network_title(ModelConfig(variant="paper", use_tamw=False)) == no_tamw
    assert (
        network_title(ModelConfig(use_tamw=False))
        == f"{no_tamw} [MCSA terms normalised, gains from zero (ours)]"
    )
    assert network_title(ModelConfig(use_mcsa=False, use_tamw=False)).startswith("dual-branch ResUNet-3D")
    assert network_title(ModelConfig(variant="released")) == "H2ASeg [released variant]"
    assert network_title(ModelConfig(variant="paper", extra={"mcsa_term_norm": True})) == ours
    # an MCSA option on a network without MCSA changes nothing, so it is not named
    assert network_title(ModelConfig(use_mcsa=False, extra={"mcsa_norm_act": True})).endswith("+ TAMW)")
    assert network_title(ModelConfig(name="unet3d")) == "unet3d"


def test_one_spelling_builds_the_same_network() -> None:
    ours = {"name": "h2aseg", "variant": "ours", "channels": [4, 8, 8, 8, 8], "window_size": [4, 4, 2]}
    paper = one_spelling(ours)
    assert paper == {**ours, "variant": "paper", "extra": {"mcsa_term_norm": True}}
    assert ours["variant"] == "ours"  # the caller's dict is left as it was
    off = {**ours, "extra": {"mcsa_term_norm": False}}
    assert one_spelling(off)["extra"] == {"mcsa_term_norm": False}  # a switch written out wins
    released = {"name": "h2aseg", "variant": "released"}
    assert one_spelling(released) is released
    x = torch.randn(1, 2, 16, 16, 8)
    outs = []
    for model in (ours, paper, {**ours, "variant": "paper"}):
        torch.manual_seed(0)
        net = build_from_config(ModelConfig(**model)).eval()
        with torch.no_grad():
            outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.equal(outs[0], outs[2])  # the paper variant as written is another network
