"""Lesions: irregular shapes placed in lymph-node stations and organs, their SUV, CT contrast and label map.

Whole body (AutoPET-like, label 1): nodes, lung, liver and bone; head and neck (HECKTOR-like): an oropharynx
primary (label 1) and cervical nodes (label 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from h2aseg.synth.anatomy import Anatomy
from h2aseg.synth.shapes import Ellipsoid, Grid, Shape, ShapeUnion, mask_on, random_rotation
from h2aseg.synth.tissues import IS_BODY

# lymph-node stations of the canonical body: (x, y, d) mm, x > 0 = patient's right, y > 0 = anterior
NODE_STATIONS: dict[str, tuple[float, float, float]] = {
    "cervical_r": (42, 10, 252),
    "cervical_l": (-42, 10, 252),
    "supraclavicular_r": (58, 12, 305),
    "supraclavicular_l": (-58, 12, 305),
    "axillary_r": (150, -15, 350),
    "axillary_l": (-150, -15, 350),
    "paratracheal": (14, 22, 420),
    "hilar_r": (45, 5, 455),
    "hilar_l": (-45, 5, 455),
    "paraaortic": (-5, -30, 700),
    "paraaortic_low": (5, -25, 745),
    "mesenteric": (25, 40, 700),
    "iliac_r": (62, -5, 810),
    "iliac_l": (-62, -5, 810),
    "inguinal_r": (85, 45, 905),
    "inguinal_l": (-85, 45, 905),
}
HN_NODE_LEVELS = {"II": (45, 8, 242), "III": (48, 8, 272), "IV": (50, 4, 300)}


@dataclass
class Lesion:
    shape: Shape
    site: str
    label: int
    suv: float
    diameter_mm: float
    center: np.ndarray
    ct_delta: float  # HU added in soft tissue (negative: hypodense)
    bone_delta: float  # HU added in bone (sclerotic > 0, lytic < 0)
    necrosis: float  # uptake factor of the necrotic core (1 = none)

    def meta(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "label": self.label,
            "suv": round(self.suv, 3),
            "diameter_mm": round(self.diameter_mm, 2),
            "center_mm": [round(float(v), 2) for v in self.center],
            "necrotic": self.necrosis < 1.0,
        }


def lesion_shape(rng: np.random.Generator, center: np.ndarray, diameter: float) -> Shape:
    """An irregular lesion: a lobulated, rotated ellipsoid plus up to two satellite blobs."""
    r = diameter / 2
    axes = rng.uniform(0.75, 1.25, 3)
    axes /= np.prod(axes) ** (1 / 3)
    lobes = [
        (
            v / np.linalg.norm(v),
            float(rng.uniform(0.04, 0.12)),
            float(rng.integers(2, 5)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for v in rng.standard_normal((int(rng.integers(1, 4)), 3))
    ]
    parts: list[Shape] = [Ellipsoid(center, r * axes, random_rotation(rng), lobes)]
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        parts.append(
            Ellipsoid(center + v * r * rng.uniform(0.55, 0.85), np.full(3, r * rng.uniform(0.35, 0.6)))
        )
    return ShapeUnion(parts) if len(parts) > 1 else parts[0]


def inside_point(rng: np.random.Generator, e: Ellipsoid, frac: float) -> np.ndarray:
    """A random point inside ``e`` shrunk by ``frac``."""
    v = rng.standard_normal(3)
    v /= np.linalg.norm(v)
    local = v * e.r * frac * rng.uniform(0, 1) ** (1 / 3)
    return e.c + (local if e.rot is None else e.rot @ local)


def mirror_station(name: str) -> str | None:
    """The node station on the other side of the body (``cervical_r`` -> ``cervical_l``); ``None`` for a
    station on the midline."""
    side = name[-2:]
    return name[:-2] + {"_r": "_l", "_l": "_r"}[side] if side in ("_r", "_l") else None


def lesion_diameter(rng: np.random.Generator, d_lo: float, d_mid: float, d_hi: float) -> float:
    """A whole-body lesion diameter: 30 % small (log-uniform ``d_lo``-``d_mid``), else ``d_mid``-``d_hi``."""
    if rng.random() < 0.3:  # small lesions (partial-volume loss), log-uniform
        return float(math.exp(rng.uniform(math.log(d_lo), math.log(d_mid))))
    return float(rng.uniform(d_mid, d_hi))


def wholebody_suv(rng: np.random.Generator) -> float:
    """A whole-body lesion's SUV: 25 % faint (2-3.5), the rest log-normal around 6, within 3-15."""
    if rng.random() < 0.25:
        return float(rng.uniform(2.0, 3.5))
    return float(np.clip(rng.lognormal(math.log(6.0), 0.45), 3.0, 15.0))


