"""Which ground-truth lesions a prediction finds, by uptake and by size (``h2aseg analyze detection``).

A Dice over a study hides *which* lesions a model misses. This module lists every ground-truth lesion
with its measures and whether the prediction found it, and tabulates the detection rate per SUVmax and
per volume stratum, for one or several methods on the same cases (``docs/evaluation.md``).

Rules (the lesion-wise rule of :mod:`h2aseg.evaluation.metrics`, on the ground truth's grid):

* a lesion is an 18-connected component of ``gt > 0`` (:func:`~h2aseg.evaluation.quantify.label_lesions`,
  as autoPET labels them); ``label`` is the highest label value inside it (HECKTOR: 1 GTVp, 2 GTVn);
* ``detected`` = 1 when at least one of its voxels is predicted (any overlap), ``covered`` = the fraction
  of its voxels that are predicted;
* ``site`` (synthetic cohorts only): the anatomical site ``h2aseg synth`` recorded in ``phantom.json`` for
  the lesion whose centre is nearest the component's centroid, within its diameter (at least
  :data:`SITE_TOLERANCE_MM`); empty when no recorded lesion is that close or the cohort has no record;
* ``volume_ml`` from the ground truth's voxels; ``suv_max`` / ``suv_mean`` over the lesion's voxels, the
  PET (SUV) image sampled at each voxel centre by nearest neighbour (no interpolation: every value is one
  of the PET's own voxels; on AutoPET the PET is on the label's grid and is read as it is). Voxels outside
  the PET's field of view read 0.

Strata are half-open intervals ``[lo, hi)`` between the given edges (``< 3``, ``3-5``, ``5-8``, ``>= 8`` for
the default SUVmax edges); with sites, one stratum per site without its side (``node:iliac_l`` and
``node:iliac_r`` are ``node:iliac``). Lesion-free studies add no row: false positives are
:mod:`h2aseg.evaluation.metrics`' business (``fp_lesions`` in ``h2aseg evaluate``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from h2aseg.data.geometry import resample_to_grid, voxel_volume_ml
from h2aseg.data.io import ImageError, Volume, check_finite, read_volume
from h2aseg.data.layouts import Case
from h2aseg.evaluation.matching import CasePair, EvaluationError, load_pair, mask_folder, match_cases
from h2aseg.evaluation.quantify import CONNECTIVITY, csv_text, label_lesions, lesion_measures
from h2aseg.files import atomic_write_text

DEFAULT_SUV_EDGES = (3.0, 5.0, 8.0)
DEFAULT_VOLUME_EDGES_ML = (1.0, 10.0)
SITE_TOLERANCE_MM = 10.0


class SiteHint(Protocol):
    """A recorded lesion position (:class:`h2aseg.synth.cohort.LesionSite` is one)."""

    @property
    def center_mm(self) -> tuple[float, float, float]: ...
    @property
    def diameter_mm(self) -> float: ...
    @property
    def site(self) -> str: ...


@dataclass(frozen=True)
class GtLesion:
    """One ground-truth lesion of one case, and what one method's prediction made of it."""

    method: str
    case_id: str
    lesion_id: int
    label: int
    voxels: int
    volume_ml: float
    suv_max: float
    suv_mean: float
    centroid_x_mm: float
    centroid_y_mm: float
    centroid_z_mm: float
    covered: float
    detected: int
    site: str = ""


def gt_lesions(
    case_id: str,
    gt: np.ndarray,
    pred: np.ndarray,
    suv: np.ndarray,
    affine: np.ndarray,
    *,
    method: str = "",
    sites: Sequence[SiteHint] = (),
    connectivity: int = CONNECTIVITY,
) -> list[GtLesion]:
    """The lesions of ``gt`` with their measures on ``suv`` and their coverage by ``pred`` (one grid);
    ``sites``: the case's recorded lesion positions, if any."""
    if not (gt.shape == pred.shape == suv.shape):
        raise EvaluationError(
            f"{case_id}: ground truth, prediction and SUV differ in shape "
            f"({gt.shape}, {pred.shape}, {suv.shape})"
        )
    labels, n = label_lesions(gt, connectivity)
    if n == 0:
        return []
    affine = np.asarray(affine, dtype=np.float64)
    counts, sums, maxima, centroids = lesion_measures(np.asarray(suv, dtype=np.float64), labels, n, affine)
    hit = np.bincount(labels[np.asarray(pred) > 0].astype(np.int64), minlength=n + 1)[1:]
    top = np.asarray(ndimage.maximum(np.asarray(gt), labels, np.arange(1, n + 1))).reshape(n)
    voxel_ml = voxel_volume_ml(np.linalg.norm(affine[:3, :3], axis=0))
    names = _site_names(centroids, sites)
    return [
        GtLesion(
            method=method,
            case_id=case_id,
            lesion_id=k + 1,
            label=int(top[k]),
            voxels=int(counts[k]),
            volume_ml=float(counts[k] * voxel_ml),
            suv_max=float(maxima[k]),
            suv_mean=float(sums[k] / counts[k]),
            centroid_x_mm=float(centroids[k, 0]),
            centroid_y_mm=float(centroids[k, 1]),
            centroid_z_mm=float(centroids[k, 2]),
            covered=float(hit[k] / counts[k]),
            detected=int(hit[k] > 0),
            site=names[k],
        )
        for k in range(n)
    ]


