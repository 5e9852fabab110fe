"""Evaluate a folder of predictions against ground truth: match, load, score every case, summarise."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h2aseg.evaluation.matching import (
    CasePair,
    Matching,
    ground_truth_masks,
    load_pair,
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
    hecktor = protocol == "hecktor"
    loaded = load_pair(pair, resample=resample, allowed_labels=PROTOCOL_LABELS[protocol], label_map=label_map)
    row = evaluate_case(
        loaded.pred,
        loaded.gt,
        loaded.spacing,
        voxel_ml=loaded.voxel_ml,
        hd95_convention=hd95_convention,  # type: ignore[arg-type]
        hd95_empty_penalty=hd95_empty_penalty,
        classes=HECKTOR_CLASSES if hecktor else None,
    )
    return {
        "case_id": pair.case_id,
        **row,
        "prediction_missing": int(pair.pred is None),
        "resampled": int(loaded.resampled),
    }


def evaluate_folders(
    pred_dir: str | Path,
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
) -> EvaluationResult:
    """Score every ground-truth case against ``pred_dir/<case_id>.<ext>``.

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
    matching = match_cases(rename_cases(mask_folder(pred_dir), ids), gt, allow_missing=allow_missing)
    kw = dict(
        protocol=protocol,
        hd95_convention=hd95_convention,
        hd95_empty_penalty=hd95_empty_penalty,
        resample=resample,
        label_map=dict(label_map or {}),
    )
    rows: list[dict[str, Any]] = []
    if jobs > 1 and len(matching.pairs) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            futures = [ex.submit(score_pair, p, **kw) for p in matching.pairs]  # type: ignore[arg-type]
            for p, fut in zip(matching.pairs, futures, strict=True):
                rows.append(fut.result())
                if on_case:
                    on_case(p.case_id, len(rows), len(matching.pairs))
    else:
        for p in matching.pairs:
            rows.append(score_pair(p, **kw))  # type: ignore[arg-type]
            if on_case:
                on_case(p.case_id, len(rows), len(matching.pairs))
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
    return EvaluationResult(rows=rows, summary=summary, matching=matching)
