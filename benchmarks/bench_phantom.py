"""Time the synthetic PET/CT phantom: synthesis per study and writing a small cohort.

Run: ``.venv/bin/python benchmarks/bench_phantom.py [--repeats 3]``. Prints a small table (median seconds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from h2aseg.synth import synth_case, write_cohort

CASES = [
    ("wholebody", (96, 96, 128), (4.0, 4.0, 4.0)),
    ("wholebody", (128, 128, 160), None),
    ("wholebody", (200, 200, 256), (2.5, 2.5, 3.5)),
    ("headneck", (128, 128, 160), None),
]


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{'what':<50}{'voxels':>12}{'seconds':>10}")
    print("-" * 72)
    for kind, shape, spacing in CASES:
        sec = _median(
            lambda k=kind, s=shape, sp=spacing: synth_case(k, seed=1, shape=s, spacing=sp), args.repeats
        )
        sp = "default" if spacing is None else "x".join(f"{v:g}" for v in spacing)
        name = f"synth_case {kind} {'x'.join(map(str, shape))} @ {sp}"
        print(f"{name:<50}{shape[0] * shape[1] * shape[2]:>12,}{sec:>10.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("autopet", "hecktor"):

            def run(layout: str = layout) -> None:
                out = Path(tmp) / f"{layout}-{time.perf_counter_ns()}"
                write_cohort(
                    out,
                    4,
                    layout,
                    seed=1,
                    shape=(96, 96, 128),
                    spacing=(4.0, 4.0, 4.0) if layout == "autopet" else None,
                )

            sec = _median(run, max(1, args.repeats // 2))
            print(f"{'write_cohort 4 x 96x96x128 ' + layout:<50}{4 * 96 * 96 * 128:>12,}{sec:>10.3f}")


if __name__ == "__main__":
    main()