def diameter_range(anat: Anatomy, min_spacing: float) -> tuple[float, float, float]:
    """``(d_lo, d_mid, d_hi)`` of whole-body lesions: 5-50 mm, scaled with the body, at least 1.5 voxels."""
    F = anat.frame
    s_mean = math.sqrt(F.sx * F.sz)
    d_lo = max(5.0, 1.5 * min_spacing)
    d_hi = max(d_lo + 1.0, 50.0 * float(np.clip(s_mean / 0.7, 0.6, 1.0)))
    return d_lo, min(max(d_lo + 2.0, 12.0), d_hi), d_hi


def node_cap_mm(s_mean: float) -> float:
    """The largest diameter of a node (lesion or decoy) in a body of mean scale ``s_mean``."""
    return 45.0 * max(s_mean, 0.7)


def _place_wholebody(
    rng: np.random.Generator,
    anat: Anatomy,
    site: str,
    diam: float,
    s_mean: float,
    avoid: frozenset[str] = frozenset(),
) -> tuple[str, np.ndarray, float]:
    """Centre of a whole-body lesion at ``site``, its site label and its diameter capped by the host; a node
    goes to a station not in ``avoid``."""
    F = anat.frame
    if site == "node":
        name = str(rng.choice([n for n in sorted(NODE_STATIONS) if n not in avoid]))
        c = F.p(*NODE_STATIONS[name]) + rng.normal(0, 5 * s_mean, 3)
        return f"node:{name}", c, min(diam, node_cap_mm(s_mean))
    if site == "lung":
        e = anat.organs[str(rng.choice(["lung_r", "lung_l"]))]
        return site, inside_point(rng, e, 0.6), min(diam, 0.9 * float(e.r.min()))
    if site == "liver":
        e = anat.organs["liver"]
        return site, inside_point(rng, e, 0.6), min(diam, 1.0 * float(e.r.min()))
    if rng.random() < 0.7:
        e = anat.vertebrae[int(rng.integers(len(anat.vertebrae)))]
    else:
        e = anat.organs[str(rng.choice(["iliac_r", "iliac_l", "femoral_head_r", "femoral_head_l"]))]
    return site, inside_point(rng, e, 0.3), min(diam, 2.2 * float(e.r[:2].min()))


def wholebody_lesions(
    rng: np.random.Generator, anat: Anatomy, n: int, min_spacing: float, one_side: bool = False
) -> list[Lesion]:
    """``n`` whole-body lesions (label 1): 5-50 mm (scaled with the body), SUV 2-15, some necrotic.

    ``one_side``: no two nodes at mirrored stations (a phantom with symmetric decoys, :mod:`.decoys`, where
    a hot node with a matching one on the other side is physiological, never a lesion)."""
    F = anat.frame
    s_mean = math.sqrt(F.sx * F.sz)
    d_lo, d_mid, d_hi = diameter_range(anat, min_spacing)
    lesions = []
    avoid: set[str] = set()
    for _ in range(n):
        site = str(rng.choice(["node", "lung", "liver", "bone"], p=[0.45, 0.2, 0.2, 0.15]))
        diam = lesion_diameter(rng, d_lo, d_mid, d_hi)
        site, c, diam = _place_wholebody(rng, anat, site, diam, s_mean, frozenset(avoid))
        mirror = mirror_station(site[5:]) if one_side and site.startswith("node:") else None
        if mirror:
            avoid.add(mirror)
        diam = max(diam, d_lo)
        suv = wholebody_suv(rng)
        necrosis = float(rng.uniform(0.25, 0.5)) if diam > 30 and rng.random() < 0.4 else 1.0
        lesions.append(
            Lesion(
                lesion_shape(rng, c, diam),
                site,
                1,
                float(suv),
                diam,
                c,
                ct_delta=float(rng.uniform(8, 18)) * (-2.0 if site == "liver" else 1.0),
                bone_delta=float(rng.choice([1, -1]) * rng.uniform(150, 400)),
                necrosis=necrosis,
            )
        )
    return lesions


