"""Time the per-case metrics on a whole-body-sized case (400x400x326, FDG PET spacing) and print a table.

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 3] [--reference]

The case: 9 lesions of radius 2-28 voxels (irregular ellipsoids) spread from head to pelvis; the prediction
over- and under-segments some, shifts one, misses one and adds three false positives (one bladder-sized).
``--reference`` also times medpy's ``hd95`` and MONAI's Hausdorff distance on the full volume (slow).
Never a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from h2aseg.data.io import write_volume
from h2aseg.evaluation.matching import CasePair
from h2aseg.evaluation.metrics import evaluate_case, lesion_stats, overlap
from h2aseg.evaluation.pipeline import score_pair
from h2aseg.evaluation.surface import hd95, surface_distances

SHAPE = (400, 400, 326)
SPACING = (2.0364201068878174, 2.0364201068878174, 3.0)


def _blob(
    mask: np.ndarray,
    centre: tuple[int, int, int],
    radii: tuple[float, float, float],
    rng: np.random.Generator,
) -> None:
    """Paint an irregular ellipsoid (smoothed noisy radius) into ``mask`` in place."""
    r = int(max(radii) * 1.4) + 2
    sl = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, n in zip(centre, mask.shape, strict=True))
    grid = np.ogrid[tuple(slice(s.start - c, s.stop - c) for s, c in zip(sl, centre, strict=True))]
    d = sum((g / rad) ** 2 for g, rad in zip(grid, radii, strict=True))
    noise = ndimage.gaussian_filter(rng.standard_normal(d.shape), 2.0)
    noise /= max(float(np.abs(noise).max()), 1e-6)
    mask[sl] |= d < (1.0 + 0.35 * noise)


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt) boolean masks of shape :data:`SHAPE`."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, dtype=bool)
    pred = np.zeros(SHAPE, dtype=bool)
    lesions = [  # centre (x, y, z), radii in voxels
        ((200, 210, 300), (6, 6, 4)),
        ((150, 190, 250), (12, 10, 8)),
        ((260, 200, 240), (4, 4, 3)),
        ((190, 220, 200), (28, 22, 16)),
        ((120, 200, 160), (9, 8, 6)),
        ((280, 190, 120), (15, 14, 10)),
        ((200, 230, 90), (3, 3, 2)),
        ((230, 180, 60), (7, 6, 5)),
        ((160, 210, 40), (2, 2, 2)),
    ]
    for i, (c, r) in enumerate(lesions):
        one = np.zeros(SHAPE, dtype=bool)
        _blob(one, c, r, rng)
        gt |= one
        if i == 6:  # missed lesion
            continue
        if i == 3:  # shifted by 3 voxels
            one = np.roll(one, 3, axis=0)
        elif i % 3 == 0:
            one = ndimage.binary_dilation(one, iterations=2)
        elif i % 3 == 1:
            one = ndimage.binary_erosion(one)
        pred |= one
    for c, r in (((200, 200, 20), (25, 20, 12)), ((210, 220, 315), (8, 8, 5)), ((100, 150, 180), (3, 3, 2))):
        _blob(pred, c, r, rng)  # bladder, brain edge, a small spurious uptake
    return pred, gt


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", action="store_true", help="also time medpy and MONAI (full volume)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    pred, gt = make_case()
    t_make = time.perf_counter() - t0
    vml = float(np.prod(SPACING)) / 1000

    rows: list[tuple[str, float, str]] = []
    rows.append(
        ("overlap counts (Dice/precision/recall)", *_fmt(_time(lambda: overlap(pred, gt), args.repeats)))
    )
    rows.append(
        (
            "lesion_stats (cc3d 18-conn., FPV/FNV, lesions)",
            *_fmt(_time(lambda: lesion_stats(pred, gt, vml), args.repeats)),
        )
    )
    for m in ("edt", "kdtree", "auto"):
        rows.append(
            (
                f"hd95 medpy convention, method={m}",
                *_fmt(_time(lambda m=m: hd95(pred, gt, SPACING, method=m), args.repeats)),
            )
        )
    rows.append(
        (
            "hd95 monai convention (auto)",
            *_fmt(_time(lambda: hd95(pred, gt, SPACING, convention="monai"), args.repeats)),
        )
    )
    rows.append(
        (
            "evaluate_case (everything, medpy HD95)",
            *_fmt(_time(lambda: evaluate_case(pred, gt, SPACING), args.repeats)),
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        aff = np.diag([*SPACING, 1.0])
        pair = CasePair(
            "bench",
            write_volume(Path(tmp) / "gt.nii.gz", gt.astype(np.uint8), aff),
            write_volume(Path(tmp) / "pred.nii.gz", pred.astype(np.uint8), aff),
        )
        rows.append(
            (
                "score_pair: read 2 .nii.gz + evaluate_case",
                *_fmt(_time(lambda: score_pair(pair), args.repeats)),
            )
        )
    if args.reference:
        from medpy.metric.binary import hd95 as medpy_hd95

        rows.append(
            (
                "reference: medpy.metric.binary.hd95 (full volume)",
                *_fmt(_time(lambda: medpy_hd95(pred, gt, voxelspacing=SPACING), 1)),
            )
        )
        try:
            import torch
            from monai.metrics import compute_hausdorff_distance

            tp, tg = (torch.from_numpy(x[None, None]) for x in (pred, gt))
            rows.append(
                (
                    "reference: monai compute_hausdorff_distance(95)",
                    *_fmt(
                        _time(
                            lambda: float(
                                compute_hausdorff_distance(tp, tg, percentile=95, spacing=SPACING)[0, 0]
                            ),
                            1,
                        )
                    ),
                )
            )
        except ImportError:
            pass

    d_pg, d_gp = surface_distances(pred, gt, SPACING)
    con = Console(width=120)
    table = Table(
        title=f"h2aseg evaluation metrics, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} @ "
        f"{SPACING[0]:.4f}x{SPACING[1]:.4f}x{SPACING[2]:.1f} mm (best of {args.repeats})"
    )
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("result", justify="right")
    for name, sec, res in rows:
        table.add_row(name, f"{sec:.3f}", res)
    con.print(table)
    con.print(
        f"case: GT {int(gt.sum())} voxels, pred {int(pred.sum())} voxels, border voxels "
        f"{d_pg.size}+{d_gp.size}; built in {t_make:.1f} s; "
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}"
    )


def _fmt(res: tuple[float, object]) -> tuple[float, str]:
    sec, out = res
    if isinstance(out, float):
        return sec, f"{out:.4f}"
    if isinstance(out, dict):
        return sec, f"Dice {out['dice']:.2f}, HD95 {out['hd95']:.2f} mm, FPV {out['fp_volume_ml']:.1f} ml"
    if hasattr(out, "fp_volume_ml"):
        return sec, f"FPV {out.fp_volume_ml:.1f} ml, FNV {out.fn_volume_ml:.1f} ml"  # type: ignore[attr-defined]
    if hasattr(out, "tp"):
        return sec, f"TP {out.tp}"  # type: ignore[attr-defined]
    return sec, str(out)


if __name__ == "__main__":
    main()
