"""Evaluate a folder of predictions against ground truth: match, load, score every case, summarise."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h2aseg.evaluation.matching import (
    CasePair,
    Matching,
    ground_truth_masks,
    load_pairs,
    mask_folder,
    match_cases,
    rename_cases,
    select_cases,
)
from h2aseg.evaluation.metrics import HECKTOR_CLASSES, evaluate_case
from h2aseg.evaluation.report import PROTOCOLS, summarize
from h2aseg.evaluation.surface import HD95_CONVENTIONS

#: Label values each protocol accepts (after ``label_map``); anything else is an error naming the file.
PROTOCOL_LABELS: dict[str, tuple[int, ...]] = {"paper": (0, 1), "autopet": (0, 1), "hecktor": (0, 1, 2)}


@dataclass
class EvaluationResult:
    """Per-case rows (``case_id`` first), the summary and the matching that produced them."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    matching: Matching


def score_pair(
    pair: CasePair,
    *,
    protocol: str = "paper",
    hd95_convention: str = "medpy",
    hd95_empty_penalty: float | None = None,
    resample: bool = False,
    label_map: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """Load one pair and return its per-case row (see :func:`h2aseg.evaluation.metrics.evaluate_case`).

    ``label_map`` (``{value: label}``) is applied to both masks before they are checked against
    :data:`PROTOCOL_LABELS` and scored.
    """
    return score_pairs(
        [pair],
        protocol=protocol,
        hd95_convention=hd95_convention,
        hd95_empty_penalty=hd95_empty_penalty,
        resample=resample,
        label_map=label_map,
    )[0]


def score_pairs(
    pairs: Sequence[CasePair],
    *,
    protocol: str = "paper",
    hd95_convention: str = "medpy",
    hd95_empty_penalty: float | None = None,
    resample: bool = False,
    label_map: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """:func:`score_pair` for several predictions of one case, its ground truth read once."""
    hecktor = protocol == "hecktor"
    loaded = load_pairs(
        pairs, resample=resample, allowed_labels=PROTOCOL_LABELS[protocol], label_map=label_map
    )
    rows = []
    for pair, one in zip(pairs, loaded, strict=True):
        row = evaluate_case(
            one.pred,
            one.gt,
            one.spacing,
            voxel_ml=one.voxel_ml,
            hd95_convention=hd95_convention,  # type: ignore[arg-type]
            hd95_empty_penalty=hd95_empty_penalty,
            classes=HECKTOR_CLASSES if hecktor else None,
        )
        rows.append(
            {
                "case_id": pair.case_id,
                **row,
                "prediction_missing": int(pair.pred is None),
                "resampled": int(one.resampled),
            }
        )
    return rows


def evaluate_folders(pred_dir: str | Path, gt_root: str | Path, **options: Any) -> EvaluationResult:
    """Score every ground-truth case against ``pred_dir/<case_id>.<ext>``: :func:`evaluate_folder_sets`
    for one folder (``options``: its keywords)."""
    return evaluate_folder_sets([pred_dir], gt_root, **options)[0]


def evaluate_folder_sets(
    pred_dirs: Sequence[str | Path],
    gt_root: str | Path,
    *,
    protocol: str = "paper",
    gt_layout: str = "auto",
    hd95_convention: str = "medpy",
    hd95_empty_penalty: float | None = None,
    resample: bool = False,
    allow_missing: bool = False,
    label_map: Mapping[int, int] | None = None,
    case_ids: Mapping[str, str] | None = None,
    only_cases: Collection[str] | None = None,
    jobs: int = 1,
    on_case: Callable[[str, int, int], None] | None = None,
) -> list[EvaluationResult]:
    """Score every ground-truth case against ``<pred_dir>/<case_id>.<ext>`` of each of ``pred_dirs`` (e.g.
    one folder per threshold), one result per folder; each ground-truth mask is read once for all of them.
    Every folder is matched before any case is scored, so a folder with a missing case fails first.

    ``on_case(case_id, done, total)`` is called after each case (for progress display). Masks may hold only
    the protocol's :data:`PROTOCOL_LABELS` once ``label_map`` is applied. ``case_ids`` renames mask files on
    both sides before matching (file name -> case id; e.g. nnU-Net identifiers from export-nnunet's
    ``h2aseg_cases.json``, :func:`h2aseg.data.nnunet_export.load_case_map`); other names stay.
    ``only_cases`` keeps the ground-truth cases with those ids (e.g. one part of a split, as ``h2aseg
    predict --split`` predicts it); the others are not scored and not missed.

    Raises :class:`h2aseg.evaluation.matching.EvaluationError` (one-line message) on any input problem.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if hd95_convention not in HD95_CONVENTIONS:
        raise ValueError(f"unknown HD95 convention {hd95_convention!r} ({', '.join(HD95_CONVENTIONS)})")
    ids = dict(case_ids or {})
    gt = rename_cases(ground_truth_masks(gt_root, gt_layout), ids)
    if only_cases is not None:
        gt = select_cases(gt, only_cases, gt_root)
    matchings = [
        match_cases(rename_cases(mask_folder(d), ids), gt, allow_missing=allow_missing) for d in pred_dirs
    ]
    per_case = [list(pairs) for pairs in zip(*(m.pairs for m in matchings), strict=True)]  # GT order
    kw = dict(
        protocol=protocol,
        hd95_convention=hd95_convention,
        hd95_empty_penalty=hd95_empty_penalty,
        resample=resample,
        label_map=dict(label_map or {}),
    )
    scored: list[list[dict[str, Any]]] = []
    if jobs > 1 and len(per_case) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            futures = [ex.submit(score_pairs, pairs, **kw) for pairs in per_case]  # type: ignore[arg-type]
            for pairs, fut in zip(per_case, futures, strict=True):
                scored.append(fut.result())
                if on_case:
                    on_case(pairs[0].case_id, len(scored), len(per_case))
    else:
        for pairs in per_case:
            scored.append(score_pairs(pairs, **kw))  # type: ignore[arg-type]
            if on_case:
                on_case(pairs[0].case_id, len(scored), len(per_case))
    results = []
    for i, (pred_dir, matching) in enumerate(zip(pred_dirs, matchings, strict=True)):
        rows = [case_rows[i] for case_rows in scored]
        summary = summarize(
            rows,
            protocol=protocol,
            hd95_convention=hd95_convention,
            hd95_empty_penalty=hd95_empty_penalty,
            extra={
                "pred_dir": str(pred_dir),
                "gt": str(gt_root),
                "missing_predictions": matching.missing,
                "extra_predictions": matching.extra,
                "resampled_cases": [r["case_id"] for r in rows if r["resampled"]],
                "label_map": {str(k): v for k, v in sorted((label_map or {}).items())},
            },
        )
        results.append(EvaluationResult(rows=rows, summary=summary, matching=matching))
    return results
