"""Operating points from saved probability maps (``h2aseg analyze thresholds``).

``h2aseg predict --probabilities`` writes ``<case>_probability.nii.gz`` (the foreground probability on the
study's CT grid) beside each mask. Thresholding those maps at several values ``T`` gives the masks a
``--set infer.threshold=T`` prediction would give, without running the network again; each set of masks is
scored against the ground truth with :func:`h2aseg.evaluation.pipeline.evaluate_folder_sets` (each
ground-truth mask read once for all thresholds), and the table lists Dice, lesions found and false-positive
lesions per threshold (``docs/analysis.md``). Choose a threshold on validation studies, never on the test
studies you report.

The rule is ``mask = probability >= T``, as :func:`h2aseg.inference.sliding.probabilities_to_mask`. Where a
study was predicted on its own grid the map and the mask share it and the rule reproduces predict's masks
exactly; where it was resampled (``data.target_spacing``), predict thresholds on the working grid and the
saved map is interpolated to the CT grid, so the two can differ at lesion edges. The table says how many
studies' masks the maps reproduce at ``reference`` (predict's threshold), so a reader knows which case holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2aseg.data.io import ImageError, probability_path, read_volume, write_volume
from h2aseg.errors import InputError
from h2aseg.evaluation.matching import mask_folder
from h2aseg.evaluation.paired import SideSummary, side_summary
from h2aseg.evaluation.pipeline import evaluate_folder_sets
from h2aseg.evaluation.quantify import check_probability, csv_text
from h2aseg.evaluation.report import write_evaluation
from h2aseg.files import atomic_write_text

#: Protocols whose masks are binary (a foreground threshold applies).
BINARY_PROTOCOLS = ("paper", "autopet")


class ThresholdError(InputError):
    """A threshold sweep's input problem (a one-line message naming the file or option)."""


@dataclass(frozen=True)
class MaskCheck:
    """How the thresholded map at the reference threshold compares with predict's own mask of a case."""

    case_id: str
    differing_voxels: int


@dataclass(frozen=True)
class ThresholdRow:
    """One operating point: the masks ``probability >= threshold`` scored against the ground truth (the
    summary ``h2aseg evaluate-paired`` gives a model, and the false-positive volume per study)."""

    threshold: float
    n_cases: int
    scores: SideSummary
    fp_volume_ml_per_study: float


def parse_thresholds(text: str, option: str = "--thresholds") -> tuple[float, ...]:
    """``"0.2,0.3,0.5"`` -> sorted distinct values, each strictly between 0 and 1."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ThresholdError(
            f"{option} {text!r}: give numbers separated by commas, e.g. 0.2,0.3,0.5"
        ) from None
    if not values:
        raise ThresholdError(f"{option} {text!r}: give at least one threshold")
    bad = [v for v in values if not 0.0 < v < 1.0 or not math.isfinite(v)]
    if bad:
        raise ThresholdError(f"{option} {text!r}: thresholds lie strictly between 0 and 1 (got {bad[0]:g})")
    return tuple(sorted(set(values)))


def probability_maps(pred_dir: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{case_id: (mask, <case>_probability.nii.gz)}``; every mask in ``pred_dir`` must have its map."""
    masks = mask_folder(pred_dir)
    maps = {cid: (m, probability_path(m)) for cid, m in masks.items() if probability_path(m).is_file()}
    if not maps:
        raise ThresholdError(
            f"{pred_dir}: no <case>_probability.nii.gz beside the masks "
            "(predict with h2aseg predict --probabilities)"
        )
    without = sorted(set(masks) - set(maps))
    if without:
        raise ThresholdError(
            f"{pred_dir}: {len(without)} mask(s) without a probability map beside them, e.g. "
            f"{masks[without[0]].name}; predict the whole folder again with --probabilities"
        )
    return maps


def threshold_folder(out: Path, threshold: float, kind: str) -> Path:
    """``OUT/masks-t0.3`` or ``OUT/eval-t0.3``."""
    return out / f"{kind}-t{threshold:g}"


def write_threshold_masks(
    maps: dict[str, tuple[Path, Path]],
    thresholds: Sequence[float],
    out: Path,
    *,
    reference: float | None = 0.5,
    on_case: Callable[[str], None] | None = None,
) -> list[MaskCheck]:
    """Write ``OUT/masks-t<T>/<case>.nii.gz`` = ``probability >= T`` for every case of ``maps``
    (:func:`probability_maps`) and threshold (atomic writes on the probability map's grid); with
    ``reference``, compare that threshold's mask with predict's."""
    checks: list[MaskCheck] = []
    inputs = tuple(p for pair in maps.values() for p in pair)
    for cid, (mask_path, prob_path) in maps.items():
        prob = read_volume(prob_path)
        check_probability(prob)
        for t in thresholds:
            arr = (prob.array >= t).astype(np.uint8)
            write_volume(
                threshold_folder(out, t, "masks") / f"{cid}.nii.gz", arr, prob.affine, protect=inputs
            )
        if reference is not None:
            own = read_volume(mask_path, dtype=None)
            if own.shape != prob.shape:
                raise ImageError(
                    f"{mask_path}: shape {own.shape}, but its probability map {prob_path.name} has "
                    f"{prob.shape}; they come from different predictions"
                )
            differ = int(np.count_nonzero((np.asarray(own.array) > 0) != (prob.array >= reference)))
            checks.append(MaskCheck(cid, differ))
        if on_case:
            on_case(cid)
    return checks


