"""Checkpoint files: written atomically, read with clear errors.

A checkpoint is a dict saved with :func:`torch.save` holding at least ``format`` (``"h2aseg-checkpoint"``),
``version`` (the package version that wrote it), ``config`` (the full :class:`~h2aseg.config.Config` as a
dict) and ``model`` (the state_dict). Training checkpoints add the epoch, optimizer, scheduler and RNG
states, the split and the metrics history (see :mod:`h2aseg.training.trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from h2aseg.config import Config
from h2aseg.errors import H2ASegError
from h2aseg.files import atomic_write

FORMAT = "h2aseg-checkpoint"


class CheckpointError(H2ASegError):
    """A checkpoint file is missing, unreadable or not an h2aseg checkpoint."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename (never a half-written file)."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **payload}, tmp), suffix=".tmp")


def export_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    half: bool = True,
    note: str = "",
    overrides: Sequence[str] = (),
) -> Path:
    """Keep what prediction and fine-tuning need (config, weights, version, provenance), drop optimizer
    and RNG states; ``half`` stores floating-point weights as float16 (loaded back into float32 models).

    ``overrides`` (``section.key=value``, as for ``--set``) change the stored config, e.g. the prediction
    settings or ``data.target_spacing``; the weights stay as they are. Exporting an exported checkpoint keeps
    its provenance and appends this export (note, overrides) to ``provenance["changes"]``; ``dst`` may be
    ``src`` (the file is replaced atomically).
    """
    payload = load_checkpoint(src)
    config = payload["config"]
    if overrides:
        stored = Config.from_dict(config, source=f"{src} (stored config)")
        config = stored.override(list(overrides)).to_dict()
    weights = {k: v.half() if half and v.is_floating_point() else v for k, v in payload["model"].items()}
    before = payload.get("provenance")
    if isinstance(before, dict):  # already exported: keep where it came from, record this change
        provenance = {
            **before,
            "changes": [*before.get("changes", []), {"note": note, "overrides": list(overrides)}],
        }
    else:
        provenance = {
            "source": str(src),
            "epoch": payload.get("epoch"),
            "best_val_dice": payload.get("best_val_dice"),
            "note": note,
            **({"overrides": list(overrides)} if overrides else {}),
        }
    slim = {"version": payload.get("version"), "config": config, "model": weights, "provenance": provenance}
    if payload.get("grid_spacing") is not None:  # the training voxel size, for prediction's scale check
        slim["grid_spacing"] = payload["grid_spacing"]
    return save_checkpoint(slim, dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check an h2aseg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an h2aseg checkpoint (no 'format: {FORMAT}' entry)")
    for key in ("config", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks its {key!r} entry")
    return payload


def _some(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def load_weights(model: torch.nn.Module, path: str | Path, *, partial: bool = False) -> tuple[str, ...]:
    """Load a checkpoint's weights into ``model``; returns the entries left as ``model`` initialised them.

    Strict by default. ``partial``: parameters and buffers the checkpoint lacks keep their fresh values (a
    module added to a trained network, e.g. MCSA grafted onto one trained without it). Either way, an
    entry of the checkpoint that the network lacks, or one of another shape, is an error naming them.
    """
    weights = load_checkpoint(path)["model"]
    own = model.state_dict()
    unexpected = sorted(k for k in weights if k not in own)
    reshaped = sorted(k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape))
    missing = sorted(k for k in own if k not in weights)
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} entries the network lacks ({_some(unexpected)})")
    if reshaped:
        shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped]
        problems.append(f"{len(reshaped)} of another shape ({_some(shapes)})")
    if missing and not partial:
        problems.append(
            f"{len(missing)} entries the checkpoint lacks ({_some(missing)}; train.init_partial=true keeps "
            "those freshly initialised)"
        )
    if problems:
        raise CheckpointError(
            f"{path}: its weights do not fit the configured network: {'; '.join(problems)}. "
            "Do the model.* settings match the checkpoint's stored config?"
        )
    model.load_state_dict(weights, strict=not partial)
    return tuple(missing)
