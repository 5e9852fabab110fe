"""Diagnostic: how well could lesions be outlined if every one of them were found? (a delineation ceiling)

For every study with lesions in ``--data``, each ground-truth lesion (18-connected component) is outlined by
thresholding the SUV inside its own neighbourhood (the lesion dilated by ``--margin`` voxels, other lesions
excluded) at the fraction of the neighbourhood's SUVmax that gives that lesion the best Dice ("oracle":
it looks at the label), and once at the clinicians' fixed 41 % of SUVmax. The per-study Dice of the union
of these outlines, averaged over the studies with lesions (the paper's protocol), is printed with a table
per lesion size.

Read it as: a model that found every lesion and outlined it no better than a per-lesion threshold would
score about this. If a model's Dice is far below it, the loss is in finding lesions (detection, false
positives), not in drawing their borders. ``docs/training-notes.md`` section 12 quotes a run.

Usage::

    python benchmarks/oracle_delineation.py --data COHORT [--layout auto] [--margin 3]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from h2aseg.data.io import read_volume
from h2aseg.data.layouts import discover
from h2aseg.evaluation.metrics import dice  # percent

FRACTIONS = np.arange(0.15, 0.951, 0.025)
SIZE_BINS = ((0, 10), (10, 30), (30, 100), (100, 300), (300, None))
CONNECTIVITY = ndimage.generate_binary_structure(3, 2)  # 18-connected, as the lesion-wise metrics


def outline_study(suv: np.ndarray, gt: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Oracle and 41 % outlines of every lesion of one study; rows (voxels, oracle Dice) per lesion."""
    lab, _ = ndimage.label(gt, structure=CONNECTIVITY)
    oracle = np.zeros_like(gt)
    fixed = np.zeros_like(gt)
    rows = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        box = tuple(slice(max(s.start - margin - 1, 0), s.stop + margin + 1) for s in sl)
        lesion = lab[box] == i
        hood = ndimage.binary_dilation(lesion, iterations=margin) & ((lab[box] == 0) | lesion)
        s = suv[box]
        peak = float(s[hood].max())
        best, best_dice = hood & (s >= FRACTIONS[0] * peak), -1.0  # Dice in percent
        for f in FRACTIONS:
            cand = hood & (s >= f * peak)
            d = dice(cand, lesion)
            if d > best_dice:
                best, best_dice = cand, d
        oracle[box] |= best
        fixed[box] |= hood & (s >= 0.41 * peak)
        rows.append((int(lesion.sum()), best_dice))
    return oracle, fixed, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--margin", type=int, default=3, help="neighbourhood: lesion dilated by this many voxels")
    args = ap.parse_args()

    per_study_oracle, per_study_fixed, lesions = [], [], []
    for case in discover(args.data, args.layout):
        if case.label is None:
            continue
        gt = read_volume(case.label).array > 0
        if not gt.any():
            continue
        suv = read_volume(case.pet).array.astype(np.float32)
        if suv.shape != gt.shape:
            raise SystemExit(f"{case.pet}: PET grid {suv.shape} differs from the label's {gt.shape}")
        oracle, fixed, rows = outline_study(suv, gt, args.margin)
        per_study_oracle.append(dice(oracle, gt))
        per_study_fixed.append(dice(fixed, gt))
        lesions += rows
    if not per_study_oracle:
        raise SystemExit(f"{args.data}: no study with lesions")
    arr = np.array(lesions, dtype=float)
    n_studies = len(per_study_oracle)
    print(f"{args.data}: {n_studies} studies with lesions, {len(arr)} lesions, margin {args.margin}\n")
    print("| outline (every lesion found) | Dice over studies with lesions (%) |")
    print("|---|---|")
    for name, values in (
        ("best SUVmax fraction per lesion (oracle)", per_study_oracle),
        ("41 % of SUVmax per lesion", per_study_fixed),
    ):
        print(f"| {name} | {np.mean(values):.1f} ± {np.std(values):.1f} |")
    print()
    print("| lesion voxels | lesions | oracle lesion Dice (%) |")
    print("|---|---|---|")
    for lo, hi in SIZE_BINS:
        sel = (arr[:, 0] >= lo) & (arr[:, 0] < (hi if hi is not None else np.inf))
        if sel.any():
            name = f"{lo}-{hi - 1}" if hi is not None else f">= {lo}"
            print(f"| {name} | {int(sel.sum())} | {arr[sel, 1].mean():.1f} |")


if __name__ == "__main__":
    main()
