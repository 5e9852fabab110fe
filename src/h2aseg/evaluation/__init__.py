"""Evaluation matching the paper's Table 1 and the AutoPET / HECKTOR 2022 scoring.

``metrics`` (per case), ``surface`` (HD95 conventions), ``matching`` (pairing files by case id),
``report`` (CSV / JSON / markdown / LaTeX, several runs), ``pipeline`` (a folder against ground truth).
Conventions and empty-mask rules: ``docs/evaluation.md``.
"""

from h2aseg.evaluation.matching import EvaluationError
from h2aseg.evaluation.metrics import (
    dice,
    evaluate_case,
    false_negative_volume,
    false_positive_volume,
    hecktor_aggregate,
    hecktor_case,
    lesion_stats,
    precision,
    recall,
)
from h2aseg.evaluation.pipeline import EvaluationResult, evaluate_folders
from h2aseg.evaluation.report import aggregate_runs, summarize, table1, write_evaluation, write_runs_table
from h2aseg.evaluation.surface import hd95, surface_distances

__all__ = [
    "EvaluationError",
    "EvaluationResult",
    "aggregate_runs",
    "dice",
    "evaluate_case",
    "evaluate_folders",
    "false_negative_volume",
    "false_positive_volume",
    "hd95",
    "hecktor_aggregate",
    "hecktor_case",
    "lesion_stats",
    "precision",
    "recall",
    "summarize",
    "surface_distances",
    "table1",
    "write_evaluation",
    "write_runs_table",
]
