"""The training loop: patches, eq. (5) loss, sliding-window validation, checkpoints, resume, logs, DDP.

A run directory holds::

    config.yaml          the full configuration of the run
    split.json           the patient-level train/val/test split
    checkpoints/last.pt  weights, config, split, epoch, optimizer/scheduler/scaler/RNG states, history
    checkpoints/best.pt  the same at the best validation Dice
    metrics.csv          one row per epoch: epoch, step, train_loss, val_dice, lr, seconds
    tb/                  TensorBoard logs
    curves.png           training curves (written at the end)
    finished.json        written last; a finished run is not overwritten without ``force``

Launched by ``torchrun`` (``WORLD_SIZE > 1``) it runs DistributedDataParallel (NCCL on GPU, gloo on
CPU): each rank draws distinct cases, losses and validation sums are reduced across ranks, and only
rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from monai.data import list_data_collate
from torch.utils.data import DataLoader

from h2aseg import __version__
from h2aseg.checkpoint import load_checkpoint, save_checkpoint
from h2aseg.config import Config, save_config
from h2aseg.data.layouts import Case, discover
from h2aseg.data.preprocess import CaseCache
from h2aseg.data.splits import Split, load_split, make_split, save_split
from h2aseg.data.transforms import train_transforms
from h2aseg.evaluation.metrics import dice
from h2aseg.files import atomic_write_text
from h2aseg.inference.sliding import (
    autocast_context,
    predict_probabilities,
    probabilities_to_mask,
    resolve_device,
)
from h2aseg.models.factory import build_from_config
from h2aseg.training.losses import DeepSupervisedDiceCE
from h2aseg.training.sampling import EpochSampler, PatchDataset, mix_seed, seed_everything

MAX_BAD_STEPS = 5  # consecutive non-finite steps before training stops
CSV_COLUMNS = ("epoch", "step", "train_loss", "val_dice", "val_dice_sd", "val_cases", "lr", "seconds")
FEW_VAL_CASES = 5  # below this many validation cases with lesions, best.pt is chosen on noise


class RunDirError(ValueError):
    """The run directory cannot be used as asked (finished run without force, nothing to resume...)."""


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


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return _Dist(rank, world, local), device


# ------------------------------------------------------------------------------------------- schedule
def lr_lambda(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step ``s`` (warm-up, then the configured schedule)."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.lr_schedule not in ("constant", "exponential", "cosine", "onecycle"):
        raise ValueError(
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
    raise ValueError(f"train.optimizer must be adam or adamw, got {t.optimizer!r}")


# ------------------------------------------------------------------------------------------- run dir
def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to clobber a finished run (unless ``force``) or silently restart an unfinished one."""
    finished = (run_dir / "finished.json").exists()
    last = (run_dir / "checkpoints" / "last.pt").exists()
    if resume:  # a finished run may be extended: train() checks that train.epochs was raised
        if not last:
            raise RunDirError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
        return
    if (finished or last) and not force:
        what = "a finished run" if finished else "an unfinished run (continue it with --resume)"
        raise RunDirError(f"{run_dir}: already holds {what}; use --force to start over")
    if force:
        for name in ("checkpoints", "tb"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in ("finished.json", "metrics.csv", "curves.png", "split.json", "config.yaml"):
            (run_dir / name).unlink(missing_ok=True)


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


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- data
def _resolve_split(cfg: Config, cases: list[Case], run_dir: Path, stored: dict | None) -> Split:
    if stored is not None:
        return Split(**{**stored, "ratios": tuple(stored["ratios"])})
    if cfg.data.split_file:
        return load_split(cfg.data.split_file)
    if (run_dir / "split.json").exists():
        return load_split(run_dir / "split.json")
    return make_split(cases, tuple(cfg.data.split_ratios), cfg.data.split_seed)  # type: ignore[arg-type]


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
    dd: _Dist | None = None,
) -> Validation | None:
    """Dice (%) over validation cases with lesions, by sliding-window inference on whole volumes.

    ``None`` when no validation case has a lesion. Across DDP ranks the sums are reduced, so every rank
    gets the same result.
    """
    dd = dd or _Dist()
    roi = cfg.infer.roi_size or cfg.data.patch_size
    total, total_sq, count = 0.0, 0.0, 0
    for case in cases[dd.rank :: dd.world]:
        pc = cache.get(case)
        if pc.label is None or not pc.label.any():
            continue
        probs = predict_probabilities(model, torch.from_numpy(pc.image), cfg.infer, roi, device)
        d = dice(probabilities_to_mask(probs, cfg.infer.threshold).numpy() > 0, pc.label > 0)
        total, total_sq, count = total + d, total_sq + d * d, count + 1
    total, total_sq, n = dd.sum([total, total_sq, float(count)], device)
    if not n:
        return None
    mean = total / n
    var = max(0.0, total_sq / n - mean * mean) * n / (n - 1) if n > 1 else 0.0
    return Validation(mean, math.sqrt(var), int(n))


