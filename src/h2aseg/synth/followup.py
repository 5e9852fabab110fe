"""Known correspondences of a follow-up cohort (``h2aseg synth --followup``), read from ``phantom.json``.

:func:`followup_pairs` gives one :class:`FollowupPair` per follow-up study: its baseline's case id, the
repositioning (baseline world -> follow-up world, RAS+ mm) and one :class:`LesionLink` per lesion of either
study: matched (``stable``, ``shrink``, ``grow``, ``uptake``), ``vanished`` (baseline only) or ``new``
(follow-up only). Lesion indices are positions in the studies' ``lesions`` lists of ``phantom.json``; a label
component is tied to a lesion by the lesion's centre (``center_mm``, world mm), as docs/phantom.md describes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.synth.errors import PhantomError
from h2aseg.synth.lesion_changes import CHANGES
from h2aseg.synth.repositioning import Repositioning

Vec3 = tuple[float, float, float]
MATCHED = ("stable", "shrink", "grow", "uptake")
KINDS_OF_CHANGE = (*CHANGES, "new")


@dataclass(frozen=True)
class LesionLink:
    """One lesion's fate between a baseline and its follow-up."""

    change: str  # stable | shrink | grow | uptake | vanished | new
    baseline_lesion: int | None  # index in the baseline's lesions (None: new)
    followup_lesion: int | None  # index in the follow-up's lesions (None: vanished)
    volume_factor: float | None  # follow-up / baseline volume (0: vanished, None: new)
    suv_factor: float | None  # follow-up / baseline SUV (0: vanished, None: new)
    baseline_center_mm: Vec3 | None  # baseline world mm (None: new)
    center_mm: Vec3  # follow-up world mm (vanished: where the baseline centre lands)


@dataclass(frozen=True)
class FollowupPair:
    """A baseline study, its follow-up, the repositioning between them and every lesion's fate."""

    patient_id: str
    baseline: str  # case id
    followup: str  # case id
    repositioning: Repositioning
    links: tuple[LesionLink, ...]

    @property
    def matched(self) -> list[LesionLink]:
        """Links of lesions present in both studies."""
        return [k for k in self.links if k.change in MATCHED]

    @property
    def vanished(self) -> list[LesionLink]:
        return [k for k in self.links if k.change == "vanished"]

    @property
    def new(self) -> list[LesionLink]:
        return [k for k in self.links if k.change == "new"]

    def to_followup(self, points_mm: np.ndarray | Sequence[float]) -> np.ndarray:
        """Baseline world points ``(..., 3)`` (mm) where they lie in the follow-up's world."""
        return self.repositioning.apply(points_mm)


def _vec(v: Any) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def _factor(v: Any) -> float | None:
    return None if v is None else float(v)


def _link(rec: dict[str, Any], index: int | None, n_base: int, where: str) -> LesionLink:
    change = str(rec["change"])
    base = rec["baseline_lesion"]
    if change not in KINDS_OF_CHANGE:
        raise PhantomError(f"{where}: unknown change {change!r}; known: {', '.join(KINDS_OF_CHANGE)}")
    if (base is None) != (change == "new"):
        raise PhantomError(f"{where}: change {change!r} with baseline_lesion {base!r}")
    if base is not None and not 0 <= int(base) < n_base:
        raise PhantomError(f"{where}: baseline_lesion {base} is not one of the baseline's {n_base} lesions")
    return LesionLink(
        change=change,
        baseline_lesion=None if base is None else int(base),
        followup_lesion=index,
        volume_factor=_factor(rec["volume_factor"]),
        suv_factor=_factor(rec["suv_factor"]),
        baseline_center_mm=None if rec.get("baseline_center_mm") is None else _vec(rec["baseline_center_mm"]),
        center_mm=_vec(rec["center_mm"]),
    )


def _pair(c: dict[str, Any], by_id: dict[str, dict[str, Any]], path: Path) -> FollowupPair:
    cid = str(c["case_id"])
    where = f"{path}: case {cid}"
    base_id = str(c["followup_of"])
    if base_id not in by_id:
        raise PhantomError(f"{where}: followup_of {base_id!r} is not a case of this record")
    n_base = len(by_id[base_id]["lesions"])
    repo = Repositioning.from_record(c["repositioning"], where)
    links = [_link(les, i, n_base, f"{where}: lesion {i}") for i, les in enumerate(c["lesions"])]
    links += [_link(les, None, n_base, f"{where}: vanished lesion") for les in c["vanished_lesions"]]
    seen = [k.baseline_lesion for k in links if k.baseline_lesion is not None]
    if sorted(seen) != list(range(n_base)):
        raise PhantomError(
            f"{where}: the follow-up accounts for baseline lesions {sorted(seen)}, not for each of the "
            f"{n_base} once"
        )
    return FollowupPair(str(c["patient_id"]), base_id, cid, repo, tuple(links))


def followup_pairs(path: str | Path) -> list[FollowupPair]:
    """The follow-up pairs of a ``phantom.json`` (``path`` itself, or in the folder ``path``), in file order.

    A cohort without follow-ups gives ``[]``; a missing file, or a record that is not a phantom record or
    whose follow-up fields are inconsistent, raises :class:`PhantomError` naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "phantom.json"
    if not path.is_file():
        raise PhantomError(f"{path}: phantom record not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        by_id = {str(c["case_id"]): c for c in doc["cases"]}
        return [_pair(c, by_id, path) for c in doc["cases"] if c.get("followup_of") is not None]
    except PhantomError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise PhantomError(f"{path}: not a follow-up record of h2aseg synth ({type(e).__name__}: {e})") from e
