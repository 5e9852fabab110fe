"""Symmetric decoys: pairs of physiological, node-like hot spots at mirrored stations, never labelled.

A reader of a PET scan calls symmetric uptake physiological (brown fat, reactive or sarcoid-like nodes in
both hila, both groins) and a hot node without a partner on the other side suspicious. A phantom with
decoys (``h2aseg synth --symmetric-decoys LO,HI``) asks a network for that judgement: each whole-body study
gets LO-HI pairs of hot spots at mirrored lymph-node stations, drawn as the phantom's node lesions are (size,
SUV, CT contrast; the partner within 15 % of the first's size and SUV) but left out of the label; its lesions
never take both stations of a pair. A decoy and a lesion then look alike inside any window that does not
reach the other side of the body: only the context 80-170 mm away tells them apart (docs/phantom.md).

Decoys come from their own random stream, after the study's lesions: a phantom without decoys is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from h2aseg.synth.anatomy import Anatomy
from h2aseg.synth.errors import PhantomError
from h2aseg.synth.lesions import (
    NODE_STATIONS,
    Lesion,
    diameter_range,
    lesion_diameter,
    lesion_shape,
    node_cap_mm,
    wholebody_suv,
)

#: Mirrored station pairs that hold decoys: the pairs 84-170 canonical mm apart, within one 64-voxel training
#: patch at 4 mm; the axillae (300 mm apart) are left out, so that a patch can hold both sides of a decoy.
DECOY_STATIONS: tuple[str, ...] = ("cervical", "supraclavicular", "hilar", "iliac", "inguinal")

#: How far a pair's partner may differ from the first in size and SUV (a factor in 1 ± this).
PARTNER_SPREAD = 0.15

MAX_PAIRS = len(DECOY_STATIONS)


def check_pairs(pairs: Sequence[int], name: str) -> tuple[int, int]:
    """``pairs`` as ``(LO, HI)`` with 0 <= LO <= HI <= :data:`MAX_PAIRS`; else a :class:`PhantomError` that
    starts with ``name``."""
    if len(pairs) != 2 or not 0 <= pairs[0] <= pairs[1] <= MAX_PAIRS:
        raise PhantomError(
            f"{name}: give LO,HI with 0 <= LO <= HI <= {MAX_PAIRS} (one pair per station pair: "
            f"{', '.join(DECOY_STATIONS)})"
        )
    return int(pairs[0]), int(pairs[1])


def check_decoys(pairs: Sequence[int], kind: str, followup: bool) -> tuple[int, int]:
    """The decoy range of a study (``synth_case``) or cohort (``write_cohort``) of ``kind``, checked: decoys
    are for whole-body single studies."""
    lo_hi = check_pairs(pairs, f"symmetric_decoys {tuple(pairs)}")
    if lo_hi != (0, 0) and (kind != "wholebody" or followup):
        what = "follow-up studies" if followup else f"{kind!r} (head and neck) studies"
        raise PhantomError(f"symmetric decoys are for whole-body single studies, not {what}")
    return lo_hi


def parse_pairs(text: str, option: str = "--symmetric-decoys") -> tuple[int, int]:
    """``"1,3"`` -> (1, 3), ``"2"`` -> (2, 2): the range of decoy pairs per study."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise PhantomError(f"{option} {text!r}: give LO,HI pairs per study, e.g. 1,3") from None
    return check_pairs(values * 2 if len(values) == 1 else values, f"{option} {text!r}")


def decoy_stream(seed: int) -> np.random.Generator:
    """The random stream of a study's decoys; separate from its lesions' and physiology's."""
    return np.random.default_rng([int(seed), 23])


def _sides(station: str) -> tuple[str, str]:
    return f"{station}_r", f"{station}_l"


def station_of(site: str) -> str:
    """The station pair of a recorded site (``cervical`` for ``decoy:cervical_r`` or ``node:cervical_l``)."""
    return site.split(":", 1)[-1][:-2]


def free_pairs(lesions: Iterable[Lesion]) -> list[str]:
    """The decoy station pairs where no lesion sits on either side."""
    taken = {les.site.removeprefix("node:") for les in lesions if les.site.startswith("node:")}
    return [s for s in DECOY_STATIONS if not taken & set(_sides(s))]


def symmetric_decoys(
    rng: np.random.Generator, anat: Anatomy, pairs: tuple[int, int], lesions: list[Lesion], min_spacing: float
) -> list[Lesion]:
    """``pairs[0]``-``pairs[1]`` decoy pairs (label 0) at free mirrored stations (fewer when fewer are free),
    in pair order: right side, then left."""
    F = anat.frame
    s_mean = float(np.sqrt(F.sx * F.sz))
    d_lo, d_mid, d_hi = diameter_range(anat, min_spacing)
    cap = node_cap_mm(s_mean)
    free = free_pairs(lesions)
    n = min(int(rng.integers(pairs[0], pairs[1] + 1)), len(free))
    decoys: list[Lesion] = []
    for station in sorted(rng.choice(free, size=n, replace=False)) if n else []:
        diam, suv = max(min(lesion_diameter(rng, d_lo, d_mid, d_hi), cap), d_lo), wholebody_suv(rng)
        for k, side in enumerate(_sides(str(station))):
            f = (1.0, 1.0) if k == 0 else tuple(rng.uniform(1 - PARTNER_SPREAD, 1 + PARTNER_SPREAD, 2))
            c = F.p(*NODE_STATIONS[side]) + rng.normal(0, 5 * s_mean, 3)
            d = max(diam * f[0], d_lo)
            decoys.append(
                Lesion(
                    lesion_shape(rng, c, d),
                    f"decoy:{side}",
                    0,
                    float(suv * f[1]),
                    d,
                    c,
                    ct_delta=float(rng.uniform(8, 18)),
                    bone_delta=0.0,
                    necrosis=1.0,
                )
            )
    return decoys
