"""How far patients and scanners vary: ranges of anatomy, physiology and PET physics, and their draws.

A :class:`Variability` holds, per quantity, a :class:`Span` (the values a draw may take) or ``None``: ``None``
keeps today's model of the phantom (its own draws, unchanged), so :data:`DEFAULT` (all ``None``) gives
byte-identical studies to the phantom before variability existed. :data:`WIDE` widens every range (training
cohorts); :data:`OUT_OF_RANGE` draws from ranges beyond ``WIDE``'s on every quantity (evaluation cohorts).

Draws come from their own random streams (:func:`patient_stream`, :func:`study_stream`), so a set range never
shifts the draws of today's model: anatomy per patient (studies of one patient share it), the bladder,
uptake and scanner per study. Every drawn value is returned in a record for ``phantom.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

# Spans as written in the tables below: one interval (lo, hi) or several (a draw picks one, equal odds)
Parts = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Span:
    """The values a draw may take: one or more closed intervals ``[lo, hi]``.

    A draw picks one interval (equal odds), then a value in it: uniform, or log-uniform for SUVs. Values are
    rounded to 5 significant digits, so the number recorded in ``phantom.json`` is the one used.
    """

    parts: Parts

    @property
    def lo(self) -> float:
        return min(a for a, _ in self.parts)

    @property
    def hi(self) -> float:
        return max(b for _, b in self.parts)

    def draw(self, rng: np.random.Generator, log: bool = False, part: int | None = None) -> float:
        """A value: in interval ``part`` when given, else in one picked at random."""
        if part is None:
            part = int(rng.integers(len(self.parts))) if len(self.parts) > 1 else 0
        a, b = self.parts[part]
        v = math.exp(rng.uniform(math.log(a), math.log(b))) if log else rng.uniform(a, b)
        return float(f"{v:.5g}")

    def contains(self, v: float) -> bool:
        return any(a - 1e-9 <= v <= b + 1e-9 for a, b in self.parts)

    def outside(self, other: Span) -> bool:
        """True when no value of this span lies within ``other``'s hull ``[other.lo, other.hi]``."""
        return all(b < other.lo or a > other.hi for a, b in self.parts)

    def to_list(self) -> list[list[float]]:
        return [[a, b] for a, b in self.parts]


def span(*parts: tuple[float, float]) -> Span:
    return Span(tuple((float(a), float(b)) for a, b in parts))


@dataclass(frozen=True)
class BodyRanges:
    """Body size (per patient). Today: width 0.92-1.08, depth 0.9-1.08, fat 8-30 mm, head 0.95-1.05.

    ``JOINT`` fields whose spans have the same number of intervals (several) share the interval a draw picks:
    a patient is narrow, shallow and lean, or broad, deep and obese (thick fat in a shallow trunk would
    push the spine to the middle of the body).
    """

    JOINT: ClassVar[tuple[str, ...]] = ("width", "depth", "fat_mm")

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "width": (0.5, 1.6),
        "depth": (0.5, 1.6),
        "fat_mm": (0.0, 80.0),
        "head": (0.6, 1.5),
        "height": (0.6, 1.3),
    }
    width: Span | None = None  # trunk and thigh width factor
    depth: Span | None = None  # trunk and thigh front-back depth factor
    fat_mm: Span | None = None  # subcutaneous fat of the trunk, canonical mm
    head: Span | None = None  # head size factor (scalp, skull, brain)
    height: Span | None = None  # body length factor (today 1: vertex to mid-thigh is 96 % of the FOV)


@dataclass(frozen=True)
class OrganRanges:
    """Size, shape and position of one organ (per patient; the bladder per study)."""

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "scale": (0.3, 2.0),
        "aspect_z": (0.4, 2.5),
        "aspect_xy": (0.4, 2.5),
        "shift_mm": (0.0, 60.0),
        "turn_deg": (0.0, 90.0),
    }
    scale: Span | None = None  # size factor on every axis
    aspect_z: Span | None = None  # head-foot elongation at constant volume (z x a, x and y / sqrt(a))
    aspect_xy: Span | None = (
        None  # left-right to front-back ratio at constant volume (x x sqrt(b), y / sqrt(b))
    )
    shift_mm: Span | None = None  # displacement length (uniformly random direction), canonical mm
    turn_deg: Span | None = None  # extra rotation about the body axis (random sign), degrees


