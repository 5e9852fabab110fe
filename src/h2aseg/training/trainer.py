"""The training loop: patches, eq. (5) loss, sliding-window validation, checkpoints, resume, logs, DDP.

A run directory holds::

    config.yaml          the full configuration of the run
    split.json           the patient-level train/val/test split
    checkpoints/last.pt  weights, config, split, epoch, optimizer/scheduler/scaler/RNG states, history
    checkpoints/best.pt  the same at the best validation Dice
    metrics.csv          one row per epoch: epoch, step, train_loss, val_dice, lr, seconds
    tb/                  TensorBoard logs (the default callbacks)
    curves.png           training curves, written at the end by the ``CurvesPlot`` callback that
                         ``h2aseg train`` and the demo hand in
    finished.json        written last; a finished run is not overwritten without ``force``

:func:`train` runs the steps below, which an experiment runner may also call itself::

    run = setup_run(cfg, run_dir, resume=..., force=...)   # processes, run dir, split, cache
    eng = build_model_and_optim(run)                       # model, loss, data loader, optimizer...
    ts = restore(run, eng)                                 # the resumed state, or a fresh one
    initial_validation(run, eng, ts, cbs)                  # fine-tuning: the starting weights' Dice
    row = train_one_epoch(run, eng, ts, epoch, cbs)        # steps, then validation when due
    save_epoch(run, eng, ts, row)                          # history, best, checkpoints, metrics.csv
    result = finish(run, eng, ts, cbs)                     # finished.json, the best.pt line

What is shown or logged is up to the callbacks (:mod:`h2aseg.training.callbacks`).

Launched by ``torchrun`` (``WORLD_SIZE > 1``) it runs DistributedDataParallel (NCCL on GPU, gloo on
CPU): each rank draws distinct cases, losses and validation sums are reduced across ranks, and only
rank 0 writes (and calls the callbacks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import list_data_collate
from torch.utils.data import DataLoader

from h2aseg.checkpoint import load_weights
from h2aseg.config import Config, ConfigError
from h2aseg.data.transforms import train_transforms
from h2aseg.files import atomic_write_text
from h2aseg.models.factory import build_from_config, resolved_out_channels
from h2aseg.training.callbacks import CallbackList, TrainingCallbacks, default_callbacks
from h2aseg.training.loop import (
    CSV_COLUMNS,
    FEW_VAL_CASES,
    MAX_BAD_STEPS,
    Engine,
    TrainState,
    Validation,
    best_line,
    initial_validation,
    save_epoch,
    set_rng_state,
    train_one_epoch,
    validate,
)
from h2aseg.training.losses import DeepSupervisedDiceCE
from h2aseg.training.run import RunDirError, TrainingRun, prepare_run_dir, setup_run
from h2aseg.training.sampling import (
    EpochSampler,
    PatchDataset,
    lesion_case_weights,
    mix_seed,
    seed_everything,
)

__all__ = [
    "CSV_COLUMNS",
    "FEW_VAL_CASES",
    "MAX_BAD_STEPS",
    "Engine",
    "RunDirError",
    "TrainResult",
    "TrainState",
    "TrainingRun",
    "Validation",
    "build_model_and_optim",
    "finish",
    "initial_validation",
    "lr_lambda",
    "prepare_run_dir",
    "restore",
    "save_epoch",
    "setup_run",
    "train",
    "train_one_epoch",
    "validate",
]


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_val_dice: float | None
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None
    best: dict[str, Any] | None = None  # epoch, val_dice, val_dice_sd, val_cases of best.pt


# ------------------------------------------------------------------------------------------- schedule
def lr_lambda(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step ``s`` (warm-up, then the configured schedule)."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.lr_schedule not in ("constant", "exponential", "cosine", "onecycle"):
        raise ConfigError(
            f"train.lr_schedule must be constant|exponential|cosine|onecycle, got {t.lr_schedule!r}"
        )

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "exponential":  # the released code: x lr_decay after every epoch
            return t.lr_decay ** (step // steps_per_epoch)
        if t.lr_schedule in ("cosine", "onecycle"):
            start = t.warmup_steps
            progress = min(1.0, (step - start) / max(1, total - start))
            return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f


def _optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer must be adam or adamw, got {t.optimizer!r}")


# ------------------------------------------------------------------------------------------- steps
def build_model_and_optim(run: TrainingRun) -> Engine:
    """Seed, build the model (from ``train.init_checkpoint`` when fine-tuning), the loader, the optimizer."""
    cfg, dd, device = run.cfg, run.dd, run.device
    seed_everything(mix_seed(cfg.train.seed, dd.rank))
    if device.type == "cuda" and cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_from_config(cfg.model, patch_size=cfg.data.patch_size, layout=cfg.data.input_layout()).to(
        device
    )
    fresh: tuple[str, ...] = ()
    if cfg.train.init_checkpoint and run.state is None:
        fresh = load_weights(model, cfg.train.init_checkpoint, partial=cfg.train.init_partial)
    net: nn.Module = model
    if dd.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = DeepSupervisedDiceCE(resolved_out_channels(cfg.model))
    dataset = PatchDataset(run.train_cases, run.cache, train_transforms(cfg.data), cfg.train.seed)
    t = cfg.train
    num_samples = t.steps_per_epoch * t.batch_size * dd.world if t.steps_per_epoch else None
    sampler = EpochSampler(
        len(run.train_cases),
        t.seed,
        num_samples=num_samples,
        rank=dd.rank,
        world=dd.world,
        weights=_case_weights(run),
    )
    loader = DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=sampler,
        collate_fn=list_data_collate,
        num_workers=cfg.data.num_workers,
    )
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, len(loader)))
    use_scaler = device.type == "cuda" and t.amp in ("auto", "fp16")
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    return Engine(
        model, net, loss_fn, dataset, sampler, loader, optimizer, scheduler, scaler, use_scaler, fresh
    )


def _case_weights(run: TrainingRun) -> list[float] | None:
    """``data.lesion_case_fraction``'s sampling weights over the training cases (None: uniform)."""
    fraction = run.cfg.data.lesion_case_fraction
    if fraction is None:
        return None
    if not run.cfg.train.steps_per_epoch:
        raise ConfigError(
            "data.lesion_case_fraction needs train.steps_per_epoch (an epoch of weighted draws, "
            "not one pass over the cases)"
        )
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"data.lesion_case_fraction must lie in [0, 1], got {fraction}")
    has_lesion = [bool(np.any(run.cache.get(c).label)) for c in run.train_cases]
    return lesion_case_weights(has_lesion, fraction)


