"""Per-case segmentation metrics: the paper's, AutoPET's and HECKTOR 2022's, plus lesion-wise detection.

All functions take masks as arrays on the same voxel grid and the voxel ``spacing`` in mm along the array
axes. Masks are binarised as ``label > 0`` (foreground) except for HECKTOR's per-class Dice.

Conventions (see ``docs/evaluation.md`` for sources):

* **Dice, precision, recall** in percent: ``200|P∩G|/(|P|+|G|)``, ``100|P∩G|/|P|``, ``100|P∩G|/|G|``
  (precision and recall = 100 x medpy's).
* **HD95** in mm, :mod:`h2aseg.evaluation.surface` (``"medpy"`` pooled percentile by default).
* **AutoPET FP/FN volume** in ml, exactly as the challenge scripts (``lab-midas/autoPET:val_script.py``,
  autoPET III ``evaluation_metrics.py``): components by ``cc3d.connected_components(connectivity=18)``; a
  prediction component with no voxel in the ground truth counts whole as false positive, a ground-truth
  component with no voxel in the prediction whole as false negative; times the voxel volume from the header.
* **Lesion-wise detection**: the same 18-connected components; a GT lesion touched by >= 1 predicted voxel is
  detected (TP), otherwise missed (FN); a predicted component touching no GT voxel is a false lesion (FP).
* **HECKTOR 2022**: per-class Dice for GTVp (1) and GTVn (2) and the per-class TP / volume sums in mm³ that
  the official notebook aggregates (:func:`hecktor_aggregate`).

Empty-mask rules (per case; one rule under every protocol, table in ``docs/evaluation.md``): Dice, FP and FN
volume are those of autoPET's ``val_script.py``: Dice ``2|P∩G|/(|P|+|G|)`` is ``NaN`` only when both masks
are empty (0 for a false-positive-only lesion-free case), FN volume is 0 on a lesion-free case. Precision
and recall are those of ``medpy.metric.binary.precision/recall``: a zero denominator gives 0 (one mask
empty, or both). HD95 is ``NaN`` when either mask is empty (no surface), or ``hd95_empty_penalty`` mm for a
lesion case with an empty prediction. Which cases enter a summary mean is decided by
:func:`h2aseg.evaluation.report.summarize` from ``has_lesion``, not by ``NaN``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

from h2aseg.data.geometry import voxel_volume_ml
from h2aseg.evaluation.surface import HD95Convention, as_spacing, hd95, union_bounding_box

AUTOPET_CONNECTIVITY = 18
HECKTOR_CLASSES: dict[str, int] = {"gtvp": 1, "gtvn": 2}

#: Columns of :func:`evaluate_case`, in CSV order (the HECKTOR columns only with ``classes``).
CORE_COLUMNS = ("dice", "hd95", "precision", "recall", "fp_volume_ml", "fn_volume_ml")
LESION_COLUMNS = (
    "gt_lesions",
    "pred_lesions",
    "tp_lesions",
    "fn_lesions",
    "fp_lesions",
    "mtv_gt_ml",
    "mtv_pred_ml",
)


def hecktor_columns(classes: Mapping[str, int] = HECKTOR_CLASSES) -> tuple[str, ...]:
    """Per-class column names: ``dice_<c>, tp_mm3_<c>, volsum_mm3_<c>`` for each class name ``c``."""
    return tuple(f"{k}_{c}" for c in classes for k in ("dice", "tp_mm3", "volsum_mm3"))


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > 0


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {pred.shape} vs {gt.shape}")


@dataclass(frozen=True)
class Overlap:
    """Voxel counts of a binary comparison: intersection, prediction, ground truth."""

    tp: int
    n_pred: int
    n_gt: int

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_gt - self.tp


def overlap(pred: np.ndarray, gt: np.ndarray) -> Overlap:
    """Voxel counts of ``pred`` vs ``gt`` (binarised ``> 0``)."""
    p, g = _binary(pred), _binary(gt)
    _check_pair(p, g)
    return Overlap(int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g)))


def dice_from(o: Overlap) -> float:
    """Dice in percent from voxel counts; NaN only when both masks are empty (0/0, as ``val_script.py``)."""
    return _ratio(200.0 * o.tp, o.n_pred + o.n_gt, math.nan)


def precision_from(o: Overlap) -> float:
    """``100 TP/(TP+FP)`` from voxel counts; 0 when the prediction is empty (medpy's convention)."""
    return _ratio(100.0 * o.tp, o.n_pred, 0.0)


def recall_from(o: Overlap) -> float:
    """``100 TP/(TP+FN)`` from voxel counts; 0 when the ground truth is empty (medpy's convention)."""
    return _ratio(100.0 * o.tp, o.n_gt, 0.0)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Foreground Dice in percent; NaN when both masks are empty, 0 when exactly one is."""
    return dice_from(overlap(pred, gt))


def precision(pred: np.ndarray, gt: np.ndarray) -> float:
    """Precision in percent, ``100 * medpy.metric.binary.precision`` (0 when the prediction is empty)."""
    return precision_from(overlap(pred, gt))


def recall(pred: np.ndarray, gt: np.ndarray) -> float:
    """Recall (sensitivity) in percent, ``100 * medpy.metric.binary.recall`` (0 when the GT is empty)."""
    return recall_from(overlap(pred, gt))


def _ratio(num: float, den: float, if_zero: float = math.nan) -> float:
    return float(num) / den if den else if_zero


@dataclass(frozen=True)
class LesionStats:
    """AutoPET volumes and lesion-wise detection from 18-connected components (volumes in ml)."""

    fp_volume_ml: float
    fn_volume_ml: float
    gt_lesions: int
    pred_lesions: int
    tp_lesions: int
    fn_lesions: int
    fp_lesions: int
    mtv_gt_ml: float
    mtv_pred_ml: float


def lesion_stats(
    pred: np.ndarray, gt: np.ndarray, voxel_ml: float, *, connectivity: int = AUTOPET_CONNECTIVITY
) -> LesionStats:
    """Connected-component statistics of ``pred`` vs ``gt`` (binarised), AutoPET's rules.

    ``fp_volume_ml`` = voxels of prediction components disjoint from the GT; ``fn_volume_ml`` = voxels of GT
    components disjoint from the prediction; both times ``voxel_ml``. Works on the union bounding box.
    """
    p, g = _binary(pred), _binary(gt)
    _check_pair(p, g)
    box = union_bounding_box(p, g)
    if box is None:
        return LesionStats(0.0, 0.0, 0, 0, 0, 0, 0, 0.0, 0.0)
    p, g = p[box], g[box]
    inter = p & g
    fp_vox, n_pred, fp_les = _disjoint_components(p, inter, connectivity)
    fn_vox, n_gt, fn_les = _disjoint_components(g, inter, connectivity)
    return LesionStats(
        fp_volume_ml=fp_vox * voxel_ml,
        fn_volume_ml=fn_vox * voxel_ml,
        gt_lesions=n_gt,
        pred_lesions=n_pred,
        tp_lesions=n_gt - fn_les,
        fn_lesions=fn_les,
        fp_lesions=fp_les,
        mtv_gt_ml=int(np.count_nonzero(g)) * voxel_ml,
        mtv_pred_ml=int(np.count_nonzero(p)) * voxel_ml,
    )


def _disjoint_components(mask: np.ndarray, inter: np.ndarray, connectivity: int) -> tuple[int, int, int]:
    """(voxels in components of ``mask`` not touching ``inter``, number of components, number disjoint)."""
    if not mask.any():
        return 0, 0, 0
    labels, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=connectivity, return_N=True)
    labels = labels.reshape(-1)
    sizes = np.bincount(labels, minlength=n + 1)
    disjoint = np.ones(n + 1, dtype=bool)
    disjoint[0] = False
    disjoint[np.unique(labels[inter.reshape(-1)])] = False
    return int(sizes[disjoint].sum()), int(n), int(disjoint.sum())


def false_positive_volume(pred: np.ndarray, gt: np.ndarray, voxel_ml: float) -> float:
    """AutoPET false-positive volume (ml): prediction components (18-conn.) with no voxel in the GT."""
    return lesion_stats(pred, gt, voxel_ml).fp_volume_ml


def false_negative_volume(pred: np.ndarray, gt: np.ndarray, voxel_ml: float) -> float:
    """AutoPET false-negative volume (ml): GT components (18-conn.) with no voxel in the prediction.

    0 for an empty GT, as ``val_script.py``.
    """
    return lesion_stats(pred, gt, voxel_ml).fn_volume_ml


def hecktor_case(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], classes: Mapping[str, int] = HECKTOR_CLASSES
) -> dict[str, float]:
    """HECKTOR 2022 per-class values for one patient: ``dice_<c>`` (%), ``tp_mm3_<c>``, ``volsum_mm3_<c>``.

    ``tp_mm3 = |P_c ∩ G_c| * voxel mm³`` and ``volsum_mm3 = (|P_c| + |G_c|) * voxel mm³``, which is what the
    official notebook derives from ITK's Dice (``TP = DSC * vol_sum / 2``). ``dice_<c>`` is NaN when the class
    is absent from both (ITK reports 0 there; the aggregate is unaffected either way).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt)
    vox_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    out: dict[str, float] = {}
    for name, value in classes.items():
        p, g = pred == value, gt == value
        tp, n_p, n_g = int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))
        out[f"dice_{name}"] = _ratio(200.0 * tp, n_p + n_g)
        out[f"tp_mm3_{name}"] = tp * vox_mm3
        out[f"volsum_mm3_{name}"] = (n_p + n_g) * vox_mm3
    return out


