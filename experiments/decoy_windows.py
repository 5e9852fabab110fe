"""Does a window hold both sides of a decoy pair? The geometry behind step (e) of the MCSA study.

A network (MCSA or convolutions) can tell a symmetric decoy from a node lesion only if the decoy's partner
across the body lies in the same input. For every decoy of a cohort written with ``h2aseg synth
--symmetric-decoys`` (the validation and test parts of an experiment's split), this script takes the
body's bounding box on the working grid (as prediction with ``infer.body_box`` and training's body crop
do) and counts, per setting:

- ``sliding ROI overlap``: of the sliding windows that cover the decoy's centre (MONAI's window grid over
  the box, as ``h2aseg predict`` places them), the share that also cover its partner's centre;
- ``crops ROI``: the same over every placement of a crop of that size in the box (training's crops are
  placed near uniformly around a decoy: decoys are not labelled, so they fall in negative crops, centred on
  any lesion-free voxel, or at the edge of positive ones).

Nothing is trained or predicted: it reads the phantom's record (decoy centres) and the CT (the box).

    python experiments/decoy_windows.py synth-cohort-240-decoys --split results/study-e-decoys/split.json

Prints a markdown table: per part and setting, the decoys, the mean share, and the decoys for which no
window (crop) covering them holds the partner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import dense_patch_slices

from h2aseg.config import load_config
from h2aseg.data.layouts import discover
from h2aseg.data.preprocess import preprocess_case
from h2aseg.data.transforms import body_threshold
from h2aseg.inference.sliding import body_box
from h2aseg.synth.cohort import LesionSite, phantom_sites

#: (kind, ROI, overlap): the preset's prediction, a larger overlap, a window as wide as the body, crops
SETTINGS = (
    ("sliding", (64, 64, 32), 0.25),
    ("sliding", (64, 64, 32), 0.5),
    ("sliding", (128, 64, 32), 0.25),
    ("crops", (64, 64, 32), None),
    ("crops", (128, 64, 32), None),
)


def starts(length: int, roi: int, overlap: float | None) -> np.ndarray:
    """Window starts along one axis of ``length`` voxels: MONAI's sliding grid (``dense_patch_slices`` at
    the interval ``sliding_window_inference`` uses, ``roi * (1 - overlap)``), or every placement
    (``overlap=None``). A window wider than the box is padded there: it starts at 0."""
    roi = min(roi, length)
    if overlap is None:
        return np.arange(length - roi + 1)
    interval = max(1, int(roi * (1 - overlap))) if length > roi else roi
    return np.asarray([s[0].start for s in dense_patch_slices((length,), (roi,), (interval,))])


def partner_share(
    p: np.ndarray, q: np.ndarray, shape: tuple[int, ...], roi: tuple[int, ...], overlap
) -> float:
    """Of the windows over ``shape`` that cover voxel ``p``, the share that also cover ``q`` (the window
    grid is a product over axes, so containment is counted axis by axis)."""
    cover_p, cover_both = 1, 1
    for axis in range(3):
        s = starts(shape[axis], roi[axis], overlap)
        r = min(roi[axis], shape[axis])
        in_p = (s <= p[axis]) & (p[axis] < s + r)
        in_q = (s <= q[axis]) & (q[axis] < s + r)
        cover_p *= int(in_p.sum())
        cover_both *= int((in_p & in_q).sum())
    return cover_both / cover_p if cover_p else float("nan")


def pairs(decoys: list[LesionSite]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(decoy, partner)`` centres in mm for every decoy whose partner (``..._l`` for ``..._r``) exists."""
    by_site = {d.site: np.asarray(d.center_mm) for d in decoys}
    other_side = {"_r": "_l", "_l": "_r"}
    return [
        (c, by_site[site[:-2] + other_side[site[-2:]]])
        for site, c in by_site.items()
        if site[:-2] + other_side.get(site[-2:], "") in by_site
    ]


def shares(root: Path, case_ids: set[str]) -> dict[int, list[float]]:
    cfg = load_config("synthetic", [])
    _, decoys = phantom_sites(root)
    out: dict[int, list[float]] = {i: [] for i in range(len(SETTINGS))}
    for case in discover(root):
        if case.case_id not in case_ids or not decoys.get(case.case_id):
            continue
        pc = preprocess_case(case, cfg.data)
        inv = np.linalg.inv(pc.geometry.grid_affine)
        for i, (_, roi, overlap) in enumerate(SETTINGS):
            box = body_box(torch.from_numpy(pc.image[0]), body_threshold(cfg.data), roi)
            lo = np.array([s.start or 0 for s in box])
            shape = tuple(
                (s.stop or n) - (s.start or 0) for s, n in zip(box, pc.image.shape[1:], strict=True)
            )
            for c, partner in pairs(decoys[case.case_id]):
                p, q = (np.rint(inv[:3, :3] @ v + inv[:3, 3]).astype(int) - lo for v in (c, partner))
                out[i].append(partner_share(p, q, shape, roi, overlap))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--split", type=Path, required=True, help="split.json of an experiment")
    a = ap.parse_args()
    split = json.loads(a.split.read_text(encoding="utf-8"))
    print(
        "| part | setting | decoys | windows covering a decoy that hold its partner (mean) | none hold it |"
    )
    print("|---|---|---:|---:|---:|")
    for part in ("val", "test"):
        found = shares(a.cohort, set(split[part]))
        for i, (kind, roi, overlap) in enumerate(SETTINGS):
            v = np.asarray(found[i])
            what = f"{kind} {'x'.join(map(str, roi))}" + ("" if overlap is None else f", overlap {overlap}")
            print(f"| {part} | {what} | {v.size} | {100 * v.mean():.0f} % | {int((v == 0).sum())} |")


if __name__ == "__main__":
    main()
