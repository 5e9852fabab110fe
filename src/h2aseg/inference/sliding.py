"""Sliding-window probabilities for a whole preprocessed volume (MONAI's inferer + flip TTA).

Used by prediction and by validation during training. Imports nothing from ``h2aseg.training``.

With flip TTA, :func:`predict_with_flip_masks` also returns each flip's own mask packed into one uint8 map
(bit ``k`` set where flip ``k`` of :func:`flip_sets` alone is foreground), from which
:mod:`h2aseg.evaluation.quantify` measures how much a lesion's volume varies over the flips; the plain path
(:func:`predict_probabilities`) allocates nothing for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from h2aseg.config import InferConfig, check_section
from h2aseg.data.transforms import BODY_MARGIN
from h2aseg.hardware import autocast_context
from h2aseg.models.fast_eval import cpu_fast_forward
from h2aseg.models.outputs import class_probabilities


def check_infer_config(cfg: InferConfig) -> None:
    """Every ``infer`` field of ``cfg`` (one made in code, too), by the config's own rules
    (:func:`h2aseg.config.check_section`): a ConfigError naming the field."""
    check_section(cfg, "infer")


def probabilities_to_mask(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(C, X, Y, Z)`` probabilities -> uint8 labels: threshold for one channel, argmax otherwise."""
    if probs.shape[0] == 1:
        return (probs[0] >= threshold).to(torch.uint8)
    return probs.argmax(dim=0).to(torch.uint8)


def flip_sets(tta: bool) -> list[tuple[int, ...]]:
    """The flipped axes of each TTA pass (of a ``(1, C, X, Y, Z)`` batch): ``[()]`` without TTA, else the
    8 combinations of the three spatial axes, in the order of the flip-mask bits."""
    if not tta:
        return [()]
    axes = (2, 3, 4)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


#: Flip passes with TTA (:func:`flip_sets`), one bit each of a uint8 flip-mask map.
TTA_FLIPS = len(flip_sets(True))


def body_box(
    ct: torch.Tensor, threshold: float, roi_size: Sequence[int], margin: int = BODY_MARGIN
) -> tuple[slice, slice, slice] | None:
    """The bounding box of ``ct > threshold`` (normalised CT ``(X, Y, Z)``), grown by ``margin`` voxels and,
    where narrower than ``roi_size``, to the window's size about its centre, inside the volume. None when
    no voxel exceeds the threshold or the box is the whole volume."""
    mask = ct > threshold
    if not bool(mask.any()):
        return None
    box = []
    for axis, n in enumerate(ct.shape):
        hits = torch.nonzero(mask.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        lo, hi = max(0, int(hits[0]) - margin), min(n, int(hits[-1]) + 1 + margin)
        width = min(n, max(hi - lo, int(roi_size[axis])))
        lo = min(max(0, (lo + hi - width) // 2), n - width)
        box.append(slice(lo, lo + width))
    if all(b.stop - b.start == n for b, n in zip(box, ct.shape, strict=True)):
        return None
    return box[0], box[1], box[2]


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    cfg: InferConfig,
    roi_size: Sequence[int],
    device: torch.device | None = None,
    body_threshold: float | None = None,
) -> torch.Tensor:
    """Probabilities ``(C, X, Y, Z)`` (float32, on CPU) for ``image`` ``(2, X, Y, Z)`` [CT, PET].

    Sliding windows of ``roi_size`` with ``cfg.overlap`` and Gaussian (or constant) blending; with
    ``cfg.tta_flips`` the probabilities are averaged over all 8 combinations of axis flips. With
    ``cfg.body_box`` and a ``body_threshold`` (the normalised CT value of the body's edge), the windows
    cover only the body's bounding box (:func:`body_box`) and every voxel outside it is background.
    """
    return _predict(model, image, cfg, roi_size, device, body_threshold, flip_masks=False)[0]


@torch.no_grad()
def predict_with_flip_masks(
    model: nn.Module,
    image: torch.Tensor,
    cfg: InferConfig,
    roi_size: Sequence[int],
    device: torch.device | None = None,
    body_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`predict_probabilities` and, with ``cfg.tta_flips``, the flip masks ``(X, Y, Z)`` uint8: bit
    ``k`` set where flip ``k``'s own probabilities (:func:`flip_sets` order) give a lesion label
    (:func:`probabilities_to_mask` at ``cfg.threshold``, ``> 0``). None without TTA. One uint8 map beside the
    running sum: the 8 flips' probabilities are never held at once."""
    return _predict(model, image, cfg, roi_size, device, body_threshold, flip_masks=True)


def _predict(
    model: nn.Module,
    image: torch.Tensor,
    cfg: InferConfig,
    roi_size: Sequence[int],
    device: torch.device | None,
    body_threshold: float | None,
    *,
    flip_masks: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if image.ndim != 4 or image.shape[0] < 2:
        raise ValueError(
            f"expected image (C, X, Y, Z) with CT, PET (and any further channels), got {tuple(image.shape)}"
        )
    check_infer_config(cfg)
    bits = flip_masks and cfg.tta_flips
    box = None
    if cfg.body_box and body_threshold is not None:
        box = body_box(image[0], body_threshold, roi_size)
    if box is None:
        return _window_probabilities(model, image, cfg, roi_size, device, flip_masks=bits)
    inner, inner_bits = _window_probabilities(
        model, image[(slice(None), *box)], cfg, roi_size, device, flip_masks=bits
    )
    full = torch.zeros((inner.shape[0], *image.shape[1:]), dtype=inner.dtype)
    if inner.shape[0] > 1:
        full[0] = 1.0  # softmax outputs: background class
    full[(slice(None), *box)] = inner
    full_bits = None
    if inner_bits is not None:  # outside the box every flip is background
        full_bits = torch.zeros(image.shape[1:], dtype=torch.uint8)
        full_bits[box] = inner_bits
    return full, full_bits


def _window_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    cfg: InferConfig,
    roi_size: Sequence[int],
    device: torch.device | None,
    *,
    flip_masks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = image[None].to(device)
    total: torch.Tensor | None = None
    bits: torch.Tensor | None = None
    flips = flip_sets(cfg.tta_flips)
    try:
        for k, axes in enumerate(flips):
            xin = torch.flip(x, axes) if axes else x
            with (
                autocast_context(cfg.amp, device, "infer.amp"),
                cpu_fast_forward(model, cfg.cpu_fast_path, device) as forward,
            ):
                logits = sliding_window_inference(
                    xin,
                    roi_size=tuple(int(v) for v in roi_size),
                    sw_batch_size=cfg.sw_batch_size,
                    predictor=forward,
                    overlap=cfg.overlap,
                    mode=cfg.blend,
                    sw_device=device,
                    device=torch.device("cpu"),
                )
            probs = class_probabilities(logits.float())
            probs = torch.flip(probs, axes) if axes else probs
            if flip_masks:
                own = (probabilities_to_mask(probs[0], cfg.threshold) > 0).to(torch.uint8) << k
                bits = own if bits is None else bits | own
            total = probs if total is None else total + probs
    finally:
        model.train(was_training)
    assert total is not None
    return (total / len(flips))[0], bits