@dataclass(frozen=True)
class OrganSet:
    """Per-organ ranges; ``lungs`` and ``kidneys`` draw each side separately."""

    heart: OrganRanges = OrganRanges()
    lungs: OrganRanges = OrganRanges()
    liver: OrganRanges = OrganRanges()
    spleen: OrganRanges = OrganRanges()
    kidneys: OrganRanges = OrganRanges()
    bladder: OrganRanges = OrganRanges()


@dataclass(frozen=True)
class UptakeRanges:
    """Mean SUV per tissue (log-uniform draws; liver, spleen, marrow per patient, the others per study)."""

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {}  # every field: SUV_LIMITS
    brain_gm: Span | None = None  # brain grey matter (white matter stays 0.45x grey matter)
    myocardium: Span | None = None
    blood: Span | None = None  # blood pool: heart chambers, aorta, IVC
    liver: Span | None = None
    spleen: Span | None = None
    kidney: Span | None = None  # renal parenchyma
    urine_kidney: Span | None = None  # renal collecting system
    bladder: Span | None = None
    marrow: Span | None = None
    viscera: Span | None = None  # bowel
    salivary: Span | None = None
    tonsil: Span | None = None
    thyroid: Span | None = None


SUV_LIMITS = (0.05, 200.0)
PATIENT_UPTAKE = ("liver", "spleen", "marrow")
STUDY_UPTAKE = tuple(f.name for f in fields(UptakeRanges) if f.name not in PATIENT_UPTAKE)


@dataclass(frozen=True)
class ScannerRanges:
    """Acquisition (per study). Today: FWHM 6-7 mm, count factor 0.02-0.05, CT noise 10-20 HU."""

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "pet_fwhm_mm": (1.0, 20.0),
        "pet_count_factor": (0.0, 1.0),
        "ct_noise_hu": (0.0, 200.0),
    }
    pet_fwhm_mm: Span | None = None  # PET resolution: FWHM of the Gaussian point-spread function, mm
    pet_count_factor: Span | None = None  # PET noise: variance per SUV, for 64 mm^3 voxels
    ct_noise_hu: Span | None = None  # CT noise, HU


def limits(group: Any, name: str) -> tuple[float, float]:
    """The values a range of field ``name`` of ``group`` (a ranges dataclass) may take."""
    return group.LIMITS.get(name, SUV_LIMITS)


@dataclass(frozen=True)
class Variability:
    """Ranges of anatomy, uptake and scanner; ``None`` anywhere keeps today's model there."""

    level: str = "default"
    body: BodyRanges = BodyRanges()
    organs: OrganSet = OrganSet()
    uptake: UptakeRanges = UptakeRanges()
    scanner: ScannerRanges = ScannerRanges()

    def spans(self) -> Iterator[tuple[str, Span | None]]:
        """``(dotted field name, span)`` of every range, in declaration order."""
        for group in ("body", "uptake", "scanner"):
            for f in fields(getattr(self, group)):
                yield f"{group}.{f.name}", getattr(getattr(self, group), f.name)
        for organ in fields(self.organs):
            ranges = getattr(self.organs, organ.name)
            for f in fields(ranges):
                yield f"organs.{organ.name}.{f.name}", getattr(ranges, f.name)

    @property
    def is_default(self) -> bool:
        """True when every range is today's model (the output is that of the phantom without variability)."""
        return all(s is None for _, s in self.spans())

    def to_record(self) -> dict[str, Any]:
        """The level and its ranges, for ``phantom.json`` (``null``: today's model)."""
        rec: dict[str, Any] = {"level": self.level}
        for name, s in self.spans():
            node = rec
            *path, last = name.split(".")
            for key in path:
                node = node.setdefault(key, {})
            node[last] = None if s is None else s.to_list()
        return rec


# ------------------------------------------------------------------------------------------------- levels
DEFAULT = Variability()

