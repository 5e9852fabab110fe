"""Setting a training run up: processes (DDP), the run directory, the split, the cases and their cache."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from h2aseg.checkpoint import load_checkpoint
from h2aseg.config import Config, ConfigError, save_config
from h2aseg.data.layouts import Case, discover
from h2aseg.data.preprocess import CaseCache, check_data_config
from h2aseg.data.splits import Split, SplitError, load_split, make_split, save_split
from h2aseg.errors import H2ASegError
from h2aseg.hardware import physical_memory_bytes, resolve_device
from h2aseg.inference.sliding import check_infer_config
from h2aseg.progress import progress_bar


class RunDirError(H2ASegError):
    """The run directory cannot be used as asked (finished run without force, nothing to resume...)."""


@dataclass
class DistInfo:
    """This process's place in a DDP run (rank, world size, local rank); one process by default."""

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


def _init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name, "train.device")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, local), device


@dataclass
class TrainingRun:
    """A run set up by :func:`setup_run`: where it writes, on which process and device, on which cases."""

    cfg: Config
    run_dir: Path
    dd: DistInfo
    device: torch.device
    split: Split
    train_cases: list[Case]
    val_cases: list[Case]
    cache: CaseCache
    state: dict[str, Any] | None  # the checkpoint a resumed run continues from
    grid_spacing: tuple[float, float, float] | None = None  # median training voxel size (mm), rank 0

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def setup_run(
    cfg: Config, run_dir: str | Path, *, resume: bool = False, force: bool = False, progress: bool = True
) -> TrainingRun:
    """Start the processes, check the run directory, fix the split, and preprocess the cases (rank 0).

    Writes ``config.yaml`` and ``split.json``; ``progress`` shows a bar while the cases are preprocessed.
    """
    run_dir = Path(run_dir)
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass --data DIR (the folder holding the cases)")
    check_settings(cfg)
    dd, device = _init_distributed(cfg.train.device)
    state = _open_run_dir(cfg, run_dir, dd, resume=resume, force=force)
    split, train_cases, val_cases = _select_cases(cfg, run_dir, state)
    if dd.main:
        save_config(cfg, run_dir / "config.yaml")
        save_split(split, run_dir / "split.json")
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dd.world > 1 else 1
    memory = memory_cache_bytes(cfg.data.memory_cache_gb, cfg.data.num_workers, local_ranks)
    cache = CaseCache(cfg.data.cache_dir or run_dir / "cache", cfg.data, memory_bytes=memory)
    grid = None
    if dd.main:  # preprocess once, on rank 0, before the others read the cache
        spacing = _preprocess_all(cache, train_cases + val_cases, progress)
        grid = training_grid_spacing([spacing[c.case_id] for c in train_cases])
    dd.barrier()
    return TrainingRun(cfg, run_dir, dd, device, split, train_cases, val_cases, cache, state, grid)


#: the share of the machine's memory that ``data.memory_cache_gb: null`` gives the in-memory case caches
AUTO_MEMORY_SHARE = 0.25


def memory_cache_bytes(gb: float | None, num_workers: int, local_ranks: int = 1) -> int:
    """Bytes of preprocessed cases each process of a training run keeps in memory (``data.memory_cache_gb``).

    Every process that reads cases holds its own copy: the training process and each of its data-loading
    workers, for every DDP rank on this machine. ``gb`` set: that many GiB per process. ``None``: a quarter
    of the machine's memory split between those ``local_ranks x (1 + num_workers)`` processes (all of the
    phantom's cases on a laptop; a bounded share of an AutoPET cohort, whose cases do not fit in memory),
    or nothing where the machine's memory cannot be read.
    """
    if gb is not None:
        return int(gb * 2**30)
    total = physical_memory_bytes()
    if total is None:
        return 0
    return int(total * AUTO_MEMORY_SHARE / (max(1, local_ranks) * (1 + num_workers)))


def training_grid_spacing(spacings: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The median voxel size (mm, per axis) of the training cases on their working grid: what the network
    learns at; checkpoints record it so that prediction can warn about studies of another scale."""
    x, y, z = (round(float(v), 4) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))
    return (x, y, z)


def check_settings(cfg: Config) -> None:
    """Settings that would stop the run only later (at the first patch or validation), checked up front:
    a :class:`~h2aseg.config.ConfigError` naming the field before any case is read."""
    from h2aseg.data.transforms import train_transforms
    from h2aseg.models.factory import network_kwargs

    check_data_config(cfg.data)
    train_transforms(cfg.data)  # data.pos_fraction, crops_per_case, augment, hot_suv
    check_infer_config(cfg.infer)  # validation's sliding window
    network_kwargs(cfg.model, cfg.data.input_layout())  # data.mirror_pet, body_coords: H2ASeg only


def _open_run_dir(cfg: Config, run_dir: Path, dd: DistInfo, *, resume: bool, force: bool) -> dict | None:
    """Check (and with ``force`` clear) the run directory; the checkpoint to resume from, if any."""
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
    return state


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


def _select_cases(cfg: Config, run_dir: Path, state: dict | None) -> tuple[Split, list[Case], list[Case]]:
    """The split, and the training and validation cases it names (validation capped by val_max_cases)."""
    cases = discover(cfg.data.root, cfg.data.layout, swap_channels=cfg.data.swap_channels)
    split = _resolve_split(cfg, cases, run_dir, state["split"] if state else None)
    by_id = {c.case_id: c for c in cases}
    missing = [i for i in split.train + split.val if i not in by_id]
    if missing:
        raise SplitError(f"split lists case(s) not found under {cfg.data.root}: {', '.join(missing[:8])}")
    train_cases = [by_id[i] for i in split.train]
    val_cases = [by_id[i] for i in split.val][: cfg.train.val_max_cases or None]
    if not train_cases:
        raise SplitError(f"no training cases in the split of {cfg.data.root} ({len(cases)} cases found)")
    return split, train_cases, val_cases


def _resolve_split(cfg: Config, cases: list[Case], run_dir: Path, stored: dict | None) -> Split:
    if stored is not None:
        return Split(**{**stored, "ratios": tuple(stored["ratios"])})
    if cfg.data.split_file:
        return load_split(cfg.data.split_file)
    if (run_dir / "split.json").exists():
        return load_split(run_dir / "split.json")
    return make_split(cases, tuple(cfg.data.split_ratios), cfg.data.split_seed)  # type: ignore[arg-type]


def _preprocess_all(
    cache: CaseCache, cases: list[Case], progress: bool
) -> dict[str, tuple[float, float, float]]:
    """Fill the disk cache (one read or preprocessing per case); each case's voxel size on its working
    grid, so that nothing has to read the cases again for it."""
    spacing: dict[str, tuple[float, float, float]] = {}
    bar = progress_bar("", progress, time="both")
    with bar:
        task = bar.add_task("preprocess", total=len(cases))
        for case in cases:
            spacing[case.case_id] = cache.get(case).geometry.spacing
            bar.update(task, advance=1)
    return spacing
