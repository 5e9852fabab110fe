"""Reports name a network for what it is: H2ASeg only with both MCSA and TAMW."""

from __future__ import annotations

from h2aseg.config import ModelConfig
from h2aseg.models.naming import network_title


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
