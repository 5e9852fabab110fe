"""Whole-case prediction time at AutoPET size (400 x 400 x 326 at 2.04 x 2.04 x 3 mm); prints a table.

Each row builds the network of a preset (random weights: the time does not depend on them), writes one
synthetic whole-body case of that size as NIfTI, and times ``Predictor.predict_files`` end to end
(reading, preprocessing, sliding-window inference, mapping back to the CT grid) for several overlap and
precision settings. The AutoPET III challenge allowed 5 minutes per case.

The rows ``shipped ...`` predict with the shipped demo checkpoint (its trained weights) at its stored
settings; a row whose name ends in `` cpu-fast-path`` runs ``infer.cpu_fast_path=true`` and its mask is
compared (Dice) with that of the row of the same name without the suffix, measured before it in the same
run (``--rounds`` alternates the two several times). ``shipped fp32 overlap-0.25 native-grid`` predicts on
the case's own 2.04 x 2.04 x 3 mm grid (``data.target_spacing=null``) instead of the checkpoint's training
grid; its mask is compared with the ``shipped fp32 overlap-0.25`` row's.

    python benchmarks/bench_predict.py [--shape 400 400 326] [--rows "released bf16 overlap-0.25,..."]
        [--threads 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

#: a row whose "preset" is this runs the shipped demo checkpoint instead of random weights
SHIPPED = "shipped-checkpoint"
SHIPPED_PATH = Path(__file__).resolve().parents[1] / "src/h2aseg/assets/demo_checkpoint.pt"
#: a row named like another plus one of these suffixes is compared (Dice of the masks) with the other
FAST = " cpu-fast-path"
NATIVE = " native-grid"

ROWS = {
    # name: (preset, overrides)
    "paper fp32 overlap-0.5": ("autopet2", ["infer.amp=off", "infer.overlap=0.5"]),
    "paper bf16 overlap-0.25": ("autopet2", ["infer.amp=bf16", "infer.overlap=0.25"]),
    "paper fp32 overlap-0.25": ("autopet2", ["infer.amp=off", "infer.overlap=0.25"]),
    "released fp32 overlap-0.25": (
        "autopet2",
        ["model.variant=released", "model.out_channels=2", "infer.amp=off", "infer.overlap=0.25"],
    ),
    "released bf16 overlap-0.25": (
        "autopet2",
        ["model.variant=released", "model.out_channels=2", "infer.amp=bf16", "infer.overlap=0.25"],
    ),
    "demo-model bf16 overlap-0.25": ("synthetic", ["infer.amp=bf16", "infer.overlap=0.25"]),
    # the shipped demo checkpoint (trained weights: its masks are compared), current path and fast path
    "shipped fp32 overlap-0.25": (
        SHIPPED,
        ["infer.amp=off", "infer.overlap=0.25", "infer.cpu_fast_path=false"],
    ),
    f"shipped fp32 overlap-0.25{FAST}": (
        SHIPPED,
        ["infer.amp=off", "infer.overlap=0.25", "infer.cpu_fast_path=true"],
    ),
    f"shipped fp32 overlap-0.25{NATIVE}": (
        SHIPPED,
        ["infer.amp=off", "infer.overlap=0.25", "infer.cpu_fast_path=false", "data.target_spacing=null"],
    ),
}


def grid_shape(shape: list[int], spacing: list[float], target: tuple[float, ...] | None) -> list[int]:
    """The working grid's shape: the case's own, or that of ``data.target_spacing`` over the same extent."""
    from h2aseg.data.preprocess import resampled_shape

    return list(shape) if target is None else list(resampled_shape(shape, spacing, target))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[400, 400, 326])
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.0364, 2.0364, 3.0])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--rounds", type=int, default=1, help="measure the rows this many times, in turn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    from h2aseg.config import load_config
    from h2aseg.data.io import write_volume
    from h2aseg.evaluation.metrics import dice
    from h2aseg.hardware import resolve_device
    from h2aseg.inference.predictor import Predictor
    from h2aseg.models.factory import build_from_config
    from h2aseg.synth import synth_case

    device = resolve_device("auto")
    table = Table(
        title=f"Prediction of one {'x'.join(map(str, args.shape))} case "
        f"({'CUDA ' + torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
        f"{torch.get_num_threads()} threads)"
    )
    for col in ("setting", "patch", "windows", "seconds", "minutes", "Dice vs current path"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        case = synth_case("wholebody", seed=0, shape=tuple(args.shape), spacing=tuple(args.spacing))
        ct, pet = Path(tmp) / "ct.nii.gz", Path(tmp) / "pet.nii.gz"
        write_volume(ct, case["ct"], case["ct_affine"])
        write_volume(pet, case["pet"], case["pet_affine"])
        names = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            raise SystemExit(f"bench_predict.py: error: unknown rows {unknown}; choose among {list(ROWS)}")
        masks: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name in names:
                preset, overrides = ROWS[name]
                if preset == SHIPPED:
                    predictor = Predictor.from_checkpoint(SHIPPED_PATH, overrides)
                    cfg = predictor.cfg
                else:
                    cfg = load_config(preset, overrides)
                    predictor = Predictor(build_from_config(cfg.model), cfg, device)
                t0 = time.perf_counter()
                mask = predictor.predict_files(ct, pet).mask
                seconds = time.perf_counter() - t0
                masks[name] = mask
                roi = predictor.roi_size
                steps = [max(1, int(r * (1 - cfg.infer.overlap))) for r in roi]
                grid = grid_shape(args.shape, args.spacing, cfg.data.target_spacing)
                n = 1
                for s, r, st in zip(grid, roi, steps, strict=True):
                    n *= max(1, -(-(s - r) // st) + 1)
                base = name.removesuffix(FAST).removesuffix(NATIVE)
                ref = masks.get(base) if base != name else None
                agreement = "-" if ref is None else f"{dice(mask, ref) / 100:.4f}"  # NaN: both empty
                table.add_row(
                    name, "x".join(map(str, roi)), str(n), f"{seconds:.0f}", f"{seconds / 60:.1f}", agreement
                )
                print(
                    f"{name}: {seconds:.0f} s for {n} windows of {roi} (Dice vs current {agreement})",
                    flush=True,
                )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