def sweep_thresholds(
    pred_dir: str | Path,
    gt_root: str | Path,
    thresholds: Sequence[float],
    out: str | Path,
    *,
    reference: float | None = 0.5,
    protocol: str = "paper",
    gt_layout: str = "auto",
    jobs: int = 1,
    on_start: Callable[[int], None] | None = None,
    on_case: Callable[[str], None] | None = None,
) -> tuple[list[ThresholdRow], list[MaskCheck], list[Path]]:
    """Threshold every probability map at each ``thresholds`` value, score each set of masks (``eval-t<T>``:
    per_case.csv, summary.json/md) and write ``thresholds.csv`` and ``thresholds.md``; returns the rows,
    the reference checks and the paths written. ``on_start(n)`` once the cases are known."""
    if protocol not in BINARY_PROTOCOLS:
        raise ThresholdError(f"--protocol {protocol!r}: thresholds apply to binary masks (paper | autopet)")
    if reference is not None and not 0.0 < reference < 1.0:
        raise ThresholdError(f"--reference {reference:g}: a threshold lies strictly between 0 and 1")
    out = Path(out)
    thresholds = tuple(sorted(set(thresholds)))
    maps = probability_maps(pred_dir)
    if on_start:
        on_start(len(maps))
    checks = write_threshold_masks(maps, thresholds, out, reference=reference, on_case=on_case)
    table: list[ThresholdRow] = []
    paths: list[Path] = []
    folders = [threshold_folder(out, t, "masks") for t in thresholds]
    results = evaluate_folder_sets(folders, gt_root, protocol=protocol, gt_layout=gt_layout, jobs=jobs)
    for t, masks, res in zip(thresholds, folders, results, strict=True):  # each ground truth read once
        paths += write_evaluation(threshold_folder(out, t, "eval"), res.rows, res.summary).values()
        fp_ml = float(np.mean([float(r["fp_volume_ml"]) for r in res.rows]))
        table.append(ThresholdRow(t, len(res.rows), side_summary(f"t{t:g}", masks, res.rows), fp_ml))
    paths.append(atomic_write_text(out / "thresholds.csv", table_csv(table)))
    paths.append(atomic_write_text(out / "thresholds.md", table_markdown(table, checks, reference, pred_dir)))
    return table, checks, paths


def _csv_row(r: ThresholdRow) -> dict[str, object]:
    s, d = r.scores, r.scores.dice
    return {
        "threshold": r.threshold,
        "n_cases": r.n_cases,
        "n_lesion_cases": 0 if d is None else d.n,
        "dice": None if d is None else d.mean,
        "dice_se": None if d is None else d.se,
        "studies_dice_zero": s.studies_at_dice_zero,
        "gt_lesions": s.lesions_total,
        "lesions_found": s.lesions_found,
        "fp_lesions_per_study": s.fp_lesions_per_study,
        "fp_lesions_per_lesion_free_study": s.fp_lesions_per_lesion_free_study,
        "fp_volume_ml_per_study": r.fp_volume_ml_per_study,
    }


def table_csv(table: Sequence[ThresholdRow]) -> str:
    rows = [_csv_row(r) for r in table]
    return csv_text(rows, list(rows[0]))


def table_markdown(
    table: Sequence[ThresholdRow], checks: Sequence[MaskCheck], reference: float | None, pred_dir: str | Path
) -> str:
    lines = [
        f"# Operating points of {pred_dir}",
        "",
        "| threshold | Dice (%) ± SE | studies at Dice 0 | lesions found | FP lesions / study "
        "| FP ml / study |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        s = r.scores
        dice, n = ("n/a", 0) if s.dice is None else (s.dice.text(), s.dice.n)
        lines.append(
            f"| {r.threshold:g} | {dice} | {s.studies_at_dice_zero} / {n} | "
            f"{s.lesions_found} / {s.lesions_total} | {s.fp_lesions_per_study:.2f} | "
            f"{r.fp_volume_ml_per_study:.2f} |"
        )
    n_lesion = 0 if table[0].scores.dice is None else table[0].scores.dice.n
    lines += ["", f"{table[0].n_cases} studies, {n_lesion} with lesions; mask = probability >= threshold."]
    if reference is not None and checks:
        same = sum(c.differing_voxels == 0 for c in checks)
        text = (
            f"At {reference:g} the thresholded maps reproduce the prediction folder's own masks in {same} of "
            f"{len(checks)} studies"
        )
        if same < len(checks):
            worst = max(checks, key=lambda c: c.differing_voxels)
            text += (
                f"; the others differ by {sum(c.differing_voxels for c in checks)} voxels in all (most: "
                f"{worst.case_id}, {worst.differing_voxels}): those studies were predicted on another grid, "
                "or at another threshold than the reference, so the rows are close to, not equal to, "
                "predict's masks at each threshold"
            )
        lines += ["", text + "."]
    return "\n".join(lines) + "\n"
