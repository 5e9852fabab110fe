"""Diagnostic: does a model err more near the faces of its input window? (what window overlap buys)

Runs the model of ``--checkpoint`` on ``--windows`` randomly placed windows (the inference window size) per
study of ``--data`` that has lesions, thresholds each window's output on its own (no blending), and counts,
by the distance of a voxel to the nearest window face, the false-positive rate among lesion-free voxels and
the miss rate among lesion voxels. A model that errs mostly within a few voxels of the faces needs
overlapping windows whose Gaussian weighting lets every voxel be judged near some window's centre
(``infer.overlap``); ``docs/training-notes.md`` section 12 quotes a run.

Usage::

    python benchmarks/window_edge_errors.py --checkpoint C --data COHORT [--cases 6] [--windows 24]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from h2aseg.data.layouts import discover
from h2aseg.data.preprocess import preprocess_case
from h2aseg.data.transforms import model_input
from h2aseg.inference.predictor import Predictor
from h2aseg.inference.sliding import probabilities_to_mask
from h2aseg.models.outputs import class_probabilities


def face_distance(roi: tuple[int, int, int]) -> np.ndarray:
    """Voxel-wise distance (in voxels) to the nearest face of a window of size ``roi``."""
    grids = np.meshgrid(*[np.arange(n) for n in roi], indexing="ij")
    return np.minimum.reduce([np.minimum(g, n - 1 - g) for g, n in zip(grids, roi, strict=True)])


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cases", type=int, default=6, help="studies with lesions to use")
    ap.add_argument("--windows", type=int, default=24, help="random windows per study")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    predictor = Predictor.from_checkpoint(args.checkpoint)
    roi = predictor.roi_size
    dist = face_distance(roi).ravel()
    bins = int(dist.max()) + 1
    fp, neg, miss, pos = (np.zeros(bins) for _ in range(4))
    rng = np.random.default_rng(args.seed)
    used = 0
    for case in discover(args.data, predictor.cfg.data.layout):
        if used >= args.cases:
            break
        pc = preprocess_case(case, predictor.cfg.data)
        if pc.label is None or not (pc.label > 0).any():
            continue
        used += 1
        x = model_input(pc)[None].to(predictor.device)
        label = pc.label > 0
        size = label.shape
        if any(s < r for s, r in zip(size, roi, strict=True)):
            raise SystemExit(f"{case.case_id}: volume {size} smaller than the window {roi}")
        for _ in range(args.windows):
            lo = [int(rng.integers(0, s - r + 1)) for s, r in zip(size, roi, strict=True)]
            sl = tuple(slice(a, a + r) for a, r in zip(lo, roi, strict=True))
            out = predictor.model(x[(slice(None), slice(None), *sl)])
            probs = class_probabilities(out.float())[0].cpu()
            pred = probabilities_to_mask(probs, predictor.cfg.infer.threshold).numpy().ravel() > 0
            true = label[sl].ravel()
            np.add.at(fp, dist, pred & ~true)
            np.add.at(neg, dist, ~true)
            np.add.at(miss, dist, ~pred & true)
            np.add.at(pos, dist, true)
    if not used:
        raise SystemExit(f"{args.data}: no study with lesions")
    print(f"{args.checkpoint}: {used} studies, {args.windows} windows of {list(roi)} each\n")
    print(
        "| voxels from the nearest window face | false positives per 10,000 lesion-free voxels "
        "| lesion voxels missed (%) | lesion voxels seen |"
    )
    print("|---|---|---|---|")
    for lo, hi in ((0, 2), (2, 4), (4, 8), (8, bins)):
        n, p = neg[lo:hi].sum(), pos[lo:hi].sum()
        rate = f"{1e4 * fp[lo:hi].sum() / n:.2f}" if n else "-"
        missed = f"{100 * miss[lo:hi].sum() / p:.0f}" if p else "-"
        print(f"| {lo}-{hi - 1} | {rate} | {missed} | {int(p)} |")


if __name__ == "__main__":
    main()