_TODAY_ORGAN = {"scale": (0.9, 1.1), "aspect_z": (1.0, 1.0), "aspect_xy": (1.0, 1.0)}
_TODAY_ORGAN |= {"shift_mm": (0.0, 0.0), "turn_deg": (0.0, 0.0)}
# The ranges today's model draws from (the DEFAULT level), by dotted field name; the bladder's scale is the
# cube root of its volume fill (0.6-1.3), the spleen 0.8-0.92x the liver, the myocardium skewed to low.
TODAY: dict[str, tuple[float, float]] = {
    "body.width": (0.92, 1.08),
    "body.depth": (0.9, 1.08),
    "body.fat_mm": (8.0, 30.0),
    "body.head": (0.95, 1.05),
    "body.height": (1.0, 1.0),
    **{f"organs.{o.name}.{k}": v for o in fields(OrganSet) for k, v in _TODAY_ORGAN.items()},
    "organs.bladder.scale": (0.6 ** (1 / 3), 1.3 ** (1 / 3)),
    "uptake.brain_gm": (6.0, 10.0),
    "uptake.myocardium": (1.5, 8.0),
    "uptake.blood": (1.4, 2.0),
    "uptake.liver": (1.9, 2.5),
    "uptake.spleen": (1.9 * 0.8, 2.5 * 0.92),
    "uptake.kidney": (3.0, 6.0),
    "uptake.urine_kidney": (4.0, 15.0),
    "uptake.bladder": (5.0, 30.0),
    "uptake.marrow": (1.0, 1.6),
    "uptake.viscera": (1.0, 1.6),
    "uptake.salivary": (1.5, 3.5),
    "uptake.tonsil": (2.0, 5.0),
    "uptake.thyroid": (1.0, 2.0),
    "scanner.pet_fwhm_mm": (6.0, 7.0),
    "scanner.pet_count_factor": (0.02, 0.05),
    "scanner.ct_noise_hu": (10.0, 20.0),
}


def _organ(scale: Span, aspect: Span, shift_mm: Span, turn_deg: Span) -> OrganRanges:
    """Organ ranges with the same span for both aspect ratios."""
    return OrganRanges(scale=scale, aspect_z=aspect, aspect_xy=aspect, shift_mm=shift_mm, turn_deg=turn_deg)


def _organs(common: OrganRanges, **special: OrganRanges) -> OrganSet:
    """``common`` for every organ but those named in ``special``."""
    return OrganSet(**{f.name: special.get(f.name, common) for f in fields(OrganSet)})


WIDE = Variability(
    level="wide",
    body=BodyRanges(
        width=span((0.84, 1.16)),
        depth=span((0.85, 1.16)),
        fat_mm=span((5.0, 34.0)),
        head=span((0.92, 1.08)),
        height=span((0.94, 1.03)),
    ),
    organs=_organs(
        _organ(
            scale=span((0.82, 1.18)),
            aspect=span((0.85, 1.18)),
            shift_mm=span((0, 10)),
            turn_deg=span((0, 15)),
        ),
        lungs=_organ(
            scale=span((0.85, 1.15)), aspect=span((0.9, 1.1)), shift_mm=span((0, 5)), turn_deg=span((0, 6))
        ),
        bladder=_organ(
            scale=span((0.7, 1.25)), aspect=span((0.85, 1.18)), shift_mm=span((0, 10)), turn_deg=span((0, 15))
        ),
    ),
    uptake=UptakeRanges(
        brain_gm=span((4.5, 13.0)),
        myocardium=span((1.2, 12.0)),
        blood=span((1.1, 2.3)),
        liver=span((1.5, 3.0)),
        spleen=span((1.2, 2.8)),
        kidney=span((2.0, 9.0)),
        urine_kidney=span((3.0, 25.0)),
        bladder=span((3.0, 50.0)),
        marrow=span((0.8, 2.0)),
        viscera=span((0.8, 2.1)),
        salivary=span((1.2, 4.5)),
        tonsil=span((1.6, 6.5)),
        thyroid=span((0.8, 3.0)),
    ),
    scanner=ScannerRanges(
        pet_fwhm_mm=span((4.5, 8.5)), pet_count_factor=span((0.012, 0.08)), ct_noise_hu=span((8.0, 28.0))
    ),
)

