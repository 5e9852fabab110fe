"""Segment new patients with a trained checkpoint; masks written in the original CT geometry.

The model is rebuilt from the config stored inside the checkpoint and its weights; preprocessing is the
one the model was trained with (``config.data``). Nothing here imports :mod:`h2aseg.training`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from h2aseg.checkpoint import load_checkpoint
from h2aseg.config import Config, ConfigError
from h2aseg.data.io import ImageError, flip_masks_path, probability_path, write_volume
from h2aseg.data.layouts import Case
from h2aseg.data.preprocess import PreprocessedCase, preprocess_images, restore_to_ct_grid
from h2aseg.data.transforms import body_threshold, model_input
from h2aseg.errors import H2ASegError
from h2aseg.hardware import resolve_device
from h2aseg.inference.sliding import (
    check_infer_config,
    predict_probabilities,
    predict_with_flip_masks,
    probabilities_to_mask,
)
from h2aseg.models.factory import build_from_config
from h2aseg.models.mcsa import knock_out
from h2aseg.models.naming import network_title

#: relative difference of a study's voxel size from the training grid's (any axis) that gets a warning
SCALE_TOLERANCE = 0.2


class ScaleWarning(UserWarning):
    """A study's voxels differ from those the network was trained on, and no target spacing resamples it."""


@dataclass
class Prediction:
    """A case's mask (uint8, original CT shape) and, optionally, its foreground probability map and, with
    flip TTA, its flip masks (uint8, bit ``k`` = flip ``k``'s own mask:
    :func:`~h2aseg.inference.sliding.predict_with_flip_masks`), both on the CT grid."""

    case_id: str
    mask: np.ndarray
    affine: np.ndarray
    probability: np.ndarray | None = None
    flip_masks: np.ndarray | None = None