def _headneck_node(rng: np.random.Generator, anat: Anatomy, side: int, min_spacing: float) -> Lesion:
    """A cervical node (label 2) at level II-IV, on ``side`` with probability 0.8."""
    F = anat.frame
    s = math.sqrt(F.sx * F.sz)
    lv = str(rng.choice(sorted(HN_NODE_LEVELS)))
    sd = side if rng.random() < 0.8 else -side
    x, y, d = HN_NODE_LEVELS[lv]
    c = F.p(sd * x, y, d) + rng.normal(0, 4 * s, 3)
    d_lo = max(8.0, 1.5 * min_spacing)
    diam = float(math.exp(rng.uniform(math.log(d_lo), math.log(max(d_lo + 1, 30.0 * min(1.0, s))))))
    suv = float(np.clip(rng.lognormal(math.log(5.0), 0.45), 2.5, 14.0))
    return Lesion(
        lesion_shape(rng, c, diam),
        f"node:level_{lv}",
        2,
        suv,
        diam,
        c,
        ct_delta=float(rng.uniform(5, 15)),
        bone_delta=0.0,
        necrosis=1.0,
    )


def _headneck_primary(rng: np.random.Generator, anat: Anatomy, side: int, min_spacing: float) -> Lesion:
    """An oropharynx primary tumour (label 1), 15-45 mm, SUV 4-22, sometimes necrotic."""
    F = anat.frame
    s = math.sqrt(F.sx * F.sz)
    c = F.p(side * rng.uniform(0, 12), rng.uniform(25, 40), rng.uniform(215, 255))
    diam = float(rng.uniform(max(15.0, 1.5 * min_spacing), max(16.0, 45.0 * min(1.0, s))))
    suv = float(np.clip(rng.lognormal(math.log(9.0), 0.4), 4.0, 22.0))
    necrosis = float(rng.uniform(0.3, 0.6)) if diam > 30 and rng.random() < 0.3 else 1.0
    return Lesion(
        lesion_shape(rng, c, diam),
        "primary:oropharynx",
        1,
        suv,
        diam,
        c,
        ct_delta=float(rng.uniform(8, 20)),
        bone_delta=0.0,
        necrosis=necrosis,
    )


def headneck_lesions(rng: np.random.Generator, anat: Anatomy, min_spacing: float) -> list[Lesion]:
    """A primary (90 % of studies) and 0-3 mostly ipsilateral nodes; at least one lesion."""
    has_primary = rng.random() < 0.9
    side = 1 if rng.random() < 0.5 else -1
    n_nodes = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.2, 0.15]))
    if not has_primary:
        n_nodes = max(1, n_nodes)
    lesions = [_headneck_node(rng, anat, side, min_spacing) for _ in range(n_nodes)]
    if has_primary:
        lesions.append(_headneck_primary(rng, anat, side, min_spacing))
    return lesions


def body_masks(
    grid: Grid, tissue: np.ndarray, lesions: list[Lesion]
) -> Iterator[tuple[Lesion, tuple[slice, ...], np.ndarray]]:
    """``(lesion, window slices, mask inside the body)`` for each lesion that reaches ``grid``."""
    for les in lesions:
        r = mask_on(grid, les.shape)
        if r is None:
            continue
        sl, m = r
        yield les, sl, m & IS_BODY[tissue[sl]]


def label_map(grid: Grid, tissue: np.ndarray, lesions: list[Lesion]) -> tuple[np.ndarray, list[Lesion]]:
    """Lesion labels on ``grid`` (inside the body only) and the lesions that have voxels there."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    kept = []
    for les, sl, m in body_masks(grid, tissue, lesions):
        if m.any():
            label[sl][m] = les.label
            kept.append(les)
    return label, kept


def count_voxels(grid: Grid, les: Lesion, label: np.ndarray) -> int:
    """Voxels of ``label`` that belong to ``les``."""
    r = mask_on(grid, les.shape)
    if r is None:
        return 0
    sl, m = r
    return int((m & (label[sl] == les.label)).sum())