OUT_OF_RANGE = Variability(
    level="out-of-range",
    body=BodyRanges(
        width=span((0.76, 0.81), (1.19, 1.25)),
        depth=span((0.74, 0.82), (1.19, 1.26)),
        fat_mm=span((1.0, 4.0), (38.0, 48.0)),
        head=span((0.85, 0.9), (1.1, 1.15)),
        height=span((0.86, 0.91), (1.05, 1.08)),
    ),
    organs=_organs(
        _organ(
            scale=span((0.64, 0.76), (1.24, 1.36)),
            aspect=span((0.64, 0.78), (1.28, 1.5)),
            shift_mm=span((13, 22)),
            turn_deg=span((20, 35)),
        ),
        lungs=_organ(
            scale=span((0.72, 0.8), (1.2, 1.26)),
            aspect=span((0.78, 0.86), (1.14, 1.22)),
            shift_mm=span((7, 10)),
            turn_deg=span((8, 12)),
        ),
        bladder=_organ(
            scale=span((0.5, 0.64), (1.32, 1.5)),
            aspect=span((0.64, 0.78), (1.28, 1.5)),
            shift_mm=span((13, 22)),
            turn_deg=span((20, 35)),
        ),
    ),
    uptake=UptakeRanges(
        brain_gm=span((3.0, 4.0), (14.5, 18.0)),
        myocardium=span((0.8, 1.0), (13.0, 20.0)),
        blood=span((0.8, 1.0), (2.4, 2.8)),
        liver=span((1.1, 1.4), (3.1, 3.6)),
        spleen=span((0.9, 1.1), (2.9, 3.4)),
        kidney=span((1.4, 1.8), (9.5, 13.0)),
        urine_kidney=span((2.0, 2.7), (27.0, 40.0)),
        bladder=span((1.5, 2.7), (55.0, 90.0)),
        marrow=span((0.6, 0.75), (2.1, 2.6)),
        viscera=span((0.6, 0.75), (2.2, 2.7)),
        salivary=span((0.9, 1.1), (4.8, 6.5)),
        tonsil=span((1.1, 1.5), (7.0, 9.0)),
        thyroid=span((0.6, 0.75), (3.3, 5.0)),
    ),
    scanner=ScannerRanges(
        pet_fwhm_mm=span((3.5, 4.1), (9.0, 11.0)),
        pet_count_factor=span((0.006, 0.009), (0.09, 0.14)),
        ct_noise_hu=span((3.0, 6.0), (32.0, 45.0)),
    ),
)

LEVELS: dict[str, Variability] = {v.level: v for v in (DEFAULT, WIDE, OUT_OF_RANGE)}


# -------------------------------------------------------------------------------------------------- draws
def patient_stream(patient_seed: int) -> np.random.Generator:
    """The random stream of a patient's variability draws (body, organs but the bladder, liver, spleen,
    marrow uptake); separate from the anatomy's own stream."""
    return np.random.default_rng([int(patient_seed), 21])


def study_stream(seed: int) -> np.random.Generator:
    """The random stream of a study's variability draws (bladder, uptake, scanner)."""
    return np.random.default_rng([int(seed), 22])


@dataclass
class OrganDraw:
    """One organ's drawn size, shape and position (``None``: today's model for that quantity)."""

    scale: float | None = None
    aspect_z: float | None = None
    aspect_xy: float | None = None
    shift_mm: tuple[float, float, float] | None = None  # canonical (x, y, d) mm
    shift_length_mm: float | None = None  # the drawn length of ``shift_mm``
    turn_deg: float | None = None

    def place(
        self, c: tuple[float, float, float], r: tuple[float, float, float], rotz: float
    ) -> tuple[tuple[float, float, float], tuple[float, float, float], float]:
        """Centre, radii (canonical mm) and rotation about z (deg) with this draw's shape and position."""
        rx, ry, rz = r
        if self.aspect_z is not None:
            k = math.sqrt(self.aspect_z)
            rx, ry, rz = rx / k, ry / k, rz * self.aspect_z
        if self.aspect_xy is not None:
            k = math.sqrt(self.aspect_xy)
            rx, ry = rx * k, ry / k
        if self.shift_mm is not None:
            c = (c[0] + self.shift_mm[0], c[1] + self.shift_mm[1], c[2] + self.shift_mm[2])
        return c, (rx, ry, rz), rotz + (self.turn_deg or 0.0)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {k: v for k, v in vars(self).items() if v is not None}
        if self.shift_mm is not None:
            rec["shift_mm"] = list(self.shift_mm)
        return rec