class Predictor:
    """``Predictor.from_checkpoint(path)`` then :meth:`predict_files` or :meth:`predict_preprocessed`.

    ``stored_split``: the train/val/test split a training checkpoint holds (None otherwise), for
    :mod:`h2aseg.inference.case_selection`. ``grid_spacing``: the voxel size (mm) of the grid the network
    was trained on, when the checkpoint records it; with no ``data.target_spacing``, a study whose voxels
    differ from it by more than :data:`SCALE_TOLERANCE` gets a warning naming the file and the fix.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        device: torch.device,
        stored_split: dict[str, Any] | None = None,
        grid_spacing: Sequence[float] | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.stored_split = stored_split
        self.grid_spacing = None if grid_spacing is None else tuple(float(v) for v in grid_spacing)

    @classmethod
    def from_checkpoint(cls, path: str | Path, cfg_overrides: list[str] | None = None) -> Predictor:
        payload = load_checkpoint(path)
        cfg = Config.from_dict(payload["config"], source=f"{path} (stored config)")
        if cfg_overrides:
            cfg = cfg.override(cfg_overrides)
        check_infer_config(cfg.infer)  # before any case is read
        model = build_from_config(
            cfg.model, cfg.data.patch_size, cfg.data.input_layout()
        )  # the training patch
        model.load_state_dict(payload["model"], strict=True)
        if cfg.infer.mcsa_knockout and not knock_out(model):
            raise ConfigError(
                f"{path}: infer.mcsa_knockout=true, but its network ({network_title(cfg.model)}) has no MCSA "
                "stage to knock out"
            )
        split = payload.get("split")
        return cls(
            model,
            cfg,
            resolve_device(cfg.infer.device, "infer.device"),
            split if isinstance(split, dict) else None,
            payload.get("grid_spacing"),
        )

    @property
    def roi_size(self) -> tuple[int, int, int]:
        roi = self.cfg.infer.roi_size or self.cfg.data.patch_size
        return tuple(int(v) for v in roi)  # type: ignore[return-value]

    def probabilities(self, pc: PreprocessedCase) -> torch.Tensor:
        """``(C, X, Y, Z)`` class probabilities on the preprocessed grid."""
        return predict_probabilities(self.model, model_input(pc, self.cfg.data), *self._window_args())

    def _window_args(self) -> tuple[Any, ...]:
        return (
            self.cfg.infer,
            self.roi_size,
            self.device,
            body_threshold(self.cfg.data),
        )

    def predict_preprocessed(self, pc: PreprocessedCase, *, keep_probability: bool = False) -> Prediction:
        """Mask for a preprocessed case, mapped back to the CT grid; with ``keep_probability`` also the
        foreground probability (linear) and, with flip TTA, the flip masks (nearest)."""
        self._check_scale(pc)
        bits = None
        if keep_probability:
            probs, bits = predict_with_flip_masks(
                self.model, model_input(pc, self.cfg.data), *self._window_args()
            )
        else:
            probs = self.probabilities(pc)
        mask = probabilities_to_mask(probs, self.cfg.infer.threshold).numpy()
        mask_ct = restore_to_ct_grid(mask, pc.geometry, order=0).astype(np.uint8)
        prob_ct = bits_ct = None
        if keep_probability:
            fg = probs[0] if probs.shape[0] == 1 else 1.0 - probs[0]
            prob_ct = restore_to_ct_grid(fg.numpy().astype(np.float32), pc.geometry, order=1)
        if bits is not None:
            bits_ct = restore_to_ct_grid(bits.numpy(), pc.geometry, order=0).astype(np.uint8)
        return Prediction(pc.case_id, mask_ct, pc.geometry.ct_affine, prob_ct, bits_ct)

    def _check_scale(self, pc: PreprocessedCase) -> None:
        """Warn when the network would see ``pc`` at another scale than it was trained on."""
        if self.cfg.data.target_spacing is not None or self.grid_spacing is None:
            return
        have, trained = pc.geometry.spacing, self.grid_spacing
        if all(abs(h - t) <= SCALE_TOLERANCE * t for h, t in zip(have, trained, strict=True)):
            return
        fix = ",".join(f"{t:g}" for t in trained)
        warnings.warn(
            f"{pc.geometry.ct_path or pc.case_id}: voxels of {_mm(have)} mm, but the network was trained on "
            f"{_mm(trained)} mm and the checkpoint sets no data.target_spacing, so it sees this study at "
            "another scale; predict "
            f"with --set data.target_spacing=[{fix}] (or store it: h2aseg export-checkpoint --set)",
            ScaleWarning,
            stacklevel=3,
        )

    def predict_files(
        self, ct: str | Path, pet: str | Path, case_id: str = "case", *, keep_probability: bool | None = None
    ) -> Prediction:
        """``keep_probability``: None follows ``infer.save_probabilities``."""
        pc = preprocess_images(ct, pet, self.cfg.data, case_id=case_id)
        keep = self.cfg.infer.save_probabilities if keep_probability is None else keep_probability
        return self.predict_preprocessed(pc, keep_probability=keep)


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{v:.2f}" for v in spacing)


def write_prediction(pred: Prediction, out: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Write the mask (uint8 NIfTI with the CT's affine) and, if present, the probability map and the flip
    masks beside it.

    Refuses to overwrite any of ``inputs``. Writes are atomic.
    A probability map or flip masks left beside ``out`` by an earlier run are removed when ``pred`` has
    none, so that the files beside a mask are always the ones predicted with it.
    """
    out = Path(out)
    protect = tuple(inputs)
    sidecars = (
        (probability_path(out), pred.probability, np.float32),
        (flip_masks_path(out), pred.flip_masks, np.uint8),
    )
    for path, array, dtype in sidecars:
        if array is not None:
            write_volume(path, array.astype(dtype), pred.affine, protect=protect)
        elif path.is_file() and str(path.resolve()) not in {str(Path(p).resolve()) for p in protect}:
            path.unlink()
    return write_volume(out, pred.mask.astype(np.uint8), pred.affine, protect=protect)


def shard_cases(cases: list[Case], index: int, count: int) -> list[Case]:
    """Shard ``index`` of ``count`` (``predict --shard I/N``): the cases whose position in the list sorted by
    case id is ``index`` modulo ``count``, in that order. The shards of one list are disjoint and cover it,
    so ``count`` processes given the same cases each predict a different part, none twice."""
    if not 0 <= index < count:
        raise H2ASegError(f"--shard {index}/{count}: need 0 <= I < N")
    ordered = sorted(cases, key=lambda c: c.case_id)
    return ordered[index::count]


def predict_cases(
    predictor: Predictor,
    cases: list[Case],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    on_case: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Predict every case into ``out_dir/<case_id>.nii.gz``.

    Existing outputs are kept (so an interrupted run resumes where it stopped) unless ``overwrite``.
    ``on_case(case_id, status)`` reports progress (``"done"`` or ``"skipped"``).
    """
    out_dir = Path(out_dir)
    input_files = {str(Path(p).resolve()) for c in cases for p in (c.ct, c.pet, c.label) if p is not None}
    if str(out_dir.resolve()) in {str(Path(p).parent) for p in input_files}:
        raise ImageError(f"{out_dir}: output folder holds input images; choose a separate --out-dir")
    written = []
    for case in cases:
        target = out_dir / f"{case.case_id}.nii.gz"
        if target.exists() and not overwrite:
            written.append(target)
            if on_case:
                on_case(case.case_id, "skipped")
            continue
        pred = predictor.predict_files(case.ct, case.pet, case_id=case.case_id)
        written.append(write_prediction(pred, target, inputs=input_files))
        if on_case:
            on_case(case.case_id, "done")
    return written
