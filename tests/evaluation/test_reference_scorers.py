"""Per-case values against the reference scorers: autoPET's ``val_script.py`` rules and medpy.

The autoPET rules are re-stated here independently (scipy's 18-connectivity instead of cc3d): Dice
``2|P∩G|/(|P|+|G|)`` (NaN only for 0/0), FP volume = voxels of prediction components touching no GT voxel,
FN volume = voxels of GT components touching no predicted voxel, times the header voxel volume in ml.

medpy's ``precision``/``recall`` return 0 on a zero denominator through ``except ZeroDivisionError``; that
branch only fires while ``numpy.count_nonzero`` returns a Python ``int`` (numpy 1.x). Under numpy 2 it returns
a numpy integer, the division gives NaN with a RuntimeWarning and the branch is dead. :func:`_medpy` runs
medpy's own code with the numpy 1.x ``count_nonzero`` so that the reference is medpy's intended value.
"""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary as mb
from scipy import ndimage

from h2aseg.data.io import write_volume
from h2aseg.evaluation.metrics import HECKTOR_CLASSES, evaluate_case, precision, recall
from h2aseg.evaluation.pipeline import evaluate_folders
from h2aseg.evaluation.report import PROTOCOLS

SPACING = (2.0364, 2.0364, 3.0)
AFF = np.diag([*SPACING, 1.0])
S18 = ndimage.generate_binary_structure(3, 2)
KINDS = ("both", "gt_empty", "pred_empty", "both_empty")


class _Numpy1:
    """numpy, except that ``count_nonzero(a)`` returns a Python ``int`` (numpy 1.x)."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def count_nonzero(a, *args, **kwargs):
        n = np.count_nonzero(a, *args, **kwargs)
        return int(n) if np.ndim(n) == 0 else n


def _medpy(metric: str, pred: np.ndarray, gt: np.ndarray) -> float:
    """``100 * medpy.metric.binary.<metric>(pred, gt)`` as medpy's code intends (see the module docstring)."""
    with mock.patch.object(mb, "numpy", _Numpy1()):
        return 100.0 * getattr(mb, metric)(pred, gt)


def _components(mask: np.ndarray, other: np.ndarray) -> tuple[int, int, int]:
    """(voxels of 18-connected components of ``mask`` touching no ``other`` voxel, #components, #those)."""
    labels, n = ndimage.label(mask, structure=S18)
    voxels = unmatched = 0
    for i in range(1, n + 1):
        comp = labels == i
        if not np.any(comp & other):
            voxels += int(comp.sum())
            unmatched += 1
    return voxels, n, unmatched


