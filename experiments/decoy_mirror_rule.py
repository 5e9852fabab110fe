"""Is the decoy cohort's cue there to be found? A fixed rule that looks across the body, with no training.

For every hot spot at a decoy station pair of a cohort written with ``h2aseg synth --symmetric-decoys`` (the
decoys, and the node lesions at those stations), read the PET's SUVmax within the spot's radius (+10 mm
for the phantom's jitter of station centres) at the spot itself and at its mirror image across the body's
midline (the x-centroid of the CT's body voxels, > -500 HU), and report how well the ratio
``mirror / own`` separates decoys (a partner on the other side: ratio near 1) from lesions (none: ratio
near background / lesion). Nothing is fitted: the AUC needs no threshold, and the counts use the fixed
halfway ratio 0.5. A rule this simple separating them says the cue is in the images and needs only
context 80-170 mm away; whether a network learns it is what experiments/study-e-decoys-synth.yaml asks.

    python experiments/decoy_mirror_rule.py synth-cohort-240-decoys --split SPLIT_JSON

Prints a markdown table (whole cohort, or the split's validation and test parts with ``--split``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from h2aseg.data.io import read_volume
from h2aseg.data.layouts import discover
from h2aseg.evaluation.decoys import ball
from h2aseg.synth.cohort import LesionSite, phantom_sites
from h2aseg.synth.decoys import DECOY_STATIONS, station_of

TOLERANCE_MM = 10.0
HALFWAY = 0.5


def ball_max(image: np.ndarray, affine: np.ndarray, center: np.ndarray, radius: float) -> float:
    """The largest value of ``image`` at voxel centres within ``radius`` mm of ``center`` (0 outside)."""
    found = ball(image.shape, affine, center, radius)
    return 0.0 if found is None else float(np.asarray(image[found[0]])[found[1]].max())


def spots(lesions: list[LesionSite], decoys: list[LesionSite]) -> list[tuple[str, np.ndarray, float]]:
    """``(kind, centre, radius)`` of the decoys and of the node lesions at decoy stations."""
    nodes = [s for s in lesions if s.site.startswith("node:") and station_of(s.site) in DECOY_STATIONS]
    return [
        (kind, np.asarray(s.center_mm), s.diameter_mm / 2)
        for kind, group in (("decoy", decoys), ("lesion", nodes))
        for s in group
    ]


def ratios(root: Path, case_ids: set[str] | None) -> list[tuple[str, float]]:
    lesions, decoys = phantom_sites(root)
    out = []
    for case in discover(root):
        if case_ids is not None and case.case_id not in case_ids:
            continue
        pet, ct = read_volume(case.pet), read_volume(case.ct)
        body = np.argwhere(ct.array > -500)
        mid_x = float((body @ ct.affine[:3, :3].T + ct.affine[:3, 3])[:, 0].mean())
        for kind, c, r in spots(lesions.get(case.case_id, []), decoys.get(case.case_id, [])):
            own = ball_max(pet.array, pet.affine, c, r + TOLERANCE_MM)
            across = np.array([2 * mid_x - c[0], c[1], c[2]])
            mirror = ball_max(pet.array, pet.affine, across, r + TOLERANCE_MM)
            out.append((kind, mirror / max(own, 1e-6)))
    return out


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a decoy's ratio > a lesion's), ties half (the Mann-Whitney statistic)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def row(part: str, rs: list[tuple[str, float]]) -> str:
    dec = [v for k, v in rs if k == "decoy"]
    les = [v for k, v in rs if k == "lesion"]
    return (
        f"| {part} | {len(dec)} | {np.median(dec):.2f} | {sum(v >= HALFWAY for v in dec)} | {len(les)} | "
        f"{np.median(les):.2f} | {sum(v >= HALFWAY for v in les)} | {auc(dec, les):.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--split", type=Path, help="split.json of an experiment: report its val and test parts")
    a = ap.parse_args()
    print(
        "| part | decoys | median mirror/own | >= 0.5 | node lesions at decoy stations | median mirror/own "
        "| >= 0.5 | AUC |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    if a.split is None:
        print(row("all studies", ratios(a.cohort, None)))
        return
    split = json.loads(a.split.read_text(encoding="utf-8"))
    for part in ("val", "test"):
        print(row(part, ratios(a.cohort, set(split[part]))))


if __name__ == "__main__":
    main()