def _site_names(centroids: np.ndarray, sites: Sequence[SiteHint]) -> list[str]:
    """Per centroid, the site of the nearest recorded lesion within its diameter (or the tolerance)."""
    if not sites:
        return [""] * len(centroids)
    centres = np.array([s.center_mm for s in sites], dtype=np.float64)
    reach = np.array([max(s.diameter_mm, SITE_TOLERANCE_MM) for s in sites])
    out = []
    for c in centroids:
        d = np.linalg.norm(centres - c, axis=1)
        j = int(np.argmin(d))
        out.append(sites[j].site if d[j] <= reach[j] else "")
    return out


def site_group(site: str) -> str:
    """A site without its side: ``node:iliac_l`` -> ``node:iliac``; ``""`` -> ``unknown``."""
    if not site:
        return "unknown"
    return site[:-2] if site.endswith(("_l", "_r")) else site


def case_lesions(
    case: Case,
    pred: Path | None,
    *,
    method: str = "",
    resample: bool = False,
    sites: Sequence[SiteHint] = (),
) -> list[GtLesion]:
    """:func:`gt_lesions` of one case from files: its label and PET (``case``) and a predicted mask.

    ``pred=None`` scores an empty prediction. Every file problem is an :class:`EvaluationError` naming it.
    """
    if case.label is None:
        raise EvaluationError(f"{case.case_id}: the case has no ground-truth label")
    pair = load_pair(CasePair(case.case_id, Path(case.label), pred), resample=resample)
    try:
        pet = read_volume(case.pet)
        check_finite(pet)
    except ImageError as e:
        raise EvaluationError(str(e)) from e
    gt = Volume(pair.gt, np.asarray(pair.affine), str(case.label))
    suv = (
        pet.array
        if gt.same_grid(pet)
        else resample_to_grid(pet.array, pet.affine, gt.affine, gt.shape, order=0)
    )
    return gt_lesions(case.case_id, gt.array, pair.pred, suv, gt.affine, method=method, sites=sites)


def method_lesions(
    method: str,
    pred_dir: Path,
    cases: Sequence[Case],
    *,
    allow_missing: bool = False,
    resample: bool = False,
    sites: Mapping[str, Sequence[SiteHint]] | None = None,
    on_case: Callable[[str], None] | None = None,
) -> list[GtLesion]:
    """The lesions of every labelled case in ``cases`` as found by the masks in ``pred_dir`` (by case id);
    ``sites``: recorded lesion positions per case id (a synthetic cohort's ``phantom.json``)."""
    labelled = {c.case_id: c for c in cases if c.label is not None}
    if not labelled:
        raise EvaluationError(f"no case has a ground-truth label ({len(cases)} case(s) given)")
    try:
        gt = {k: Path(str(c.label)) for k, c in labelled.items()}
        matching = match_cases(mask_folder(pred_dir), gt, allow_missing=allow_missing)
    except EvaluationError as e:
        raise EvaluationError(f"{pred_dir} ({method}): {e}") from e
    rows: list[GtLesion] = []
    for pair in matching.pairs:
        hints = (sites or {}).get(pair.case_id, ())
        rows += case_lesions(labelled[pair.case_id], pair.pred, method=method, resample=resample, sites=hints)
        if on_case is not None:
            on_case(pair.case_id)
    return rows


def predicted_cases(cases: Sequence[Case], pred_dirs: Sequence[Path]) -> list[Case]:
    """The labelled cases that at least one of ``pred_dirs`` has a mask for (a test split's predictions
    score against a whole dataset folder); none raises an :class:`EvaluationError` naming the folders."""
    predicted: set[str] = set()
    for d in pred_dirs:
        predicted |= set(mask_folder(d))
    out = [c for c in cases if c.label is not None and c.case_id in predicted]
    if not out:
        folders = ", ".join(str(d) for d in pred_dirs)
        raise EvaluationError(
            f"no prediction in {folders} matches a labelled case id of the dataset ({len(cases)} case(s))"
        )
    return out


# ------------------------------------------------------------------------------------------- the table
def check_edges(edges: Sequence[float], what: str) -> tuple[float, ...]:
    """``edges`` as a strictly increasing tuple of finite numbers, else an :class:`EvaluationError`."""
    out = tuple(float(e) for e in edges)
    if not out or any(not math.isfinite(e) for e in out) or any(b <= a for a, b in itertools.pairwise(out)):
        raise EvaluationError(f"{what} edges must be finite and strictly increasing, got {list(edges)}")
    return out


