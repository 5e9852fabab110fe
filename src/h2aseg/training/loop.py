"""One epoch of training, validation, and what is written after each epoch (checkpoints, metrics.csv).

The pieces :func:`h2aseg.training.trainer.train` is made of, on the :class:`Engine` (model, optimizer,
loader...) and the :class:`TrainState` (epoch, step, best, history) of a
:class:`~h2aseg.training.run.TrainingRun`.
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from h2aseg import __version__
from h2aseg.checkpoint import save_checkpoint
from h2aseg.config import Config
from h2aseg.data.layouts import Case
from h2aseg.data.preprocess import CaseCache
from h2aseg.data.transforms import body_threshold, model_input
from h2aseg.evaluation.metrics import dice
from h2aseg.files import atomic_write_text
from h2aseg.hardware import autocast_context
from h2aseg.inference.sliding import predict_probabilities, probabilities_to_mask
from h2aseg.training.callbacks import TrainingCallbacks
from h2aseg.training.run import DistInfo, TrainingRun
from h2aseg.training.sampling import EpochSampler, PatchDataset, mix_seed, seed_everything

MAX_BAD_STEPS = 5  # consecutive non-finite steps before training stops
CSV_COLUMNS = ("epoch", "step", "train_loss", "val_dice", "val_dice_sd", "val_cases", "lr", "seconds")
FEW_VAL_CASES = 5  # below this many validation cases with lesions, best.pt is chosen on noise


@dataclass
class Engine:
    """Built by ``build_model_and_optim``: the model (``net``: its DDP wrapper), loss, data, optimizer."""

    model: nn.Module
    net: nn.Module
    loss_fn: nn.Module
    dataset: PatchDataset
    sampler: EpochSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_scaler: bool  # fp16 on CUDA: the scaler skips non-finite steps itself
    fresh: tuple[str, ...] = ()  # train.init_partial: the entries init_checkpoint lacked, freshly initialised

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)


@dataclass
class TrainState:
    """Where training stands (what a checkpoint stores besides the weights and optimizer states)."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best: float | None = None  # best validation Dice so far
    best_info: dict[str, Any] | None = None  # epoch, val_dice, val_dice_sd, val_cases of best.pt
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_steps: int = 0  # consecutive non-finite steps
    best_path: Path | None = None

    def record(self, row: dict[str, Any]) -> bool:
        """Add an epoch's row; whether its validation Dice is the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = row["val_dice"] is not None and (self.best is None or row["val_dice"] > self.best)
        if improved:
            self.best = row["val_dice"]
            self.best_info = {k: row[k] for k in ("epoch", "val_dice", "val_dice_sd", "val_cases")}
        return improved


# ------------------------------------------------------------------------------------------- validation
@dataclass
class Validation:
    """Whole-volume validation Dice (%) over the validation cases that have lesions."""

    dice: float  # mean over the cases
    sd: float  # standard deviation over the cases (0 for one case)
    cases: int  # how many cases with lesions the mean is over

    @property
    def sem(self) -> float:
        """Standard error of the mean: epochs closer than about twice this cannot be told apart."""
        return self.sd / math.sqrt(self.cases) if self.cases > 1 else float("nan")

    def describe(self) -> str:
        return f"{self.dice:.1f}% (sd {self.sd:.1f}, SE {self.sem:.1f}, n={self.cases} cases with lesions)"


def validate(
    model: nn.Module,
    cases: list[Case],
    cache: CaseCache,
    cfg: Config,
    device: torch.device,
    dd: DistInfo | None = None,
) -> Validation | None:
    """Dice (%) over validation cases with lesions, by sliding-window inference on whole volumes.

    ``None`` when no validation case has a lesion. Across DDP ranks the sums are reduced, so every rank
    gets the same result.
    """
    dd = dd or DistInfo()
    roi = cfg.infer.roi_size or cfg.data.patch_size
    total, total_sq, count = 0.0, 0.0, 0
    for case in cases[dd.rank :: dd.world]:
        pc = cache.get(case)
        if pc.label is None or not pc.label.any():
            continue
        probs = predict_probabilities(
            model, model_input(pc, cfg.data), cfg.infer, roi, device, body_threshold=body_threshold(cfg.data)
        )
        d = dice(probabilities_to_mask(probs, cfg.infer.threshold).numpy() > 0, pc.label > 0)
        total, total_sq, count = total + d, total_sq + d * d, count + 1
    total, total_sq, n = dd.sum([total, total_sq, float(count)], device)
    if not n:
        return None
    mean = total / n
    var = max(0.0, total_sq / n - mean * mean) * n / (n - 1) if n > 1 else 0.0
    return Validation(mean, math.sqrt(var), int(n))


# ------------------------------------------------------------------------------------------- epoch
def _module_names(keys: Sequence[str]) -> list[str]:
    """The modules that state_dict ``keys`` belong to (``encoder.sa2.gain`` -> ``encoder.sa2``), in order."""
    return list(dict.fromkeys(".".join(k.split(".")[:2]) for k in keys))


def initial_validation(run: TrainingRun, eng: Engine, ts: TrainState, cbs: TrainingCallbacks) -> None:
    """Fine-tuning: the starting weights are the first candidate for best.pt (saved as epoch 0), so that
    a fine-tune that does not help never replaces them."""
    cfg = run.cfg
    if eng.fresh and run.dd.main:  # only a fresh start loads init_checkpoint
        cbs.on_message(
            f"{len(eng.fresh)} entries not in {cfg.train.init_checkpoint} start freshly initialised: "
            + ", ".join(_module_names(eng.fresh))
        )
    if (
        run.state is not None
        or not cfg.train.init_checkpoint
        or not run.val_cases
        or cfg.train.val_every <= 0
    ):
        return
    v0 = validate(eng.model, run.val_cases, run.cache, cfg, run.device, run.dd)
    if v0 is None:
        return
    ts.best, ts.best_info = v0.dice, _val_fields(0, v0)
    if run.dd.main:
        cbs.on_message(f"epoch 0 (initial weights): val Dice {v0.describe()}")
        ts.best_path = save_checkpoint(_payload(run, eng, ts, 0), run.ckpt_dir / "best.pt")


def train_one_epoch(
    run: TrainingRun, eng: Engine, ts: TrainState, epoch: int, cbs: TrainingCallbacks
) -> dict[str, Any]:
    """Train epoch ``epoch`` (0-based), validate when due; the epoch's metrics.csv row."""
    cfg, dd = run.cfg, run.dd
    t0 = time.perf_counter()
    seed_everything(mix_seed(cfg.train.seed, epoch, dd.rank, 1))
    eng.sampler.set_epoch(epoch)
    eng.dataset.set_epoch(epoch)
    eng.net.train()
    loss_sum, n_batches = 0.0, 0
    for batch in eng.loader:
        loss = _train_step(run, eng, ts, batch, epoch, cbs)
        if loss is not None:
            loss_sum, n_batches = loss_sum + loss, n_batches + 1
    loss_sum, n_batches = dd.sum([loss_sum, float(n_batches)], run.device)
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": ts.step,
        "train_loss": loss_sum / max(1.0, n_batches),
        "val_dice": None,
        "val_dice_sd": None,
        "val_cases": None,
        "lr": eng.optimizer.param_groups[0]["lr"],
    }
    last_epoch = epoch + 1 == cfg.train.epochs
    if run.val_cases and cfg.train.val_every > 0 and ((epoch + 1) % cfg.train.val_every == 0 or last_epoch):
        v = validate(eng.model, run.val_cases, run.cache, cfg, run.device, dd)
        if v is not None:
            row.update(_val_fields(epoch + 1, v))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _train_step(
    run: TrainingRun, eng: Engine, ts: TrainState, batch: dict, epoch: int, cbs: TrainingCallbacks
) -> float | None:
    """One optimizer step; its loss, or ``None`` when the loss or gradient was not finite (skipped)."""
    cfg, device = run.cfg, run.device
    x = batch["image"].to(device, non_blocking=True)
    y = batch["label"].to(device, non_blocking=True)
    eng.optimizer.zero_grad(set_to_none=True)
    with autocast_context(cfg.train.amp, device, "train.amp"):
        outs = eng.net(x)
    if not cfg.train.deep_supervision and isinstance(outs, list):
        outs = outs[0]
    loss = eng.loss_fn(outs, y)
    extra = auxiliary_loss(eng.model)
    if extra is not None:  # a network's own term (SDB's similarity loss), from the same forward
        loss = loss + extra
    eng.scaler.scale(loss).backward()
    eng.scaler.unscale_(eng.optimizer)
    norm = nn.utils.clip_grad_norm_(eng.model.parameters(), cfg.train.grad_clip or float("inf"))
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))
    if not finite and not eng.use_scaler:  # the fp16 scaler skips such steps itself
        ts.bad_steps += 1
        _warn(run, cbs, f"warning: non-finite loss or gradient at step {ts.step + 1}; step skipped")
        if ts.bad_steps >= MAX_BAD_STEPS:
            raise FloatingPointError(
                f"{ts.bad_steps} consecutive non-finite steps (epoch {epoch + 1}, step {ts.step + 1}); "
                "lower train.lr, set train.grad_clip, or train with train.amp=off"
            )
        eng.optimizer.zero_grad(set_to_none=True)
    else:
        ts.bad_steps = 0
        eng.scaler.step(eng.optimizer)
        eng.scaler.update()
    eng.scheduler.step()
    ts.step += 1
    value = float(loss.detach()) if finite else None
    cbs.on_step(ts.step, value, eng.optimizer.param_groups[0]["lr"])
    return value


def auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """The network's own loss term from its last training forward (``model.auxiliary_loss()``), if any.

    Networks whose method adds a term to the segmentation loss (SDB: similarity between its branch
    predictions) define ``auxiliary_loss() -> Tensor | None``; every other network has none.
    """
    fn = getattr(model, "auxiliary_loss", None)
    return fn() if callable(fn) else None


def _warn(run: TrainingRun, cbs: TrainingCallbacks, text: str) -> None:
    if run.dd.main:
        cbs.on_message(text)
    else:  # the callbacks live on rank 0; a warning on another rank is still shown
        print(text, flush=True)


def save_epoch(run: TrainingRun, eng: Engine, ts: TrainState, row: dict[str, Any]) -> bool:
    """Record the epoch's row; on rank 0 write last.pt, best.pt if it improved, metrics.csv. Improved?"""
    improved = ts.record(row)
    if run.dd.main:
        payload = _payload(run, eng, ts, row["epoch"])
        save_checkpoint(payload, run.ckpt_dir / "last.pt")
        if improved:
            ts.best_path = save_checkpoint(payload, run.ckpt_dir / "best.pt")
        _write_metrics_csv(run.run_dir / "metrics.csv", ts.history)
    return improved


# ------------------------------------------------------------------------------------------- helpers
def _payload(run: TrainingRun, eng: Engine, ts: TrainState, epoch: int) -> dict[str, Any]:
    return {
        "version": __version__,
        "config": run.cfg.to_dict(),
        "model": eng.model.state_dict(),
        "split": asdict(run.split),
        "grid_spacing": None if run.grid_spacing is None else list(run.grid_spacing),
        "epoch": epoch,
        "step": ts.step,
        "optimizer": eng.optimizer.state_dict(),
        "scheduler": eng.scheduler.state_dict(),
        "scaler": eng.scaler.state_dict(),
        "rng": _rng_state(),
        "best_val_dice": ts.best,
        "best_info": ts.best_info,
        "history": ts.history,
    }


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _val_fields(epoch: int, v: Validation) -> dict[str, Any]:
    return {"epoch": epoch, "val_dice": v.dice, "val_dice_sd": v.sd, "val_cases": v.cases}


def best_line(info: dict[str, Any]) -> str:
    """What best.pt was chosen on: the run's output says it, with a warning when that is too little."""
    v = Validation(info["val_dice"], info.get("val_dice_sd") or 0.0, int(info.get("val_cases") or 0))
    line = f"best.pt: epoch {info['epoch']}, val Dice {v.describe()}"
    if v.cases < FEW_VAL_CASES:
        line += (
            f"; warning: chosen on fewer than {FEW_VAL_CASES} cases with lesions, which cannot tell epochs "
            "apart (raise train.val_max_cases or the validation share of the split)"
        )
    return line
