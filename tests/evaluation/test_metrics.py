"""Per-case metrics: hand-computed values, AutoPET FP/FN volumes re-derived, HECKTOR vs SimpleITK, empties."""

from __future__ import annotations

import math

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from h2aseg.evaluation.metrics import (
    CORE_COLUMNS,
    HECKTOR_CLASSES,
    LESION_COLUMNS,
    dice,
    evaluate_case,
    false_negative_volume,
    false_positive_volume,
    hecktor_aggregate,
    hecktor_case,
    hecktor_columns,
    lesion_stats,
    precision,
    recall,
    voxel_volume_ml,
)
from h2aseg.evaluation.surface import hd95

SP = (2.0364201068878174, 2.0364201068878174, 3.0)
VML = SP[0] * SP[1] * SP[2] / 1000.0
S18 = ndimage.generate_binary_structure(3, 2)


def _autopet_fpv_fnv(gt: np.ndarray, pred: np.ndarray, voxel_vol: float) -> tuple[float, float]:
    """The challenge scripts' loops (lab-midas/autoPET val_script.py), with scipy's 18-connectivity."""
    pred_cc, n_p = ndimage.label(pred, structure=S18)
    fp = sum(int((pred_cc == i).sum()) for i in range(1, n_p + 1) if ((pred_cc == i) & gt).sum() == 0)
    gt_cc, n_g = ndimage.label(gt, structure=S18)
    fn = sum(int((gt_cc == i).sum()) for i in range(1, n_g + 1) if ((gt_cc == i) & pred).sum() == 0)
    return fp * voxel_vol, fn * voxel_vol


def _autopet_cc3d(gt: np.ndarray, pred: np.ndarray, voxel_vol: float) -> tuple[float, float]:
    """Same loops with cc3d as the scripts call it."""
    out = []
    for a, b in ((pred, gt), (gt, pred)):
        cc = cc3d.connected_components(a.astype(int), connectivity=18)
        out.append(
            sum(int((cc == i).sum()) for i in range(1, int(cc.max()) + 1) if ((cc == i) * b).sum() == 0)
            * voxel_vol
        )
    return out[0], out[1]


def _random_masks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (24, 20, 16)
    gt = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) > 0.45
    pred = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) > 0.45
    pred |= np.roll(gt, 1, axis=0) & (rng.random(shape) > 0.3)
    pred |= rng.random(shape) > 0.99  # isolated voxels: corner/edge contacts matter for 18 vs 26
    return pred, gt


def test_overlap_metrics_hand_computed():
    gt = np.zeros((4, 4, 4), bool)
    pred = np.zeros_like(gt)
    gt[0, 0, :4] = True  # 4 voxels
    pred[0, 0, 2:4] = True  # 2 TP
    pred[3, 3, 3] = True  # 1 FP
    assert dice(pred, gt) == pytest.approx(200 * 2 / 7)
    assert precision(pred, gt) == pytest.approx(100 * 2 / 3)
    assert recall(pred, gt) == pytest.approx(50.0)
    labels = gt.astype(np.uint8) * 2  # any label > 0 is foreground
    assert dice(pred, labels) == pytest.approx(200 * 2 / 7)


@pytest.mark.parametrize("seed", range(6))
def test_fp_fn_volumes_match_the_challenge_loops(seed):
    pred, gt = _random_masks(seed)
    ref = _autopet_fpv_fnv(gt, pred, VML)
    assert ref == pytest.approx(_autopet_cc3d(gt, pred, VML), abs=1e-12)
    assert false_positive_volume(pred, gt, VML) == pytest.approx(ref[0], abs=1e-9)
    assert false_negative_volume(pred, gt, VML) == pytest.approx(ref[1], abs=1e-9)
    st = lesion_stats(pred, gt, VML)
    assert st.gt_lesions == ndimage.label(gt, structure=S18)[1]
    assert st.pred_lesions == ndimage.label(pred, structure=S18)[1]
    assert st.mtv_gt_ml == pytest.approx(gt.sum() * VML) and st.mtv_pred_ml == pytest.approx(pred.sum() * VML)


def test_connectivity_is_18_not_26():
    gt = np.zeros((6, 6, 6), bool)
    pred = np.zeros_like(gt)
    gt[1, 1, 1] = True
    pred[1, 1, 1] = True
    pred[2, 2, 2] = True  # corner contact only: a separate component under 18-connectivity
    pred[4, 4, 3] = pred[4, 3, 3] = True  # face contact: one component of 2 voxels
    pred[3, 3, 4] = True  # edge contact with (4, 3, 3)... joins it under 18-connectivity
    st = lesion_stats(pred, gt, 1.0)
    assert st.pred_lesions == 3  # {(1,1,1)}, {(2,2,2)}, {(4,4,3),(4,3,3),(3,3,4)}
    assert st.fp_volume_ml == 4.0 and st.fp_lesions == 2
    assert st.tp_lesions == 1 and st.fn_lesions == 0


def test_lesion_detection_counts():
    gt = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(gt)
    gt[1:4, 1:4, 1:4] = True  # detected (touched by one voxel)
    gt[10:13, 10:13, 10:13] = True  # missed
    pred[3, 3, 3] = True
    pred[16:19, 1:3, 1:3] = True  # false lesion
    st = lesion_stats(pred, gt, 0.5)
    assert (st.gt_lesions, st.pred_lesions, st.tp_lesions, st.fn_lesions, st.fp_lesions) == (2, 2, 1, 1, 1)
    assert st.fn_volume_ml == pytest.approx(27 * 0.5) and st.fp_volume_ml == pytest.approx(12 * 0.5)