def parse_edges(text: str, option: str, what: str) -> tuple[float, ...]:
    """``"3,5,8"`` (the value of ``option``) -> ``(3.0, 5.0, 8.0)``, checked by :func:`check_edges`."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvaluationError(f"{option} {text!r}: expected comma-separated numbers, e.g. 3,5,8") from None
    return check_edges(values, what)


def strata(edges: Sequence[float], unit: str = "") -> list[tuple[str, float, float]]:
    """``[(name, lo, hi), ...]``: ``< e0``, ``e0-e1``, ..., ``>= eN`` (half-open ``[lo, hi)``)."""
    u = f" {unit}" if unit else ""
    cuts = [-math.inf, *edges, math.inf]
    names = [f"< {edges[0]:g}{u}"]
    names += [f"{a:g}-{b:g}{u}" for a, b in itertools.pairwise(edges)]
    names += [f">= {edges[-1]:g}{u}"]
    return [(name, lo, hi) for name, (lo, hi) in zip(names, itertools.pairwise(cuts), strict=True)]


@dataclass(frozen=True)
class StratumRow:
    """Detection of one method in one stratum."""

    by: str  # "SUVmax", "volume" or "all"
    stratum: str
    method: str
    lesions: int
    detected: int
    mean_covered: float  # mean over the stratum's lesions of the covered fraction, 0..1 (NaN: no lesion)

    @property
    def recall(self) -> float:
        return self.detected / self.lesions if self.lesions else math.nan


def stratify(
    rows: Sequence[GtLesion],
    methods: Sequence[str],
    *,
    suv_edges: Sequence[float] = DEFAULT_SUV_EDGES,
    volume_edges_ml: Sequence[float] = DEFAULT_VOLUME_EDGES_ML,
) -> list[StratumRow]:
    """Per method: all lesions, then each SUVmax stratum, each volume stratum and (when known) each site."""
    groups: list[tuple[str, str, Callable[[GtLesion], bool]]] = [("all", "all lesions", lambda r: True)]
    for name, lo, hi in strata(check_edges(suv_edges, "SUVmax")):
        groups.append(("SUVmax", name, lambda r, lo=lo, hi=hi: lo <= r.suv_max < hi))
    for name, lo, hi in strata(check_edges(volume_edges_ml, "volume"), "ml"):
        groups.append(("volume", name, lambda r, lo=lo, hi=hi: lo <= r.volume_ml < hi))
    if any(r.site for r in rows):
        for g in sorted({site_group(r.site) for r in rows}):
            groups.append(("site", g, lambda r, g=g: site_group(r.site) == g))
    out = []
    for by, name, keep in groups:
        for m in methods:
            sel = [r for r in rows if r.method == m and keep(r)]
            cov = float(np.mean([r.covered for r in sel])) if sel else math.nan
            out.append(StratumRow(by, name, m, len(sel), sum(r.detected for r in sel), cov))
    return out


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100.0 * v:.0f} %"


def table_markdown(table: Sequence[StratumRow], methods: Sequence[str], n_cases: Mapping[str, int]) -> str:
    """One row per stratum, per method a cell ``found/total (recall), covered``."""
    head = ["lesions by", "stratum", *methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells: dict[tuple[str, str], dict[str, StratumRow]] = {}
    for r in table:
        cells.setdefault((r.by, r.stratum), {})[r.method] = r
    for (by, name), per in cells.items():
        vals = [
            f"{per[m].detected}/{per[m].lesions} ({_pct(per[m].recall)}), covered {_pct(per[m].mean_covered)}"
            if per[m].lesions
            else "0/0"
            for m in methods
        ]
        lines.append("| " + " | ".join([by, name, *vals]) + " |")
    cases = ", ".join(f"{m}: {n_cases.get(m, 0)}" for m in methods)
    lines += [
        "",
        f"Studies with lesions per method: {cases}. A lesion is found when a predicted voxel touches it; "
        "covered = mean fraction of its voxels predicted. SUVmax from the PET at the lesion's voxels.",
    ]
    return "\n".join(lines) + "\n"


def write_detection(
    rows: Sequence[GtLesion],
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    suv_edges: Sequence[float] = DEFAULT_SUV_EDGES,
    volume_edges_ml: Sequence[float] = DEFAULT_VOLUME_EDGES_ML,
) -> list[Path]:
    """Write ``lesions.csv`` (every lesion x method), ``detection.csv`` and ``detection.md`` (the strata)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = stratify(rows, methods, suv_edges=suv_edges, volume_edges_ml=volume_edges_ml)
    n_cases = {m: len({r.case_id for r in rows if r.method == m}) for m in methods}
    lesion_cols = [f.name for f in fields(GtLesion)]
    table_rows = [{**asdict(t), "recall": t.recall} for t in table]
    table_cols = ["by", "stratum", "method", "lesions", "detected", "recall", "mean_covered"]
    return [
        atomic_write_text(out / "lesions.csv", csv_text([asdict(r) for r in rows], lesion_cols)),
        atomic_write_text(out / "detection.csv", csv_text(table_rows, table_cols)),
        atomic_write_text(out / "detection.md", table_markdown(table, methods, n_cases)),
    ]