def draw_organ(rng: np.random.Generator, ranges: OrganRanges) -> OrganDraw:
    """Draw one organ: scale, aspects, then a shift (length, uniform direction), then a turn (sign)."""
    d = OrganDraw(**_draw_group(rng, ranges, ("scale", "aspect_z", "aspect_xy")))
    if ranges.shift_mm is not None:
        d.shift_length_mm = ranges.shift_mm.draw(rng)
        u = rng.standard_normal(3)
        u *= d.shift_length_mm / max(float(np.linalg.norm(u)), 1e-9)
        d.shift_mm = (float(f"{u[0]:.5g}"), float(f"{u[1]:.5g}"), float(f"{u[2]:.5g}"))
    if ranges.turn_deg is not None:
        d.turn_deg = float(rng.choice([-1.0, 1.0])) * ranges.turn_deg.draw(rng)
    return d


# organ instances drawn per patient, and the ranges each uses
PATIENT_ORGANS = (
    ("heart", "heart"),
    ("lung_r", "lungs"),
    ("lung_l", "lungs"),
    ("liver", "liver"),
    ("spleen", "spleen"),
    ("kidney_r", "kidneys"),
    ("kidney_l", "kidneys"),
)


@dataclass
class Draws:
    """Everything one study drew: body factors, organ draws, SUVs, scanner settings (only set ranges)."""

    level: str
    body: dict[str, float] = field(default_factory=dict)
    organs: dict[str, OrganDraw] = field(default_factory=dict)
    uptake: dict[str, float] = field(default_factory=dict)
    scanner: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "body": dict(self.body),
            "organs": {k: d.record() for k, d in self.organs.items()},
            "uptake": dict(self.uptake),
            "scanner": dict(self.scanner),
        }


def _draw_group(
    rng: np.random.Generator,
    group: Any,
    names: tuple[str, ...] | None = None,
    log: bool = False,
    part: int | None = None,
    joint: tuple[str, ...] = (),
) -> dict[str, float]:
    """The set spans of ``group`` (those in ``names``, default all), in declaration order; the ``joint``
    fields draw from interval ``part`` (when given)."""
    out: dict[str, float] = {}
    for f in fields(group):
        s = getattr(group, f.name)
        if s is not None and (names is None or f.name in names):
            out[f.name] = s.draw(rng, log=log, part=part if f.name in joint else None)
    return out


def _draw_body(rng: np.random.Generator, body: BodyRanges) -> dict[str, float]:
    """Body factors; the ``JOINT`` ones share the interval picked when their spans allow (see BodyRanges)."""
    joint = [getattr(body, n) for n in BodyRanges.JOINT]
    counts = {len(s.parts) for s in joint if s is not None}
    shared = None not in joint and len(counts) == 1 and counts != {1}
    part = int(rng.integers(counts.pop())) if shared else None
    return _draw_group(rng, body, part=part, joint=BodyRanges.JOINT)


def draw_all(v: Variability, patient_seed: int, seed: int) -> Draws:
    """The draws of one study: patient-level from ``patient_seed``'s stream, study-level from ``seed``'s."""
    prng, srng = patient_stream(patient_seed), study_stream(seed)
    d = Draws(v.level, body=_draw_body(prng, v.body))
    for name, kind in PATIENT_ORGANS:
        d.organs[name] = draw_organ(prng, getattr(v.organs, kind))
    d.uptake = _draw_group(prng, v.uptake, PATIENT_UPTAKE, log=True)
    d.organs["bladder"] = draw_organ(srng, v.organs.bladder)
    d.uptake.update(_draw_group(srng, v.uptake, STUDY_UPTAKE, log=True))
    d.scanner = _draw_group(srng, v.scanner)
    return d


def apply_uptake(suvs: dict[str, float], uptake: dict[str, float]) -> dict[str, float]:
    """Today's SUVs with the drawn ones in their place (white matter follows grey matter at 0.45x)."""
    out = {**suvs, **uptake}
    if "brain_gm" in uptake:
        out["brain_wm"] = 0.45 * uptake["brain_gm"]
    return out
