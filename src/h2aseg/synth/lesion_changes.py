"""How a baseline's lesions change by its follow-up study, and the follow-up's new lesions.

Each baseline lesion independently stays (``stable``), shrinks, grows, changes uptake or vanishes, with the
probabilities of :data:`CHANGE_P`; then 0-2 new lesions appear (:data:`NEW_LESIONS_P`). A lesion shrinks or
grows about its own centre (shape kept, every axis scaled by the cube root of the volume factor, SUV kept);
an uptake change multiplies its SUV (shape kept). Everything is drawn in the baseline's world coordinates,
then the whole patient is repositioned (:mod:`~h2aseg.synth.repositioning`). The draws come from a stream of
their own (``[seed, 31]``), so the rest of the study draws as any study does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from h2aseg.synth.anatomy import Anatomy
from h2aseg.synth.lesions import Lesion, wholebody_lesions
from h2aseg.synth.repositioning import Repositioning, draw_repositioning
from h2aseg.synth.shapes import Mapped

CHANGES = ("stable", "shrink", "grow", "uptake", "vanished")
CHANGE_P = {"stable": 0.2, "shrink": 0.25, "grow": 0.2, "uptake": 0.15, "vanished": 0.2}
NEW_LESIONS_P = (0.4, 0.35, 0.25)  # 0, 1 or 2 new lesions
SHRINK_VOLUME = (0.25, 0.6)  # volume factor of a shrinking lesion (uniform)
GROW_VOLUME = (1.7, 3.0)
UPTAKE_DOWN = (0.35, 0.6)  # SUV factor of an uptake change: down or up, equal odds (uniform in each)
UPTAKE_UP = (1.6, 2.5)
MIN_SHRINK_VOXELS = 8  # a smaller baseline lesion stays (``stable``) where it would shrink to nothing
FOLLOWUP_STREAM = 31  # the random stream [seed, 31] of a follow-up's draws


def _mm(v: np.ndarray | Sequence[float]) -> list[float]:
    return [round(float(x), 2) for x in v]


@dataclass(frozen=True)
class Followup:
    """A follow-up's starting point: the baseline's patient, lesions (world mm) and their label voxels."""

    patient_seed: int
    baseline_lesions: Sequence[Lesion]
    baseline_voxels: Sequence[int]

    @classmethod
    def of(cls, baseline: dict[str, Any]) -> Followup:
        """From a :func:`~h2aseg.synth.study.synth_case` result (patient, ``lesions``, their voxels)."""
        meta = baseline["meta"]
        return cls(
            int(meta["patient_seed"]), list(baseline["lesions"]), [int(m["voxels"]) for m in meta["lesions"]]
        )


@dataclass(frozen=True)
class LesionChange:
    """One lesion's change; ``baseline_lesion`` indexes the baseline's ``lesions`` (None: a new lesion)."""

    change: str
    baseline_lesion: int | None
    volume_factor: float | None  # follow-up volume / baseline volume (0: vanished; None: new)
    suv_factor: float | None  # follow-up SUV / baseline SUV (0: vanished; None: new)
    baseline_center_mm: list[float] | None  # the baseline lesion's centre, baseline world mm

    def record(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "baseline_lesion": self.baseline_lesion,
            "volume_factor": self.volume_factor,
            "suv_factor": self.suv_factor,
            "baseline_center_mm": self.baseline_center_mm,
        }


def scaled(les: Lesion, volume_factor: float) -> Lesion:
    """``les`` with its volume times ``volume_factor``, scaled about its centre."""
    s = float(volume_factor) ** (1 / 3)
    shape = Mapped(les.shape, s * np.eye(3), (1.0 - s) * les.center)
    return replace(les, shape=shape, diameter_mm=les.diameter_mm * s)


def _draw_change(rng: np.random.Generator, les: Lesion, voxels: int, i: int) -> tuple[Lesion, LesionChange]:
    """Baseline lesion ``i``'s change (drawn) and the lesion it becomes (``vanished``: the baseline's)."""
    change = str(rng.choice(CHANGES, p=[CHANGE_P[c] for c in CHANGES]))
    if change == "shrink" and voxels < MIN_SHRINK_VOXELS:
        change = "stable"
    vol, suv = 1.0, 1.0
    if change in ("shrink", "grow"):
        vol = round(float(rng.uniform(*(SHRINK_VOLUME if change == "shrink" else GROW_VOLUME))), 3)
        les = scaled(les, vol)
    elif change == "uptake":
        suv = round(float(rng.uniform(*(UPTAKE_DOWN if rng.random() < 0.5 else UPTAKE_UP))), 3)
        les = replace(les, suv=les.suv * suv)
    elif change == "vanished":
        vol, suv = 0.0, 0.0
    return les, LesionChange(change, i, vol, suv, _mm(les.center))


@dataclass
class Evolution:
    """A follow-up's draws: the repositioning, its lesions (follow-up world) and their changes."""

    repositioning: Repositioning
    lesions: list[Lesion]  # changed baseline lesions, then new ones; moved
    changes: list[LesionChange]  # one per lesion
    vanished: list[LesionChange]  # baseline lesions drawn to vanish

    def meta(self, kept: Sequence[Lesion], lesion_meta: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``repositioning``, ``lesions`` (the kept ones, with their change) and ``vanished_lesions``.

        A lesion left with no voxel on the grid (shrunk below the voxel size, moved off the grid) is listed
        as vanished, its drawn change in ``drawn_change``; such a new lesion is dropped.
        """
        change_of = {id(les): ch for les, ch in zip(self.lesions, self.changes, strict=True)}
        kept_ids = {id(les) for les in kept}
        lesions = [{**m, **change_of[id(les)].record()} for les, m in zip(kept, lesion_meta, strict=True)]
        lost = [ch for les, ch in zip(self.lesions, self.changes, strict=True) if id(les) not in kept_ids]
        gone = self.vanished + [ch for ch in lost if ch.change != "new"]
        vanished = sorted((self._vanished(ch) for ch in gone), key=lambda r: int(r["baseline_lesion"]))
        return {
            "repositioning": self.repositioning.record(),
            "lesions": lesions,
            "vanished_lesions": vanished,
        }

    def _vanished(self, ch: LesionChange) -> dict[str, Any]:
        """The record of a baseline lesion that is gone (``center_mm``: its centre, follow-up world)."""
        rec = {**ch.record(), "change": "vanished", "volume_factor": 0.0, "suv_factor": 0.0}
        rec["center_mm"] = _mm(self.repositioning.apply(rec["baseline_center_mm"]))
        if ch.change != "vanished":
            rec["drawn_change"] = ch.change
        return rec


def evolve(followup: Followup, seed: int, anat: Anatomy, min_spacing: float) -> Evolution:
    """Draw a follow-up of ``followup``'s lesions in the (unmoved) patient ``anat`` and reposition it all.

    ``seed`` is the follow-up study's seed; ``min_spacing`` (mm) bounds the size of new lesions as for any
    study. The repositioning turns the body about its axis through the body's middle (d = 500 mm).
    """
    rng = np.random.default_rng([int(seed), FOLLOWUP_STREAM])
    repo = draw_repositioning(rng, anat.frame.p(0.0, 0.0, 500.0))
    lesions, changes, vanished = [], [], []
    for i, (les, vox) in enumerate(zip(followup.baseline_lesions, followup.baseline_voxels, strict=True)):
        new, ch = _draw_change(rng, les, vox, i)
        if ch.change == "vanished":
            vanished.append(ch)
        else:
            lesions.append(new)
            changes.append(ch)
    n_new = int(rng.choice(len(NEW_LESIONS_P), p=NEW_LESIONS_P))
    for les in wholebody_lesions(rng, anat, n_new, min_spacing):
        lesions.append(les)
        changes.append(LesionChange("new", None, None, None, None))
    return Evolution(repo, [repo.move_lesion(les) for les in lesions], changes, vanished)