def restore(run: TrainingRun, eng: Engine) -> TrainState:
    """Load the resumed checkpoint's weights, optimizer/scheduler/scaler/RNG states; its progress."""
    best_pt = run.ckpt_dir / "best.pt"
    ts = TrainState(best_path=best_pt if best_pt.exists() else None)
    state = run.state
    if state is None:
        return ts
    eng.model.load_state_dict(state["model"])
    eng.optimizer.load_state_dict(state["optimizer"])
    eng.scheduler.load_state_dict(state["scheduler"])
    eng.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    ts.epoch, ts.step, ts.history = state["epoch"], state["step"], state["history"]
    ts.best, ts.best_info = state["best_val_dice"], state.get("best_info")
    return ts


def finish(run: TrainingRun, eng: Engine, ts: TrainState, cbs: TrainingCallbacks) -> TrainResult:
    """Callbacks' ``on_finish``, then finished.json and the line saying what best.pt was chosen on."""
    if run.dd.main:
        cbs.on_finish(run.run_dir, ts.history)
        summary = {
            "epochs": len(ts.history),
            "best_val_dice": ts.best,
            "best": ts.best_info,
            "seconds": round(sum(row.get("seconds") or 0.0 for row in ts.history), 1),
            "final": ts.history[-1] if ts.history else None,
        }
        atomic_write_text(run.run_dir / "finished.json", json.dumps(summary, indent=2))
        if ts.best_info is not None:
            cbs.on_message(best_line(ts.best_info))
    run.dd.barrier()
    last = run.ckpt_dir / "last.pt"
    return TrainResult(
        run.run_dir,
        last if last.exists() else None,
        ts.best_path,
        ts.best,
        len(ts.history),
        ts.history,
        eng.model,
        ts.best_info,
    )


# ------------------------------------------------------------------------------------------- main
def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    callbacks: Sequence[TrainingCallbacks] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on the cases under ``cfg.data.root``; see the module docstring for outputs.

    ``callbacks`` (rank 0 only) replace :func:`~h2aseg.training.callbacks.default_callbacks` (the console,
    with a progress bar when ``progress``, and TensorBoard); hand in ``CurvesPlot`` for curves.png.
    ``on_epoch_end(epoch, row)`` is called on every rank after each epoch's checkpoint is written.
    """
    run = setup_run(cfg, run_dir, resume=resume, force=force, progress=progress)
    eng = build_model_and_optim(run)
    ts = restore(run, eng)
    chosen = default_callbacks(progress) if callbacks is None else callbacks
    cbs = CallbackList(chosen if run.dd.main else ())
    cbs.on_start(run.run_dir, ts.epoch, (cfg.train.epochs - ts.epoch) * eng.steps_per_epoch)
    try:
        initial_validation(run, eng, ts, cbs)
        for epoch in range(ts.epoch, cfg.train.epochs):
            row = train_one_epoch(run, eng, ts, epoch, cbs)
            save_epoch(run, eng, ts, row)
            cbs.on_epoch_end(row)
            run.dd.barrier()
            if on_epoch_end:
                on_epoch_end(epoch + 1, row)
        return finish(run, eng, ts, cbs)
    finally:
        cbs.close()