def _reference(pred: np.ndarray, gt: np.ndarray, spacing, voxel_ml: float) -> dict[str, float]:
    """Every per-case column by the rules of val_script.py (Dice, FPV, FNV) and medpy (P, R, HD95)."""
    pred, gt = pred > 0, gt > 0
    fp_vox, n_pred, fp_les = _components(pred, gt)
    fn_vox, n_gt, fn_les = _components(gt, pred)
    denom = int(gt.sum() + pred.sum())
    both = gt.any() and pred.any()
    return {
        "has_lesion": float(gt.any()),
        "dice": 200.0 * int((gt & pred).sum()) / denom if denom else math.nan,
        "hd95": mb.hd95(pred, gt, voxelspacing=spacing) if both else math.nan,
        "precision": _medpy("precision", pred, gt),
        "recall": _medpy("recall", pred, gt),
        "fp_volume_ml": fp_vox * voxel_ml,
        "fn_volume_ml": fn_vox * voxel_ml,
        "gt_lesions": n_gt,
        "pred_lesions": n_pred,
        "tp_lesions": n_gt - fn_les,
        "fn_lesions": fn_les,
        "fp_lesions": fp_les,
        "mtv_gt_ml": int(gt.sum()) * voxel_ml,
        "mtv_pred_ml": int(pred.sum()) * voxel_ml,
    }


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, ground truth) uint8; the kind (both / GT empty / prediction empty / both empty) cycles."""
    rng = np.random.default_rng(seed)
    shape = (12, 10, 8)
    gt = ndimage.binary_dilation(rng.random(shape) < 0.02) | (rng.random(shape) < 0.01)
    pred = np.roll(gt, int(rng.integers(-1, 2)), axis=int(rng.integers(3))) & (rng.random(shape) > 0.25)
    pred |= rng.random(shape) < 0.015  # isolated voxels: corner contacts separate 18- from 26-connectivity
    kind = KINDS[seed % len(KINDS)]
    if kind in ("gt_empty", "both_empty"):
        gt[:] = False
    if kind in ("pred_empty", "both_empty"):
        pred[:] = False
    return pred.astype(np.uint8), gt.astype(np.uint8)


def _assert_row_matches(row: dict, ref: dict, where: str) -> None:
    for key, want in ref.items():
        got = row[key]
        if math.isnan(want):
            assert math.isnan(got), f"{where} {key}: {got} != nan"
        else:
            assert not math.isnan(got) and got == pytest.approx(want, rel=1e-9, abs=1e-9), f"{where} {key}"


@pytest.mark.parametrize("seed", range(24))
def test_evaluate_case_equals_the_reference_rules(seed):
    pred, gt = _random_case(seed)
    vml = float(np.prod(SPACING)) / 1000
    _assert_row_matches(evaluate_case(pred, gt, SPACING), _reference(pred, gt, SPACING, vml), f"seed {seed}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evaluate_folders_equals_the_reference_rules(tmp_path: Path, protocol: str):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for seed in range(8):
        pred, gt = _random_case(100 + seed)
        write_volume(gt_dir / f"case{seed}.nii.gz", gt, AFF)
        write_volume(pred_dir / f"case{seed}.nii.gz", pred, AFF)
    res = evaluate_folders(pred_dir, gt_dir, protocol=protocol)
    refs = []
    for row in res.rows:
        # as val_script.py: the arrays and the voxel volume (pixdim product / 1000) from the files themselves
        gt_img, pred_img = (nib.load(d / f"{row['case_id']}.nii.gz") for d in (gt_dir, pred_dir))
        vml = float(np.prod(gt_img.header["pixdim"][1:4].astype(np.float64))) / 1000  # float32 in the file
        spacing = gt_img.header.get_zooms()[:3]
        refs.append(_reference(pred_img.get_fdata(), gt_img.get_fdata(), spacing, vml))
        _assert_row_matches(row, refs[-1], f"{protocol} {row['case_id']}")
    assert {r["has_lesion"] for r in refs} == {0.0, 1.0}
    # summary: Dice / HD95 / precision / recall / FNV over lesion cases, FPV over all cases
    lesion = [r for r in refs if r["has_lesion"]]
    m = res.summary["metrics"]
    for key, rows in (
        ("dice", lesion),
        ("precision", lesion),
        ("recall", lesion),
        ("fn_volume_ml", lesion),
        ("fp_volume_ml", refs),
    ):
        assert m[key]["n"] == len(rows) and m[key]["mean"] == pytest.approx(np.mean([r[key] for r in rows]))


def _edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    z = np.zeros((6, 6, 6), np.uint8)
    a, b = z.copy(), z.copy()
    a[1:4, 1:4, 1:4] = 1
    b[3:5, 3:5, 3:5] = 1
    far = np.roll(a, 3, axis=0) * 2  # disjoint from a, label 2 (foreground = > 0, as medpy)
    return {
        "both_empty": (z, z),
        "gt_empty": (a, z),
        "pred_empty": (z, a),
        "identical": (a, a),
        "partial": (b, a),
        "disjoint": (far, a),
        "hecktor_labels": (a + b, np.maximum(a, far)),
    }


@pytest.mark.parametrize("name", list(_edge_cases()))
def test_precision_recall_equal_medpy_on_edge_cases(name):
    pred, gt = _edge_cases()[name]
    want_p, want_r = _medpy("precision", pred, gt), _medpy("recall", pred, gt)
    assert precision(pred, gt) == pytest.approx(want_p) and recall(pred, gt) == pytest.approx(want_r)
    for classes in (None, HECKTOR_CLASSES):  # every protocol's per-case row
        row = evaluate_case(pred, gt, SPACING, classes=classes)
        assert row["precision"] == pytest.approx(want_p) and row["recall"] == pytest.approx(want_r)


@pytest.mark.parametrize("seed", range(12))
def test_precision_recall_equal_medpy_on_random_masks(seed):
    pred, gt = _random_case(seed)
    for metric, ours in (("precision", precision(pred, gt)), ("recall", recall(pred, gt))):
        assert ours == pytest.approx(_medpy(metric, pred, gt), rel=1e-12) and not math.isnan(ours)
        denominator = np.count_nonzero(pred if metric == "precision" else gt)
        if denominator:  # medpy as installed, unpatched
            assert ours == pytest.approx(100.0 * getattr(mb, metric)(pred, gt), rel=1e-12)
        else:
            assert ours == 0.0