def test_evaluate_case_all_columns_and_anisotropic_hd95():
    pred, gt = _random_masks(3)
    row = evaluate_case(pred, gt, SP)
    assert list(row) == ["has_lesion", *CORE_COLUMNS, *LESION_COLUMNS]
    assert row["dice"] == pytest.approx(dice(pred, gt))
    assert row["hd95"] == pytest.approx(hd95(pred, gt, SP))
    assert row["fp_volume_ml"] == pytest.approx(_autopet_fpv_fnv(gt, pred, VML)[0])
    assert row["hd95"] != pytest.approx(evaluate_case(pred, gt, SP, hd95_convention="monai")["hd95"])
    assert voxel_volume_ml(SP) == pytest.approx(VML)


def test_empty_mask_rules():
    z = np.zeros((8, 8, 8), bool)
    m = z.copy()
    m[2:5, 2:5, 2:5] = True
    both = evaluate_case(z, z, (1, 1, 2))
    assert both["has_lesion"] == 0
    assert math.isnan(both["dice"]) and math.isnan(both["hd95"])  # 0/0 (val_script.py) and no surface
    assert both["precision"] == 0 and both["recall"] == 0  # medpy: zero denominator -> 0
    assert both["fn_volume_ml"] == 0 and both["fp_volume_ml"] == 0  # val_script.py
    assert both["gt_lesions"] == 0 and both["mtv_pred_ml"] == 0

    fp_only = evaluate_case(m, z, (1, 1, 2))  # lesion-free case with a false positive
    assert fp_only["dice"] == 0 and math.isnan(fp_only["hd95"])  # val_script.py: 2*0/(27+0)
    assert fp_only["precision"] == 0 and fp_only["recall"] == 0 and fp_only["fn_volume_ml"] == 0
    assert fp_only["fp_volume_ml"] == pytest.approx(27 * 2 / 1000) and fp_only["fp_lesions"] == 1

    missed = evaluate_case(z, m, (1, 1, 2))  # lesion case, empty prediction
    assert missed["has_lesion"] == 1
    assert missed["dice"] == 0 and missed["precision"] == 0 and missed["recall"] == 0
    assert math.isnan(missed["hd95"])
    assert missed["fn_volume_ml"] == pytest.approx(27 * 2 / 1000) and missed["fp_volume_ml"] == 0
    assert evaluate_case(z, m, (1, 1, 2), hd95_empty_penalty=373.0)["hd95"] == 373.0


def test_hecktor_per_class_matches_simpleitk_and_aggregate_formula():
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(7)
    rows, sitk_rows = [], []
    for i in range(4):
        shape = (14, 12, 10)
        gt = np.zeros(shape, np.uint8)
        pred = np.zeros(shape, np.uint8)
        gt[ndimage.gaussian_filter(rng.standard_normal(shape), 1) > 0.4] = 1
        gt[ndimage.gaussian_filter(rng.standard_normal(shape), 1) > 0.5] = 2
        pred[ndimage.gaussian_filter(rng.standard_normal(shape), 1) > 0.3] = 1
        if i != 2:  # one patient without predicted GTVn
            pred[np.roll(gt == 2, 1, axis=0)] = 2
        sp = (0.98, 0.98, 3.0) if i % 2 else (2.0, 2.0, 2.0)
        rows.append(hecktor_case(pred, gt, sp))
        f = sitk.LabelOverlapMeasuresImageFilter()
        ip, ig = sitk.GetImageFromArray(pred), sitk.GetImageFromArray(gt)
        ip.SetSpacing(sp[::-1])
        ig.SetSpacing(sp[::-1])
        f.Execute(ig, ip)
        vox = float(np.prod(sp))
        rec = {}
        for name, c in HECKTOR_CLASSES.items():
            vol_sum = (int((gt == c).sum()) + int((pred == c).sum())) * vox  # mm³, as the notebook
            dsc = f.GetDiceCoefficient(c)
            rec[name] = (dsc * vol_sum / 2, vol_sum)
            if vol_sum:
                assert rows[-1][f"dice_{name}"] == pytest.approx(100 * dsc, abs=1e-9)
            else:  # absent from both: ITK says 0 (with a warning), we say NaN; no effect on the aggregate
                assert dsc == 0 and math.isnan(rows[-1][f"dice_{name}"])
        sitk_rows.append(rec)
    agg = hecktor_aggregate(rows)
    for name in HECKTOR_CLASSES:
        ref = 2 * sum(r[name][0] for r in sitk_rows) / sum(r[name][1] for r in sitk_rows)
        assert agg[f"dsc_agg_{name}"] == pytest.approx(100 * ref, rel=1e-9)
    assert agg["dsc_agg_mean"] == pytest.approx((agg["dsc_agg_gtvp"] + agg["dsc_agg_gtvn"]) / 2)
    full = evaluate_case(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 1, 1), classes=HECKTOR_CLASSES)
    assert set(hecktor_columns()) <= set(full) and math.isnan(full["dice_gtvn"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), (1, 1, 1))
