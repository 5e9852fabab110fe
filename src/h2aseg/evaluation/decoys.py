"""Which decoys a prediction marks: a synthetic cohort's unlabelled look-alikes (``--symmetric-decoys``).

A phantom written with ``h2aseg synth --symmetric-decoys`` holds pairs of node-like hot spots at mirrored
stations that are never labelled (:mod:`h2aseg.synth.decoys`); a model that outlines them counts false
positive lesions, but the lesion-wise metrics do not say that those false positives are the decoys. This
module does, from the decoys' recorded centres and diameters (``phantom.json``, read by
:func:`h2aseg.synth.decoy_sites`):

* a decoy is ``marked`` when at least one predicted voxel centre lies within its radius (half its recorded
  diameter) of its centre; ``marked_voxels`` counts them;
* a pair (the decoys of one station pair in one study, ``decoy:<station>_r`` and ``_l``) is marked on
  both sides, one side, or none.

The table (``decoys.md``) gives, per method, the decoys marked and the pairs marked on both / one side: a
model that tells symmetric uptake from a lesion marks none; one that outlines every hot spot marks both
sides of every pair (docs/phantom.md, "Symmetric decoys").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from h2aseg.data.io import ImageError, read_volume
from h2aseg.evaluation.detection import SiteHint
from h2aseg.evaluation.matching import EvaluationError, mask_folder
from h2aseg.evaluation.quantify import csv_text
from h2aseg.files import atomic_write_text


@dataclass(frozen=True)
class DecoyMark:
    """One decoy of one study and whether one method's mask marks it."""

    method: str
    case_id: str
    site: str
    diameter_mm: float
    marked_voxels: int
    marked: int

    @property
    def pair(self) -> str:
        """The station pair (``cervical`` for ``decoy:cervical_r``)."""
        return self.site.removeprefix("decoy:")[:-2]


def ball(
    shape: Sequence[int], affine: np.ndarray, center_mm: Sequence[float], radius_mm: float
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The voxels of a grid (``shape``, ``affine``) whose centres lie within ``radius_mm`` of ``center_mm``
    (world mm): the slices of their bounding window and a boolean mask over it; ``None`` when none do."""
    affine = np.asarray(affine, dtype=np.float64)
    ijk = np.linalg.solve(affine, [*center_mm, 1.0])[:3]
    reach = radius_mm / np.linalg.norm(affine[:3, :3], axis=0)  # voxels along each axis
    lo = np.maximum(np.floor(ijk - reach).astype(int), 0)
    hi = np.minimum(np.ceil(ijk + reach).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    idx = np.stack(np.meshgrid(*map(np.arange, lo, hi), indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world - np.asarray(center_mm), axis=-1) <= radius_mm
    return (tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), inside) if inside.any() else None


def marked_voxels(pred: np.ndarray, affine: np.ndarray, center_mm: Sequence[float], radius_mm: float) -> int:
    """Predicted voxels (``pred > 0``) whose centres lie within ``radius_mm`` of ``center_mm`` (world mm)."""
    found = ball(pred.shape, affine, center_mm, radius_mm)
    return 0 if found is None else int(np.count_nonzero(np.asarray(pred[found[0]])[found[1]] > 0))


def case_decoys(
    case_id: str, pred: np.ndarray, affine: np.ndarray, decoys: Sequence[SiteHint], *, method: str = ""
) -> list[DecoyMark]:
    """Each of ``decoys`` (one study's) as ``pred`` (a mask with its affine) marks it."""
    rows = []
    for d in decoys:
        n = marked_voxels(pred, affine, d.center_mm, d.diameter_mm / 2)
        rows.append(DecoyMark(method, case_id, d.site, float(d.diameter_mm), n, int(n > 0)))
    return rows


def method_decoys(
    method: str,
    pred_dir: Path,
    decoys: Mapping[str, Sequence[SiteHint]],
) -> list[DecoyMark]:
    """The decoys of every study that ``pred_dir`` holds a mask for (by case id); studies without a mask
    are not scored. A folder that predicts none of the studies with decoys raises, naming it."""
    masks = mask_folder(pred_dir)
    scored = sorted(set(masks) & set(decoys))
    if not scored:
        raise EvaluationError(
            f"{pred_dir} ({method}): no mask of a study with decoys ({len(decoys)} such studies recorded)"
        )
    rows: list[DecoyMark] = []
    for cid in scored:
        try:
            vol = read_volume(masks[cid], dtype=None)
        except ImageError as e:
            raise EvaluationError(str(e)) from e
        rows += case_decoys(cid, np.asarray(vol.array), vol.affine, decoys[cid], method=method)
    return rows


@dataclass(frozen=True)
class DecoySummary:
    """One method's decoys: marked out of all, and its pairs marked on both sides / one side."""

    method: str
    studies: int
    decoys: int
    marked: int
    pairs: int
    pairs_both: int
    pairs_one: int


def summarise(rows: Sequence[DecoyMark], methods: Sequence[str]) -> list[DecoySummary]:
    out = []
    for m in methods:
        mine = [r for r in rows if r.method == m]
        pairs: dict[tuple[str, str], list[int]] = {}
        for r in mine:
            pairs.setdefault((r.case_id, r.pair), []).append(r.marked)
        out.append(
            DecoySummary(
                method=m,
                studies=len({r.case_id for r in mine}),
                decoys=len(mine),
                marked=sum(r.marked for r in mine),
                pairs=len(pairs),
                pairs_both=sum(len(v) == 2 and all(v) for v in pairs.values()),
                pairs_one=sum(sum(v) == 1 for v in pairs.values()),
            )
        )
    return out


def _pct(k: int, n: int) -> str:
    return f"{k} / {n} ({100.0 * k / n:.0f} %)" if n else "0 / 0"


def table_markdown(summary: Sequence[DecoySummary]) -> str:
    lines = [
        "# Decoys marked (symmetric, unlabelled look-alikes of node lesions)",
        "",
        "| method | studies | decoys marked | pairs marked on both sides | pairs marked on one side |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s.method} | {s.studies} | {_pct(s.marked, s.decoys)} | {_pct(s.pairs_both, s.pairs)} | "
            f"{_pct(s.pairs_one, s.pairs)} |"
        )
    lines += [
        "",
        "A decoy is marked when a predicted voxel centre lies within its radius of its recorded centre "
        "(phantom.json). Fewer is better: a decoy is physiological uptake, never a lesion.",
    ]
    return "\n".join(lines) + "\n"


def write_decoys(rows: Sequence[DecoyMark], methods: Sequence[str], out_dir: str | Path) -> list[Path]:
    """Write ``decoys.csv`` (every decoy x method) and ``decoys.md`` (the summary per method)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = [f.name for f in fields(DecoyMark)]
    return [
        atomic_write_text(out / "decoys.csv", csv_text([asdict(r) for r in rows], cols)),
        atomic_write_text(out / "decoys.md", table_markdown(summarise(rows, methods))),
    ]
