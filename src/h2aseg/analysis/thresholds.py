"""Operating points from saved probability maps (``h2aseg analyze thresholds``).

``h2aseg predict --probabilities`` writes ``<case>_probability.nii.gz`` (the foreground probability on the
study's CT grid) beside each mask. Thresholding those maps at several values ``T`` gives the masks a
``--set infer.threshold=T`` prediction would give, without running the network again; each set of masks is
scored against the ground truth with :func:`h2aseg.evaluation.pipeline.evaluate_folders`, and the table lists
Dice, lesions found and false-positive lesions per threshold (``docs/analysis.md``). Choose a threshold on
validation studies, never on the test studies you report.

The rule is ``mask = probability >= T``, as :func:`h2aseg.inference.sliding.probabilities_to_mask`. Where a
study was predicted on its own grid the map and the mask share it and the rule reproduces predict's masks
exactly; where it was resampled (``data.target_spacing``), predict thresholds on the working grid and the
saved map is interpolated to the CT grid, so the two can differ at lesion edges. The table says how many
studies' masks the maps reproduce at ``reference`` (predict's threshold), so a reader knows which case holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.data.io import ImageError, probability_path, read_volume, write_volume
from h2aseg.errors import InputError
from h2aseg.evaluation.matching import mask_folder
from h2aseg.evaluation.pipeline import evaluate_folders
from h2aseg.evaluation.quantify import check_probability, csv_text
from h2aseg.evaluation.report import write_evaluation
from h2aseg.files import atomic_write_text


class ThresholdError(InputError):
    """A threshold sweep's input problem (a one-line message naming the file or option)."""


@dataclass(frozen=True)
class MaskCheck:
    """How the thresholded map at the reference threshold compares with predict's own mask of a case."""

    case_id: str
    differing_voxels: int


@dataclass(frozen=True)
class ThresholdRow:
    """One operating point: the masks ``probability >= threshold`` scored against the ground truth."""

    threshold: float
    n_cases: int
    n_lesion_cases: int
    dice: float
    dice_se: float
    studies_dice_zero: int
    gt_lesions: int
    lesions_found: int
    fp_lesions_per_study: float
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


def probability_maps(pred_dir: str | Path) -> dict[str, Path]:
    """``{case_id: <case>_probability.nii.gz}`` for every mask in ``pred_dir`` that has one beside it."""
    masks = mask_folder(pred_dir)
    maps = {cid: probability_path(p) for cid, p in masks.items() if probability_path(p).is_file()}
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
    pred_dir: str | Path,
    thresholds: Sequence[float],
    out: Path,
    *,
    reference: float | None = 0.5,
    on_case: Callable[[str], None] | None = None,
) -> list[MaskCheck]:
    """Write ``OUT/masks-t<T>/<case>.nii.gz`` = ``probability >= T`` for every case and threshold (atomic
    writes on the probability map's grid); with ``reference``, compare that threshold's mask with
    predict's."""
    pred_dir = Path(pred_dir)
    masks = mask_folder(pred_dir)
    checks: list[MaskCheck] = []
    inputs = tuple(masks.values()) + tuple(probability_path(p) for p in masks.values())
    for cid, prob_path in probability_maps(pred_dir).items():
        prob = read_volume(prob_path)
        check_probability(prob)
        for t in thresholds:
            arr = (prob.array >= t).astype(np.uint8)
            write_volume(
                threshold_folder(out, t, "masks") / f"{cid}.nii.gz", arr, prob.affine, protect=inputs
            )
        if reference is not None:
            own = read_volume(masks[cid], dtype=None)
            if own.shape != prob.shape:
                raise ImageError(
                    f"{masks[cid]}: shape {own.shape}, but its probability map {prob_path.name} has "
                    f"{prob.shape}; they come from different predictions"
                )
            differ = int(np.count_nonzero((np.asarray(own.array) > 0) != (prob.array >= reference)))
            checks.append(MaskCheck(cid, differ))
        if on_case:
            on_case(cid)
    return checks


def row_from_evaluation(threshold: float, rows: Sequence[Mapping[str, Any]]) -> ThresholdRow:
    """One :class:`ThresholdRow` from ``evaluate_folders``' per-case rows (Dice over studies with lesions,
    its standard error; lesion counts summed; false positives per study over every study)."""
    lesion = [r for r in rows if int(r["has_lesion"])]
    dice = np.array([float(r["dice"]) for r in lesion], dtype=np.float64)
    n = len(dice)
    se = float(dice.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return ThresholdRow(
        threshold=threshold,
        n_cases=len(rows),
        n_lesion_cases=n,
        dice=float(dice.mean()) if n else math.nan,
        dice_se=se,
        studies_dice_zero=int(np.count_nonzero(dice == 0.0)),
        gt_lesions=sum(int(r["gt_lesions"]) for r in rows),
        lesions_found=sum(int(r["tp_lesions"]) for r in rows),
        fp_lesions_per_study=float(np.mean([float(r["fp_lesions"]) for r in rows])) if rows else math.nan,
        fp_volume_ml_per_study=float(np.mean([float(r["fp_volume_ml"]) for r in rows])) if rows else math.nan,
    )


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
    on_case: Callable[[str], None] | None = None,
) -> tuple[list[ThresholdRow], list[MaskCheck], list[Path]]:
    """Threshold every probability map at each ``thresholds`` value, score each set of masks (``eval-t<T>``:
    per_case.csv, summary.json/md) and write ``thresholds.csv`` and ``thresholds.md``; returns the rows,
    the reference checks and the paths written."""
    out = Path(out)
    thresholds = tuple(sorted(set(thresholds)))
    checks = write_threshold_masks(pred_dir, thresholds, out, reference=reference, on_case=on_case)
    table: list[ThresholdRow] = []
    paths: list[Path] = []
    for t in thresholds:
        res = evaluate_folders(
            threshold_folder(out, t, "masks"), gt_root, protocol=protocol, gt_layout=gt_layout, jobs=jobs
        )
        paths += write_evaluation(threshold_folder(out, t, "eval"), res.rows, res.summary).values()
        table.append(row_from_evaluation(t, res.rows))
    paths.append(atomic_write_text(out / "thresholds.csv", table_csv(table)))
    paths.append(atomic_write_text(out / "thresholds.md", table_markdown(table, checks, reference, pred_dir)))
    return table, checks, paths


def table_csv(table: Sequence[ThresholdRow]) -> str:
    return csv_text([asdict(r) for r in table], [f.name for f in fields(ThresholdRow)])


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
        dice = "n/a" if math.isnan(r.dice) else f"{r.dice:.1f} ± {r.dice_se:.1f}"
        lines.append(
            f"| {r.threshold:g} | {dice} | {r.studies_dice_zero} / {r.n_lesion_cases} | "
            f"{r.lesions_found} / {r.gt_lesions} | {r.fp_lesions_per_study:.2f} | "
            f"{r.fp_volume_ml_per_study:.2f} |"
        )
    lines += [
        "",
        f"{table[0].n_cases} studies, {table[0].n_lesion_cases} with lesions; "
        "mask = probability >= threshold.",
    ]
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