# ------------------------------------------------------------------------------------------- main loop
def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on the cases under ``cfg.data.root``; see the module docstring for outputs.

    ``on_epoch_end(epoch, row)`` is called on every rank after each epoch's checkpoint is written.
    """
    run_dir = Path(run_dir)
    if not cfg.data.root:
        raise ValueError("data.root is not set: pass --data DIR (the folder holding the cases)")
    dd, device = _init_distributed(cfg.train.device)
    if dd.main:
        prepare_run_dir(run_dir, resume=resume, force=force)
        run_dir.mkdir(parents=True, exist_ok=True)
    dd.barrier()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt") if resume else None
    if state is not None and state["epoch"] >= cfg.train.epochs:
        raise RunDirError(
            f"{run_dir}: already trained {state['epoch']} epochs (train.epochs={cfg.train.epochs}); "
            "raise train.epochs (--epochs) to continue it"
        )
    if state is not None and dd.main:
        (run_dir / "finished.json").unlink(missing_ok=True)  # extended: finished again when it ends

    cases = discover(cfg.data.root, cfg.data.layout, swap_channels=cfg.data.swap_channels)
    split = _resolve_split(cfg, cases, run_dir, state["split"] if state else None)
    by_id = {c.case_id: c for c in cases}
    missing = [i for i in split.train + split.val if i not in by_id]
    if missing:
        raise ValueError(f"split lists case(s) not found under {cfg.data.root}: {', '.join(missing[:8])}")
    train_cases = [by_id[i] for i in split.train]
    val_cases = [by_id[i] for i in split.val][: cfg.train.val_max_cases or None]
    if not train_cases:
        raise ValueError(f"no training cases in the split of {cfg.data.root} ({len(cases)} cases found)")
    if dd.main:
        save_config(cfg, run_dir / "config.yaml")
        save_split(split, run_dir / "split.json")

    cache = CaseCache(cfg.data.cache_dir or run_dir / "cache", cfg.data, memory=True)
    if dd.main:  # preprocess once, on rank 0, before the others read the cache
        _preprocess_all(cache, train_cases + val_cases, progress)
    dd.barrier()

    seed_everything(mix_seed(cfg.train.seed, dd.rank))
    if device.type == "cuda" and cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_from_config(cfg.model).to(device)
    if cfg.train.init_checkpoint and state is None:
        init = load_checkpoint(cfg.train.init_checkpoint)
        model.load_state_dict(init["model"], strict=True)
    net: nn.Module = model
    if dd.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = DeepSupervisedDiceCE(cfg.model.out_channels)

    dataset = PatchDataset(train_cases, cache, train_transforms(cfg.data), cfg.train.seed)
    num_samples = (
        cfg.train.steps_per_epoch * cfg.train.batch_size * dd.world if cfg.train.steps_per_epoch else None
    )
    sampler = EpochSampler(
        len(train_cases), cfg.train.seed, num_samples=num_samples, rank=dd.rank, world=dd.world
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        collate_fn=list_data_collate,
        num_workers=cfg.data.num_workers,
    )
    steps_per_epoch = len(loader)
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    use_scaler = device.type == "cuda" and cfg.train.amp in ("auto", "fp16")
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start_epoch, step, best, history, bad_steps = 0, 0, None, [], 0
    best_info: dict[str, Any] | None = None  # epoch, val_dice, val_dice_sd, val_cases of best.pt
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, step, best, history = (
            state["epoch"],
            state["step"],
            state["best_val_dice"],
            state["history"],
        )
        best_info = state.get("best_info")

    def payload_at(epoch: int) -> dict[str, Any]:
        return {
            "version": __version__,
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "split": asdict(split),
            "epoch": epoch,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "best_val_dice": best,
            "best_info": best_info,
            "history": history,
        }

    writer = _tensorboard(run_dir) if dd.main else None
    bar = _progress(progress and dd.main)
    total = (cfg.train.epochs - start_epoch) * steps_per_epoch
    task = bar.add_task("train", total=total, loss=float("nan"), epoch=start_epoch)
    ckpt_dir = run_dir / "checkpoints"
    best_path = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").exists() else None
    if state is None and cfg.train.init_checkpoint and val_cases and cfg.train.val_every > 0:
        # fine-tuning: the starting weights are the first candidate for best.pt, so that a fine-tune
        # that does not help never replaces them
        v0 = validate(model, val_cases, cache, cfg, device, dd)
        if v0 is not None:
            best, best_info = v0.dice, _val_fields(0, v0)
        if dd.main and v0 is not None:
            bar.console.print(f"epoch 0 (initial weights): val Dice {v0.describe()}", highlight=False)
            best_path = save_checkpoint(payload_at(0), ckpt_dir / "best.pt")
    with bar:
        for epoch in range(start_epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            seed_everything(mix_seed(cfg.train.seed, epoch, dd.rank, 1))
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            net.train()
            loss_sum, n_batches = 0.0, 0
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True)
                y = batch["label"].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with autocast_context(cfg.train.amp, device):
                    outs = net(x)
                if not cfg.train.deep_supervision and isinstance(outs, list):
                    outs = outs[0]
                loss = loss_fn(outs, y)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
                finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))
                if not finite and not use_scaler:  # the fp16 scaler skips such steps itself
                    bad_steps += 1
                    bar.console.print(
                        f"warning: non-finite loss or gradient at step {step + 1}; step skipped",
                        highlight=False,
                    )
                    if bad_steps >= MAX_BAD_STEPS:
                        raise FloatingPointError(
                            f"{bad_steps} consecutive non-finite steps (epoch {epoch + 1}, step {step + 1}); "
                            "lower train.lr, set train.grad_clip, or train with train.amp=off"
                        )
                    optimizer.zero_grad(set_to_none=True)
                else:
                    bad_steps = 0
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                step += 1
                if finite:
                    loss_sum += float(loss.detach())
                    n_batches += 1
                bar.update(task, advance=1, loss=loss_sum / max(1, n_batches), epoch=epoch + 1)
                if writer and finite:
                    writer.add_scalar("train/loss", float(loss.detach()), step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            loss_sum, n_batches = dd.sum([loss_sum, float(n_batches)], device)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": loss_sum / max(1.0, n_batches),
                "val_dice": None,
                "val_dice_sd": None,
                "val_cases": None,
                "lr": optimizer.param_groups[0]["lr"],
            }
            last_epoch = epoch + 1 == cfg.train.epochs
            if (
                val_cases
                and cfg.train.val_every > 0
                and ((epoch + 1) % cfg.train.val_every == 0 or last_epoch)
            ):
                v = validate(model, val_cases, cache, cfg, device, dd)
                if v is not None:
                    row.update(_val_fields(epoch + 1, v))
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            improved = row["val_dice"] is not None and (best is None or row["val_dice"] > best)
            if improved:
                best = row["val_dice"]
                best_info = {k: row[k] for k in ("epoch", "val_dice", "val_dice_sd", "val_cases")}
            if dd.main:
                payload = payload_at(epoch + 1)
                save_checkpoint(payload, ckpt_dir / "last.pt")
                if improved:
                    best_path = save_checkpoint(payload, ckpt_dir / "best.pt")
                _write_metrics_csv(run_dir / "metrics.csv", history)
                if writer and row["val_dice"] is not None:
                    writer.add_scalar("val/dice", row["val_dice"], step)
                bar.console.print(_epoch_line(row), highlight=False)
            dd.barrier()
            if on_epoch_end:
                on_epoch_end(epoch + 1, row)
    if writer:
        writer.close()
    if dd.main:
        _finish(run_dir, history, best, best_info)
        if best_info is not None:
            bar.console.print(_best_line(best_info), highlight=False)
    dd.barrier()
    last = ckpt_dir / "last.pt"
    return TrainResult(
        run_dir, last if last.exists() else None, best_path, best, len(history), history, model, best_info
    )


def _val_fields(epoch: int, v: Validation) -> dict[str, Any]:
    return {"epoch": epoch, "val_dice": v.dice, "val_dice_sd": v.sd, "val_cases": v.cases}


def _best_line(info: dict[str, Any]) -> str:
    """What best.pt was chosen on: the run's output says it, with a warning when that is too little."""
    v = Validation(info["val_dice"], info.get("val_dice_sd") or 0.0, int(info.get("val_cases") or 0))
    line = f"best.pt: epoch {info['epoch']}, val Dice {v.describe()}"
    if v.cases < FEW_VAL_CASES:
        line += (
            f"; warning: chosen on fewer than {FEW_VAL_CASES} cases with lesions, which cannot tell epochs "
            "apart (raise train.val_max_cases or the validation share of the split)"
        )
    return line


