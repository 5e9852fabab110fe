"""Does lesion confidence separate true from false-positive predicted lesions? (``h2aseg analyze confidence``)

Reads the ``<case>_lesions.csv`` files ``h2aseg predict --quantify`` writes beside its masks, labels each
predicted lesion true positive (``detected`` = 1: it has a voxel in the ground truth, the lesion-wise rule of
:mod:`h2aseg.evaluation.quantify`) or false positive, and gives, per score column, the ROC AUC of telling them
apart. ``detected`` comes from the CSV when it has the column; otherwise it is computed from the predicted
mask ``<case>.<ext>`` beside the CSV and the case's ground truth (labelled as the CSV was, its lesion voxel
counts checked against the CSV's ``voxels``).

**AUC** = the probability that a random TP lesion scores as more confident than a random FP lesion (ties
count one half): the Mann-Whitney ``U`` of the TP scores against the FP scores over ``n_tp x n_fp``
(:func:`scipy.stats.mannwhitneyu`; the same number as the area under the empirical ROC curve). For a score
where lower means more confident (``tta_volume_cv``) the score is negated first. ``auc_se`` is Hanley &
McNeil's (1982) standard error and ``ci_low``/``ci_high`` the normal 95 % interval on it (clipped to [0, 1]);
with fewer than ten lesions of either class read the AUC as a rough indication. Lesions with an empty cell
in a column are left out of that column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from h2aseg.errors import InputError
from h2aseg.evaluation.quantify import csv_text
from h2aseg.files import atomic_write_text

#: Score columns of lesions.csv and whether a higher value means a more confident lesion; the first three are
#: the confidence columns, the last two the plain PET measures as baselines.
SCORES: dict[str, bool] = {
    "prob_mean": True,
    "prob_max": True,
    "tta_volume_cv": False,
    "suv_max": True,
    "volume_ml": True,
}
LESIONS_SUFFIX = "_lesions.csv"
Z95 = 1.959963984540054


class ConfidenceError(InputError):
    """Unusable inputs of the confidence analysis (no lesion tables, a missing mask or ground truth)."""


@dataclass(frozen=True)
class ScoreAuc:
    """The ROC AUC of one score column over the lesions that have a value in it."""

    score: str
    higher_is_confident: bool
    n_tp: int
    n_fp: int
    auc: float
    auc_se: float
    ci_low: float
    ci_high: float


def roc_auc(tp_scores: Sequence[float], fp_scores: Sequence[float]) -> float:
    """P(TP score > FP score) + 0.5 P(equal): Mann-Whitney ``U / (n_tp n_fp)``; NaN when a class is empty."""
    tp, fp = np.asarray(tp_scores, dtype=np.float64), np.asarray(fp_scores, dtype=np.float64)
    if tp.size == 0 or fp.size == 0:
        return math.nan
    u = mannwhitneyu(tp, fp, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (tp.size * fp.size)


def hanley_mcneil_se(auc: float, n_tp: int, n_fp: int) -> float:
    """Hanley & McNeil's standard error of an AUC from ``n_tp`` positives and ``n_fp`` negatives."""
    if math.isnan(auc) or n_tp == 0 or n_fp == 0:
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_tp - 1) * (q1 - auc**2) + (n_fp - 1) * (q2 - auc**2)) / (n_tp * n_fp)
    return math.sqrt(max(var, 0.0))


def score_auc(score: str, higher_is_confident: bool, tp: Sequence[float], fp: Sequence[float]) -> ScoreAuc:
    """:class:`ScoreAuc` of one column from its TP and FP values (negated when lower is confident)."""
    sign = 1.0 if higher_is_confident else -1.0
    auc = roc_auc([sign * v for v in tp], [sign * v for v in fp])
    se = hanley_mcneil_se(auc, len(tp), len(fp))
    lo, hi = (max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)) if math.isfinite(se) else (math.nan,) * 2
    return ScoreAuc(score, higher_is_confident, len(tp), len(fp), auc, se, lo, hi)


# ---------------------------------------------------------------------------------------------- reading
def lesion_tables(pred_dir: str | Path) -> dict[str, Path]:
    """``{case_id: <case_id>_lesions.csv}`` directly inside ``pred_dir`` (what ``predict --quantify``
    writes); :class:`ConfidenceError` when there is none."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ConfidenceError(f"{pred_dir}: no such prediction folder")
    found = {
        p.name[: -len(LESIONS_SUFFIX)]: p for p in sorted(pred_dir.glob(f"*{LESIONS_SUFFIX}")) if p.is_file()
    }
    if not found:
        raise ConfidenceError(
            f"{pred_dir}: no <case>{LESIONS_SUFFIX} files; run h2aseg predict with --quantify first"
        )
    return found


def read_lesion_rows(path: Path) -> list[dict[str, str]]:
    """The rows of one lesions.csv; :class:`ConfidenceError` naming it without ``lesion_id``/``voxels``."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        missing = {"lesion_id", "voxels"} - set(reader.fieldnames or [])
    if missing:
        raise ConfidenceError(f"{path}: not a lesions.csv (no {', '.join(sorted(missing))} column)")
    return rows


