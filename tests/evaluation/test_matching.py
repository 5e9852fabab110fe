"""Pairing predictions with ground truth by case id (plain folders and dataset layouts) and grid checks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.data.io import write_volume
from h2aseg.evaluation.matching import (
    CasePair,
    EvaluationError,
    ground_truth_masks,
    load_pair,
    load_pairs,
    mask_folder,
    match_cases,
)
from h2aseg.evaluation.pipeline import evaluate_folders

AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _mask(path: Path, arr: np.ndarray, affine: np.ndarray = AFF) -> Path:
    return write_volume(path, arr.astype(np.uint8), affine)


def _blob(shape=(12, 10, 8), lo=3, hi=6) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[lo:hi, lo:hi, 2:5] = 1
    return m


def test_mask_folder_and_duplicates(tmp_path):
    _mask(tmp_path / "a.nii.gz", _blob())
    _mask(tmp_path / "b.nii", _blob())
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.nii.gz").write_text("x")
    assert sorted(mask_folder(tmp_path)) == ["a", "b"]
    _mask(tmp_path / "a.nii", _blob())
    with pytest.raises(EvaluationError, match="two mask files for case 'a'"):
        mask_folder(tmp_path)


def test_mask_folder_leaves_out_the_files_predict_writes_beside_a_mask(tmp_path):
    """``predict --set infer.save_probabilities=true`` (and flip TTA) writes a probability map and flip masks
    beside each mask: they are not predictions of cases of their own. A file that merely ends like one, with
    no mask beside it, is still a case."""
    from h2aseg.data.io import flip_masks_path, probability_path

    mask = _mask(tmp_path / "c1.nii.gz", _blob())
    write_volume(probability_path(mask), _blob().astype(np.float32) * 0.9, AFF)
    _mask(flip_masks_path(mask), _blob())
    _mask(tmp_path / "c2_probability.nii.gz", _blob())
    assert sorted(mask_folder(tmp_path)) == ["c1", "c2_probability"]


def test_match_missing_extra_and_allow_missing(tmp_path):
    gt = {"c1": tmp_path / "c1.nii.gz", "c2": tmp_path / "c2.nii.gz", "c3": tmp_path / "c3.nii.gz"}
    pred = {"c1": tmp_path / "p1.nii.gz", "zz": tmp_path / "zz.nii.gz"}
    with pytest.raises(EvaluationError, match=r"2 case\(s\) have no prediction: c2, c3 .*--allow-missing"):
        match_cases(pred, gt)
    m = match_cases(pred, gt, allow_missing=True)
    assert [p.case_id for p in m.pairs] == ["c1", "c2", "c3"]
    assert m.pairs[1].pred is None and m.missing == ["c2", "c3"] and m.extra == ["zz"]
    with pytest.raises(EvaluationError, match="no prediction matches"):
        match_cases({"x": tmp_path}, gt)


def test_ground_truth_from_hecktor_and_nnunet_layouts(tmp_path):
    pytest.importorskip("h2aseg.data.layouts")
    hk = tmp_path / "hecktor"
    for cid in ("CHUM-001", "CHUP-049"):
        for mod in ("CT", "PT"):
            _mask(hk / "imagesTr" / f"{cid}__{mod}.nii.gz", _blob())
        _mask(hk / "labelsTr" / f"{cid}.nii.gz", _blob())
    got = ground_truth_masks(hk)
    assert sorted(got) == ["CHUM-001", "CHUP-049"] and got["CHUM-001"].parent.name == "labelsTr"
    nn = tmp_path / "nnunet"
    cid = "psma_95b833d46f153cd2_2017-11-18"
    for ch in ("0000", "0001"):
        _mask(nn / "imagesTr" / f"{cid}_{ch}.nii.gz", _blob())
    _mask(nn / "labelsTr" / f"{cid}.nii.gz", _blob())
    assert list(ground_truth_masks(nn, "autopet-nnunet")) == [cid]
    # pointing at labelsTr itself is a plain folder of masks
    assert list(ground_truth_masks(nn / "labelsTr")) == [cid]
    with pytest.raises(EvaluationError, match="no ground-truth labels"):
        (nn / "labelsTr" / f"{cid}.nii.gz").unlink()
        (nn / "labelsTr").rmdir()
        ground_truth_masks(nn)


def test_ground_truth_from_autopet_tcia_layout(tmp_path):
    pytest.importorskip("h2aseg.data.layouts")
    study = tmp_path / "PETCT_0af7ffe12a" / "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-96698"
    for name in ("CTres", "SUV", "SEG"):
        _mask(study / f"{name}.nii.gz", _blob())
    got = ground_truth_masks(tmp_path)
    assert len(got) == 1 and next(iter(got.values())).name == "SEG.nii.gz"


def test_grid_mismatch_refused_or_resampled(tmp_path):
    gt = _mask(tmp_path / "gt" / "c.nii.gz", _blob())
    shifted = AFF.copy()
    shifted[0, 3] = -2.0  # origin one voxel to the left: voxel i of pred sits at GT voxel i - 1
    pred = _mask(tmp_path / "pred" / "c.nii.gz", _blob(), shifted)
    with pytest.raises(EvaluationError, match=r"different grids \(origin .*--resample"):
        load_pair(CasePair("c", gt, pred))
    lp = load_pair(CasePair("c", gt, pred), resample=True)
    assert lp.resampled and np.array_equal(lp.pred, np.roll(_blob(), -1, axis=0))
    other = _mask(tmp_path / "pred2" / "c.nii.gz", _blob((12, 10, 9)))
    with pytest.raises(EvaluationError, match=r"shape \(12, 10, 9\) vs \(12, 10, 8\)"):
        load_pair(CasePair("c", gt, other))


def test_load_pair_voxel_volume_from_header_and_label_checks(tmp_path):
    gt = _mask(tmp_path / "g.nii.gz", _blob())
    lp = load_pair(CasePair("c", gt, None))
    zooms = nib.load(str(gt)).header.get_zooms()
    assert lp.voxel_ml == pytest.approx(float(np.prod(zooms)) / 1000) and not lp.pred.any()
    bad = _mask(tmp_path / "p.nii.gz", _blob() * 3)
    with pytest.raises(EvaluationError, match=r"labels \[3\] not allowed"):
        load_pair(CasePair("c", gt, bad), allowed_labels=(0, 1, 2))
    prob = write_volume(tmp_path / "prob.nii.gz", _blob().astype(np.float32) * 0.7, AFF)
    with pytest.raises(EvaluationError, match="non-integer"):
        load_pair(CasePair("c", gt, prob))
    with pytest.raises(EvaluationError, match="not found"):
        load_pair(CasePair("c", gt, tmp_path / "nope.nii.gz"))


def test_evaluate_folders_end_to_end(tmp_path):
    g, p = tmp_path / "gt", tmp_path / "pred"
    _mask(g / "a.nii.gz", _blob())
    _mask(p / "a.nii.gz", _blob(lo=4, hi=7))
    _mask(g / "neg.nii.gz", np.zeros((12, 10, 8)))
    _mask(p / "neg.nii.gz", _blob(lo=8, hi=10))
    seen = []
    res = evaluate_folders(p, g, on_case=lambda cid, done, total: seen.append((cid, done, total)))
    assert seen == [("a", 1, 2), ("neg", 2, 2)]
    a, neg = res.rows
    assert a["dice"] == pytest.approx(200 * 2 * 2 * 3 / (2 * 27)) and neg["dice"] == 0  # val_script.py
    assert res.summary["metrics"]["dice"]["n"] == 1  # the lesion-free case stays out of the Dice mean
    assert neg["fp_volume_ml"] == pytest.approx(2 * 2 * 3 * 12 / 1000)
    assert res.summary["metrics"]["fp_volume_ml"]["n"] == 2


def test_load_pairs_reads_one_ground_truth_for_several_predictions(tmp_path):
    gt = _mask(tmp_path / "gt" / "c.nii.gz", _blob())
    pred = _mask(tmp_path / "pred" / "c.nii.gz", _blob(lo=4))
    both = load_pairs([CasePair("c", gt, pred), CasePair("c", gt, None)])
    assert both[0].pred.sum() == _blob(lo=4).sum() and both[1].pred.sum() == 0
    assert all(np.array_equal(lp.gt, _blob()) for lp in both)
    with pytest.raises(ValueError, match="same ground truth"):
        load_pairs([CasePair("c", gt, pred), CasePair("c", pred, gt)])
