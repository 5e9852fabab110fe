"""What the analysis tests share: a tiny H2ASeg checkpoint in the project's format and a tiny cohort."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from h2aseg.checkpoint import save_checkpoint
from h2aseg.config import load_config
from h2aseg.data.layouts import Case
from h2aseg.models.factory import build_from_config
from h2aseg.synth import write_cohort

CHANNELS = (4, 8, 8, 8, 8)
TINY = [
    f"model.channels=[{','.join(map(str, CHANNELS))}]",
    "model.window_size=[4,4,2]",
    "data.patch_size=[32,32,32]",
    "infer.amp=off",
    "infer.overlap=0.0",
]
RELEASED = ["model.variant=released", "model.out_channels=2", "model.mcsa_levels=null"]


def write_checkpoint(
    path: Path,
    overrides: Sequence[str] = (),
    *,
    split: dict[str, Any] | None = None,
    mutate: Callable[[nn.Module], None] | None = None,
) -> Path:
    """A checkpoint as training writes it (format, config, weights; ``split`` when given), random weights
    changed by ``mutate``."""
    cfg = load_config("synthetic", [*TINY, *overrides])
    model = build_from_config(cfg.model)
    if mutate is not None:
        mutate(model)
    payload: dict[str, Any] = {"config": cfg.to_dict(), "model": model.state_dict(), "version": "test"}
    if split is not None:
        payload["split"] = split
    return save_checkpoint(payload, path)


def set_tamw_weights(
    model: nn.Module, first: float, second: float, dec: float, back_shift: float = 0.1
) -> None:
    """Every TAMW gives constant weights, whatever its input: ``first`` on channels ``[0, C)``, ``second`` on
    ``[C, 2C)``, ``dec`` on the decoder channels (foreground), each + ``back_shift`` for the background
    (``fc2`` zero, its bias atanh of the target)."""
    for k in (1, 2, 3, 4):
        tamw = getattr(model.decoder, f"tamw{k}")
        c = CHANNELS[k - 1]
        for mlp, shift in ((tamw.CA_fore, 0.0), (tamw.CA_back, back_shift)):
            target = torch.full((mlp.fc2.out_features,), dec + shift)
            target[:c], target[c : 2 * c] = first + shift, second + shift
            with torch.no_grad():
                mlp.fc2.weight.zero_()
                mlp.fc2.bias.copy_(torch.atanh(target))


def write_small_cohort(root: Path, n: int = 4) -> list[Case]:
    """Whole-body phantoms of 32x32x40 voxels (two 32^3 windows along z); some with lesions."""
    return write_cohort(root, n, "autopet-nnunet", seed=5, shape=(32, 32, 40), spacing=(12.0, 12.0, 14.0))


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def close(a: float, b: float, tol: float = 1e-3) -> bool:
    return math.isclose(a, b, abs_tol=tol)
