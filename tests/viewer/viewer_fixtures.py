"""Helpers of the viewer tests: a tiny cohort (3 phantom studies, AutoPET layout, case ids with spaces as
the release's), predictions for 2 of them with lesions at known voxels, and a lesion table for one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2aseg.data.io import read_volume, write_volume
from h2aseg.data.layouts import Case
from h2aseg.evaluation.quantify import quantify_files, write_quantification
from h2aseg.synth import write_cohort

SHAPE = (24, 24, 20)
#: lesion boxes (array slices) of the two predicted studies; voxel centroids follow
BOXES = {
    0: [(slice(4, 8), slice(5, 9), slice(3, 6)), (slice(14, 17), slice(15, 17), slice(10, 14))],
    1: [(slice(10, 13), slice(10, 13), slice(8, 12))],
}


@dataclass
class ViewerCohort:
    data: Path
    pred: Path
    cases: list[Case]  # all 3 studies; 0 and 1 have predictions, 2 has none
    centroids_vox: dict[str, list[tuple[float, float, float]]]


def box_centroid(box: tuple[slice, ...]) -> tuple[float, float, float]:
    return tuple(float((s.start + s.stop - 1) / 2) for s in box)  # type: ignore[return-value]


def write_viewer_cohort(root: Path) -> ViewerCohort:
    cases = write_cohort(root / "data", 3, "autopet", seed=29, shape=SHAPE, spacing=(10.0, 10.0, 12.0))
    pred = root / "pred"
    centroids = {}
    for i, boxes in BOXES.items():
        case = cases[i]
        ct = read_volume(case.ct, dtype=None)
        mask = np.zeros(ct.shape, np.uint8)
        for box in boxes:
            mask[box] = 1
        path = write_volume(pred / f"{case.case_id}.nii.gz", mask, ct.affine)
        centroids[case.case_id] = [box_centroid(b) for b in boxes]
        if i == 1:  # what h2aseg predict --quantify writes beside the mask
            q = quantify_files(case.pet, path, case_id=case.case_id)
            write_quantification(
                q, pred / f"{case.case_id}_lesions.csv", pred / f"{case.case_id}_patient.csv"
            )
    return ViewerCohort(root / "data", pred, cases, centroids)
