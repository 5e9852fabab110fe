"""The deep-supervision loss of paper eq. (5), built from MONAI's losses.

``L_total = sum_{k=1..5} (6 - k) * (L_ce(P^k, GT) + L_dice(P^k, GT))`` with ``P^1`` the finest map:
level weights ``[5, 4, 3, 2, 1]`` finest first, each level against the full-resolution ground truth
(the network already up-samples every level to the input size). The weighted sum is not normalised,
as in the equation.

- ``out_channels == 1``: binary cross-entropy on the logits + Dice on the sigmoid (the paper).
- ``out_channels >= 2``: cross-entropy + Dice on the softmax with a one-hot target, background
  included (the released code's choice; also used for multi-class HECKTOR GTVp/GTVn).

Dice is computed over the whole batch by default (``batch_dice=True``, as nnU-Net does) so that
negative crops without foreground do not make the Dice term degenerate; ``batch_dice=False`` gives the
per-sample Dice averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.losses import DeepSupervisionLoss, DiceCELoss

PAPER_LEVEL_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)


def level_weights(levels: int = 5) -> list[float]:
    """Eq. (5)'s weights ``6 - k`` for ``k = 1..levels`` (finest first)."""
    return [float(6 - k) for k in range(1, levels + 1)]


class DeepSupervisedDiceCE(nn.Module):
    """``loss(outputs, target)``: ``outputs`` a list of logits (finest first) or one tensor;
    ``target`` integer labels ``(B, 1, X, Y, Z)``."""

    def __init__(
        self,
        out_channels: int,
        weights: Sequence[float] = PAPER_LEVEL_WEIGHTS,
        *,
        batch_dice: bool = True,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        binary = out_channels == 1
        base = DiceCELoss(
            sigmoid=binary,
            softmax=not binary,
            to_onehot_y=not binary,
            include_background=True,
            batch=batch_dice,
            smooth_nr=smooth,
            smooth_dr=smooth,
        )
        self.out_channels = out_channels
        self.weights = [float(w) for w in weights]
        self.loss = DeepSupervisionLoss(base, weights=self.weights)

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, list | tuple) and len(outputs) > len(self.weights):
            raise ValueError(f"{len(outputs)} outputs but only {len(self.weights)} level weights")
        if self.out_channels == 1:
            target = (target > 0).to(torch.float32)
        return self.loss(outputs, target)