def _epoch_line(row: dict[str, Any]) -> str:
    val = ""
    if row["val_dice"] is not None:
        sd = row.get("val_dice_sd")
        spread = f" ± {sd:.1f}" if sd is not None else ""
        val = f"  val Dice {row['val_dice']:.1f}%{spread} (n={row.get('val_cases')})"
    loss = f"loss {row['train_loss']:.4f}"
    return f"epoch {row['epoch']}: {loss}{val}  lr {row['lr']:.2e}  ({row['seconds']:.0f} s)"


def _finish(
    run_dir: Path, history: list[dict[str, Any]], best: float | None, best_info: dict[str, Any] | None
) -> None:
    from h2aseg.analysis.curves import plot_training_curves

    if history:
        plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    summary = {
        "epochs": len(history),
        "best_val_dice": best,
        "best": best_info,
        "seconds": round(sum(row.get("seconds") or 0.0 for row in history), 1),
        "final": history[-1] if history else None,
    }
    atomic_write_text(run_dir / "finished.json", json.dumps(summary, indent=2))


def _preprocess_all(cache: CaseCache, cases: list[Case], progress: bool) -> None:
    bar = _progress(progress, loss=False)
    with bar:
        task = bar.add_task("preprocess", total=len(cases))
        for case in cases:
            cache.get(case)
            bar.update(task, advance=1)


def _progress(enabled: bool, *, loss: bool = True) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if loss:
        cols.append(TextColumn("epoch {task.fields[epoch]} loss {task.fields[loss]:.4f}"))
    cols += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*cols, disable=not enabled, transient=False)


def _tensorboard(run_dir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))