def hecktor_aggregate(
    rows: Iterable[Mapping[str, float]], classes: Mapping[str, int] = HECKTOR_CLASSES
) -> dict[str, float]:
    """HECKTOR 2022 aggregated Dice (percent): ``2 Σ TP_c / Σ vol_sum_c`` per class, and their mean.

    Returns ``dsc_agg_<c>`` for each class and ``dsc_agg_mean`` (the ranking value). NaN for a class absent
    from every case.
    """
    rows = list(rows)
    out: dict[str, float] = {}
    for name in classes:
        tp = sum(float(r[f"tp_mm3_{name}"]) for r in rows if _finite(r.get(f"tp_mm3_{name}")))
        vs = sum(float(r[f"volsum_mm3_{name}"]) for r in rows if _finite(r.get(f"volsum_mm3_{name}")))
        out[f"dsc_agg_{name}"] = _ratio(200.0 * tp, vs)
    out["dsc_agg_mean"] = float(np.mean([out[f"dsc_agg_{n}"] for n in classes]))
    return out


def _finite(v: object) -> bool:
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _case_hd95(
    p: np.ndarray,
    g: np.ndarray,
    o: Overlap,
    spacing: Sequence[float],
    convention: HD95Convention,
    empty_penalty: float | None,
) -> float:
    """HD95 when both masks have a surface; the penalty (else NaN) for a missed lesion case; NaN otherwise."""
    if o.n_pred and o.n_gt:
        return hd95(p, g, spacing, convention=convention)
    if o.n_gt and empty_penalty is not None:
        return float(empty_penalty)
    return math.nan


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    *,
    voxel_ml: float | None = None,
    hd95_convention: HD95Convention = "medpy",
    hd95_empty_penalty: float | None = None,
    classes: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Every per-case metric under the module's empty-mask rules, keyed by column name.

    ``pred``/``gt`` are label arrays on one grid (foreground = ``> 0``); ``spacing`` in mm per array axis;
    ``voxel_ml`` defaults to the product of ``spacing`` / 1000 (AutoPET's header ``pixdim`` product).
    ``classes`` (e.g. :data:`HECKTOR_CLASSES`) adds the HECKTOR per-class columns. Keys:
    ``has_lesion`` (0/1), :data:`CORE_COLUMNS`, :data:`LESION_COLUMNS`, then :func:`hecktor_columns`.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt)
    sp = as_spacing(spacing, pred.ndim)
    vml = voxel_volume_ml(sp) if voxel_ml is None else float(voxel_ml)
    p, g = _binary(pred), _binary(gt)
    o = overlap(p, g)
    les = lesion_stats(p, g, vml)
    row: dict[str, float] = {
        "has_lesion": float(o.n_gt > 0),
        "dice": dice_from(o),
        "hd95": _case_hd95(p, g, o, sp, hd95_convention, hd95_empty_penalty),
        "precision": precision_from(o),
        "recall": recall_from(o),
        "fp_volume_ml": les.fp_volume_ml,
        "fn_volume_ml": les.fn_volume_ml,
    }
    for col in LESION_COLUMNS:
        row[col] = float(getattr(les, col))
    if classes:
        row.update(hecktor_case(pred, gt, sp, classes))
    return {k: row[k] for k in ("has_lesion", *CORE_COLUMNS, *LESION_COLUMNS)} | {
        k: row[k] for k in (hecktor_columns(classes) if classes else ())
    }
