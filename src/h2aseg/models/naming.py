"""What a model configuration is called in reports: H2ASeg only when it has MCSA and TAMW.

The MCSA study (docs/results.md) ships H2ASeg-family networks without one of the paper's modules; a report
that labels such a network "H2ASeg" would tell its reader the wrong thing. ``network_title`` names the
network for what it is, from its configuration alone.
"""

from __future__ import annotations

from h2aseg.config import ModelConfig
from h2aseg.models.h2aseg import default_term_norm

#: MCSA changes of ours or of the released code that H2ASeg can carry (``model.extra`` keys), as named.
MCSA_OPTIONS = {
    "mcsa_term_norm": "MCSA terms normalised, gains from zero (ours)",
    "mcsa_norm_act": "InstanceNorm -> PReLU after each MCSA stage",
}


def network_title(model: ModelConfig) -> str:
    """``"H2ASeg"``, ``"H2ASeg without MCSA (dual-branch ResUNet-3D + TAMW)"``, ..., or another network's
    registry name; the released variant and the MCSA options in effect (those of ``ours`` by default) are
    named in brackets."""
    if model.name != "h2aseg":
        return model.name
    if model.use_mcsa and model.use_tamw:
        title = "H2ASeg"
    elif model.use_tamw:
        title = "H2ASeg without MCSA (dual-branch ResUNet-3D + TAMW)"
    elif model.use_mcsa:
        title = "H2ASeg without TAMW (dual-branch ResUNet-3D + MCSA)"
    else:
        title = "dual-branch ResUNet-3D (H2ASeg without MCSA and TAMW)"
    notes = ["released variant"] if model.variant == "released" else []
    if model.use_mcsa:
        defaults = {"mcsa_term_norm": default_term_norm(model.variant)}
        notes += [text for key, text in MCSA_OPTIONS.items() if model.extra.get(key, defaults.get(key))]
    return title + (f" [{'; '.join(notes)}]" if notes else "")
