"""The one rule for turning a network's logits into probabilities (every registered network follows it).

``(B, K, ...)`` logits: ``K == 1`` is one sigmoid foreground map (the paper's BCE + Dice); ``K >= 2`` is a
softmax over classes with channel 0 the background (the released code's two-class output, HECKTOR's
GTVp/GTVn). The training loss (:mod:`h2aseg.training.losses`) applies the same choice through MONAI's
``sigmoid``/``softmax`` flags; prediction and TAMW's target-aware masks use the functions below.
"""

from __future__ import annotations

import torch


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, ...)`` logits -> probabilities of the same shape: sigmoid for ``K == 1``, else softmax."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, ...)`` logits -> ``(B, 1, ...)`` probability of any foreground class.

    Sigmoid for one channel; ``1 - softmax[background]`` for two or more (equals ``softmax[:, 1]`` for two).
    """
    probs = class_probabilities(logits)
    return probs if logits.shape[1] == 1 else 1.0 - probs[:, :1]
