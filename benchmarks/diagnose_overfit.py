"""Diagnostic: can the recipe fit ONE study, and does whole-volume prediction see what the crops learned?

Trains a fresh network with a preset's data pipeline, model and eq. (5) loss on crops of a single study
with lesions (the first one of ``--data`` with at least ``--min-voxels`` lesion voxels) and prints, as a
Markdown table, the training loss, the Dice of the training crops and, every ``--check-every`` steps, the
Dice of a sliding-window prediction of that whole study (the validation/prediction code path). If the
crops are fitted but the whole-volume Dice stays low, the bug is between training and inference
(intensities, orientation, windows, thresholds); if both rise, the pipeline is sound and the limit is
generalisation. ``docs/training-notes.md`` section 9 quotes a run.

Usage::

    python benchmarks/diagnose_overfit.py --data COHORT [--preset synthetic] [--steps 100] [--lr 1e-3]
        [--check-every 50] [--cache DIR] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from h2aseg.config import load_config
from h2aseg.data.layouts import discover
from h2aseg.data.preprocess import CaseCache
from h2aseg.data.transforms import case_to_dict, train_transforms
from h2aseg.evaluation.metrics import dice
from h2aseg.hardware import tune_allocator
from h2aseg.inference.sliding import predict_probabilities, probabilities_to_mask
from h2aseg.models.factory import build_from_config
from h2aseg.models.outputs import foreground_probability
from h2aseg.training.losses import DeepSupervisedDiceCE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="synthetic")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--min-voxels", type=int, default=200)
    ap.add_argument("--cache", default=None, help="preprocessed-case cache (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    args = ap.parse_args()

    tune_allocator()
    torch.manual_seed(args.seed)
    cfg = load_config(args.preset, args.set)
    cache = CaseCache(args.cache or tempfile.mkdtemp(prefix="h2aseg-overfit-"), cfg.data)
    study = None
    for case in discover(args.data, cfg.data.layout):
        pc = cache.get(case)
        if pc.label is not None and int((pc.label > 0).sum()) >= args.min_voxels:
            study = pc
            break
    if study is None:
        raise SystemExit(f"no study in {args.data} has {args.min_voxels} or more lesion voxels")
    gt = study.label > 0
    print(f"study {study.case_id}: grid {study.image.shape[1:]}, {int(gt.sum())} lesion voxels\n")

    model = build_from_config(cfg.model, patch_size=cfg.data.patch_size)
    loss_fn = DeepSupervisedDiceCE(cfg.model.out_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=cfg.train.weight_decay)
    crops = train_transforms(cfg.data)
    crops.set_random_state(seed=args.seed)
    per_step = cfg.train.batch_size * cfg.data.crops_per_case
    print("| step | loss | crop Dice (%) | whole-study Dice (%) | predicted / true voxels | seconds |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch: list[dict] = []
        while len(batch) < per_step:
            batch += crops(case_to_dict(study))
        x = torch.stack([c["image"] for c in batch[:per_step]])
        y = torch.stack([c["label"] for c in batch[:per_step]])
        model.train()
        outs = model(x)
        loss = loss_fn(outs, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        opt.step()
        finest = outs[0] if isinstance(outs, list) else outs
        with torch.no_grad():
            crop_dice = dice(foreground_probability(finest).numpy() >= 0.5, y.numpy() > 0)
        whole, counts = "", ""
        if step % args.check_every == 0 or step == args.steps:
            probs = predict_probabilities(
                model, torch.from_numpy(study.image), cfg.infer, cfg.data.patch_size
            )
            mask = probabilities_to_mask(probs, cfg.infer.threshold).numpy() > 0
            whole, counts = f"{dice(mask, gt):.1f}", f"{int(mask.sum())} / {int(gt.sum())}"
        if step in (1, args.steps) or step % 10 == 0 or whole:
            print(
                f"| {step} | {float(loss):.2f} | {np.nan_to_num(crop_dice):.1f} | {whole} | {counts} "
                f"| {time.perf_counter() - t0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