def detected_from_masks(
    rows: list[dict[str, str]], mask_path: Path, gt_path: Path, csv_path: Path
) -> list[int]:
    """Per row, 1 when its lesion touches the ground truth: the mask labelled as ``lesions.csv`` labels it,
    on the ground truth's grid; the lesions must be the CSV's (same ids and voxel counts)."""
    from h2aseg.data.io import read_volume
    from h2aseg.evaluation.quantify import label_lesions, lesions_detected, mask_on_suv_grid

    gt = read_volume(gt_path, dtype=None)
    mask = mask_on_suv_grid(read_volume(mask_path, dtype=None), gt)
    labels, n = label_lesions(mask.array)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    hit = lesions_detected(labels, n, gt.array)
    assert hit is not None
    out = []
    for row in rows:
        lid = int(row["lesion_id"])
        if not 1 <= lid <= n or int(counts[lid]) != int(row["voxels"]):
            raise ConfidenceError(
                f"{csv_path}: lesion {lid} is not a lesion of {mask_path} on the ground truth's grid "
                f"({gt_path}); rerun h2aseg predict --quantify, or h2aseg quantify with --gt"
            )
        out.append(int(hit[lid - 1]))
    return out


def pooled_lesions(
    pred_dir: str | Path,
    gt: dict[str, Path] | None,
    *,
    on_case: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Every lesion of every ``<case>_lesions.csv`` in ``pred_dir`` with its ``detected`` flag and its
    score columns (float, NaN for an empty cell). ``gt``: ``{case_id: mask}``, needed for tables without a
    ``detected`` column."""
    from h2aseg.evaluation.matching import mask_folder

    tables = lesion_tables(pred_dir)
    masks = mask_folder(pred_dir)
    pooled: list[dict[str, object]] = []
    for case_id, path in tables.items():
        rows = read_lesion_rows(path)
        if rows and all(r.get("detected", "") != "" for r in rows):
            detected = [int(float(r["detected"])) for r in rows]
        elif rows:
            if gt is None or case_id not in gt:
                raise ConfidenceError(f"{path}: no detected column and no ground truth for case {case_id!r}")
            if case_id not in masks:
                raise ConfidenceError(f"{path}: no predicted mask {case_id}.nii.gz beside it")
            detected = detected_from_masks(rows, masks[case_id], gt[case_id], path)
        else:
            detected = []
        for row, hit in zip(rows, detected, strict=True):
            scores = {s: _float(row.get(s, ""), path, s) for s in SCORES}
            pooled.append({"case_id": case_id, "lesion_id": int(row["lesion_id"]), "detected": hit, **scores})
        if on_case:
            on_case(case_id)
    return pooled


def _float(text: str, path: Path, column: str) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ConfidenceError(f"{path}: {column} value {text!r} is not a number") from None


def score_aucs(lesions: Sequence[dict[str, object]]) -> list[ScoreAuc]:
    """:func:`score_auc` of every :data:`SCORES` column over ``lesions`` (rows of :func:`pooled_lesions`)."""
    out = []
    for score, higher in SCORES.items():
        values = [(float(les[score]), les["detected"]) for les in lesions]  # type: ignore[arg-type]
        tp = [v for v, d in values if d and not math.isnan(v)]
        fp = [v for v, d in values if not d and not math.isnan(v)]
        out.append(score_auc(score, higher, tp, fp))
    return out


# ---------------------------------------------------------------------------------------------- writing
def confidence_markdown(aucs: Sequence[ScoreAuc], n_cases: int, source: str) -> str:
    """The table of ``confidence.md``."""
    lines = [
        f"# Lesion confidence: TP vs FP predicted lesions ({source}, {n_cases} case(s))",
        "",
        "| score | more confident | TP lesions | FP lesions | ROC AUC | 95 % CI |",
        "|---|---|---:|---:|---:|---|",
    ]
    for a in aucs:
        ci = "–" if math.isnan(a.ci_low) else f"{a.ci_low:.3f} to {a.ci_high:.3f}"
        auc = "–" if math.isnan(a.auc) else f"{a.auc:.3f}"
        direction = "higher" if a.higher_is_confident else "lower"
        lines.append(f"| {a.score} | {direction} | {a.n_tp} | {a.n_fp} | {auc} | {ci} |")
    small = [a.score for a in aucs if not math.isnan(a.auc) and min(a.n_tp, a.n_fp) < 10]
    lines.append("")
    lines.append(
        "AUC = Mann-Whitney U / (n_TP x n_FP); CI: Hanley & McNeil standard error, normal 95 % interval."
    )
    if small:
        lines.append(f"Fewer than 10 TP or FP lesions behind {', '.join(small)}: read those AUCs as rough.")
    return "\n".join(lines) + "\n"


def analyze_confidence(
    pred_dir: str | Path,
    gt: dict[str, Path] | None,
    out_dir: str | Path,
    *,
    on_case: Callable[[str], None] | None = None,
) -> list[Path]:
    """Pool the lesions of ``pred_dir``, write ``confidence.csv`` (one row per score), ``lesions.csv`` (the
    pooled lesions) and ``confidence.md`` to ``out_dir``; returns the paths (``confidence.md`` last)."""
    lesions = pooled_lesions(pred_dir, gt, on_case=on_case)
    aucs = score_aucs(lesions)
    out_dir = Path(out_dir)
    n_cases = len(lesion_tables(pred_dir))
    table = csv_text([asdict(a) for a in aucs], [f.name for f in fields(ScoreAuc)])
    pooled = csv_text(list(lesions), ["case_id", "lesion_id", "detected", *SCORES])
    return [
        atomic_write_text(out_dir / "confidence.csv", table),
        atomic_write_text(out_dir / "lesions.csv", pooled),
        atomic_write_text(out_dir / "confidence.md", confidence_markdown(aucs, n_cases, Path(pred_dir).name)),
    ]
