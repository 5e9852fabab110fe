"""What the training tests share: the tiny network/patch settings and a tiny synthetic cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from h2aseg.config import Config, load_config
from h2aseg.synth import write_cohort

TINY = [
    "model.channels=[2,4,4,8,8]",
    "model.window_size=[4,4,2]",
    "data.patch_size=[32,32,32]",
    "data.crops_per_case=2",
    "train.batch_size=2",
    "train.steps_per_epoch=2",
    "train.val_every=1",
    "train.val_max_cases=1",
    "train.amp=off",
    "train.warmup_steps=0",
    "infer.amp=off",
    "infer.overlap=0.0",
]


def write_tiny_cohort(root: Path) -> Path:
    write_cohort(root, 6, "autopet-nnunet", seed=5, shape=(40, 40, 48), spacing=(10.0, 10.0, 12.0))
    return root


def tiny_config(root: Path, epochs: int = 2, extra: tuple[str, ...] = ()) -> Config:
    return load_config("synthetic", [*TINY, f"data.root={root}", f"train.epochs={epochs}", *extra])


def save_tiny_checkpoint(path: Path, split: dict[str, Any] | None = None) -> Path:
    """A checkpoint of an untrained network of the ``synthetic`` preset shrunk by :data:`TINY`; with
    ``split``, holding that split document as training checkpoints do."""
    from h2aseg.checkpoint import save_checkpoint
    from h2aseg.models.factory import build_from_config

    cfg = load_config("synthetic", TINY)
    payload: dict[str, Any] = {"config": cfg.to_dict(), "model": build_from_config(cfg.model).state_dict()}
    if split is not None:
        payload["split"] = split
    save_checkpoint(payload, path)
    return path
