"""What a model configuration is called in reports: H2ASeg only when it has MCSA and TAMW.

The MCSA study (docs/results.md) ships H2ASeg-family networks without one of the paper's modules; a report
that labels such a network "H2ASeg" would tell its reader the wrong thing. ``network_title`` names the
network for what it is, from its configuration alone; ``one_spelling`` gives the one spelling of two
that build the same network (``variant: ours`` and the paper variant with its terms in scale).
"""

from __future__ import annotations

from typing import Any

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


def one_spelling(model: dict[str, Any]) -> dict[str, Any]:
    """The one spelling of an H2ASeg model section (a ``config.yaml`` dict): ``variant: ours`` is the paper
    variant whose ``extra.mcsa_term_norm`` defaults to on (:func:`h2aseg.models.h2aseg.default_term_norm`,
    the only thing the variant sets), so it becomes ``variant: paper`` with that switch written out, and a
    run made under either spelling is the same network for the other."""
    if model.get("variant") != "ours":
        return model
    extra = dict(model.get("extra") or {})
    extra.setdefault("mcsa_term_norm", default_term_norm("ours"))
    return {**model, "variant": "paper", "extra": extra}
