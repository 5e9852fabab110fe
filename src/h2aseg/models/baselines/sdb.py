"""SDB: a RECONSTRUCTION of Xue et al.'s multi-modal co-learning network (IEEE TMI 40(12):3531-3542, 2021,
doi:10.1109/TMI.2021.3089702), built from its abstract only; no public code exists.

Source: the abstract (as summarised in ``shared/reference/baselines.md`` section A3) names three components,
which are reconstructed here:

1. cross-modal feature interaction by sharing the down-sampling blocks between the PET and CT encoding
   branches;
2. spatially varying fusion maps built from feature maps at different resolutions (in the manner of
   Kumar et al., arXiv 1810.02492: modality features -> fusion map -> multiplied with each modality);
3. a similarity loss for consistency between the predictions of separate "refactoring" (decoder) branches.

Everything below beyond those three sentences is a guess (to be checked against the paper's PDF):

- encoders: a PET and a CT branch, each with 2 x (conv3 + InstanceNorm + ReLU) per level; widths
  ``(16, 32, 64, 128, 256)``;
- shared down-sampling (``shared_down="joint"``, default): one block per level transition takes
  ``[f_pet || f_ct]`` -> stride-2 conv3 (2C -> 2C) + IN + ReLU and feeds its output to both branches;
  ``shared_down="tied"`` is the other reading: one weight-tied stride-2 conv3 (C -> C) + IN + ReLU applied
  to each branch separately;
- fusion map at each level: the deeper level's fused feature (up-sampled) concatenated with ``f_pet`` and
  ``f_ct`` -> conv3 + IN + ReLU -> 1x1x1 conv to 2 channels -> softmax over the modalities;
  fused = ``w_pet * f_pet + w_ct * f_ct``, used as the decoders' skip at that level;
- two refactoring decoders (PET, CT), each starting from its own bottleneck concatenated with the fused
  bottleneck, then per level: transposed conv up, concatenation with its own feature and the fused skip,
  2 x (conv3 + IN + ReLU); a 1x1x1 head each;
- output: the mean of the two branches' logits (default), or with ``fused_head=True`` a third 1x1x1 head on
  the concatenated final decoder features (then the branch heads learn only through ``auxiliary_loss``);
  one map in training and in eval mode (no deep supervision);
- similarity loss: ``auxiliary_loss()`` = ``similarity_weight`` (lambda, default 0.5) x the MSE between the
  two branches' probabilities (sigmoid for one output channel, softmax otherwise) of the last
  training-mode forward. Both the measure and lambda are guesses. Unlike the presumed original (Dice + CE
  on each branch), the segmentation loss is applied to the mean of the branch logits.

Every spatial size must be divisible by ``2 ** (len(widths) - 1)`` (16 by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.baselines._common import check_sized_input
from h2aseg.models.blocks import InstanceNorm3dFP32, upsample
from h2aseg.models.registry import register_network

SHARED_DOWN = ("joint", "tied")


def conv_norm_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1), InstanceNorm3dFP32(cout), nn.ReLU(inplace=True)
    )


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_norm_relu(cin, cout), conv_norm_relu(cout, cout))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one channel, softmax over the channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class SharedDownEncoder(nn.Module):
    """PET and CT branches whose down-sampling blocks are shared (``"joint"``) or weight-tied (``"tied"``)."""

    def __init__(self, widths: Sequence[int], shared_down: str) -> None:
        super().__init__()
        self.joint = shared_down == "joint"
        mult = 2 if self.joint else 1
        self.down = nn.ModuleList(
            [conv_norm_relu(mult * widths[k], mult * widths[k], 2) for k in range(len(widths) - 1)]
        )
        for name in ("pet", "ct"):
            blocks = [double_conv(1, widths[0])]
            blocks += [double_conv(mult * widths[k - 1], widths[k]) for k in range(1, len(widths))]
            setattr(self, name, nn.ModuleList(blocks))

    def forward(self, pet: torch.Tensor, ct: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns ``[(f_pet, f_ct)]`` per level, finest first."""
        pet, ct = self.pet[0](pet), self.ct[0](ct)
        feats = [(pet, ct)]
        for k, down in enumerate(self.down, start=1):
            if self.joint:
                shared = down(torch.cat([pet, ct], dim=1))
                pet_in, ct_in = shared, shared
            else:
                pet_in, ct_in = down(pet), down(ct)
            pet, ct = self.pet[k](pet_in), self.ct[k](ct_in)
            feats.append((pet, ct))
        return feats


class FusionMap(nn.Module):
    """Spatially varying softmax weights over (PET, CT) from both features and the deeper fused feature."""

    def __init__(self, channels: int, deeper: int) -> None:
        super().__init__()
        self.net = nn.Sequential(conv_norm_relu(2 * channels + deeper, channels), nn.Conv3d(channels, 2, 1))

    def weights(self, pet: torch.Tensor, ct: torch.Tensor, deeper: torch.Tensor | None) -> torch.Tensor:
        """``(B, 2, X, Y, Z)`` weights (PET, CT) summing to 1 over the channel axis."""
        parts = [pet, ct]
        if deeper is not None:
            parts.append(upsample(deeper, pet.shape[2:], False))
        return torch.softmax(self.net(torch.cat(parts, dim=1)), dim=1)

    def forward(self, pet: torch.Tensor, ct: torch.Tensor, deeper: torch.Tensor | None) -> torch.Tensor:
        w = self.weights(pet, ct, deeper)
        return w[:, :1] * pet + w[:, 1:] * ct


class RefactoringDecoder(nn.Module):
    """One branch's decoder over its own features and the fused skips; returns (final feature, logits)."""

    def __init__(self, widths: Sequence[int], out_channels: int) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.bottom = double_conv(2 * widths[-1], widths[-1])
        self.ups = nn.ModuleList(
            [nn.ConvTranspose3d(widths[k + 1], widths[k], 2, stride=2) for k in range(levels)]
        )
        self.blocks = nn.ModuleList([double_conv(3 * widths[k], widths[k]) for k in range(levels)])
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(
        self, own: Sequence[torch.Tensor], fused: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bottom(torch.cat([own[-1], fused[-1]], dim=1))
        for k in reversed(range(len(self.ups))):
            x = self.blocks[k](torch.cat([self.ups[k](x), own[k], fused[k]], dim=1))
        return x, self.head(x)


def _validate(
    widths: Sequence[int], out_channels: int, in_channels: int, shared_down: str, weight: float
) -> None:
    if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be >= 2 positive integers, e.g. (16, 32, 64, 128, 256), got {widths}")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    if in_channels != 2:
        raise ValueError(f"SDB takes 2 input channels (CT, PET), got in_channels={in_channels}")
    if shared_down not in SHARED_DOWN:
        raise ValueError(f"shared_down must be one of {SHARED_DOWN}, got {shared_down!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"similarity_weight must be a finite number >= 0, e.g. 0.5, got {weight}")


@register_network("sdb")
class SDB(nn.Module):
    """Reconstructed SDB for ``(B, 2, X, Y, Z)`` CT/PET input; see the module docstring for what is guessed.

    Args:
        widths: per-level widths (guess ``(16, 32, 64, 128, 256)``); input sizes must be divisible by
            ``2 ** (len(widths) - 1)``.
        shared_down: ``"joint"`` (one down-sampling block on both branches' features) or ``"tied"``
            (one weight-tied block applied to each branch).
        fused_head: predict with a third head on both decoders' features instead of the branch mean.
        similarity_weight: lambda of :meth:`auxiliary_loss`.
        out_channels: 1 (sigmoid logit) or >= 2 classes (softmax logits).
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        shared_down: str = "joint",
        fused_head: bool = False,
        similarity_weight: float = 0.5,
        out_channels: int = 2,
        in_channels: int = 2,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        _validate(widths, out_channels, in_channels, shared_down, float(similarity_weight))
        self.out_channels = out_channels
        self.similarity_weight = float(similarity_weight)
        self.size_divisor = 2 ** (len(widths) - 1)
        self.encoder = SharedDownEncoder(widths, shared_down)
        deeper = [*widths[1:], 0]
        self.fusion = nn.ModuleList([FusionMap(w, d) for w, d in zip(widths, deeper, strict=True)])
        self.decoder_pet = RefactoringDecoder(widths, out_channels)
        self.decoder_ct = RefactoringDecoder(widths, out_channels)
        self.fused_head = nn.Conv3d(2 * widths[0], out_channels, 1) if fused_head else None
        self._branch_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sized_input("SDB", x, (self.size_divisor,) * 3, self.training)
        feats = self.encoder(x[:, 1:2], x[:, :1])
        fused: list[torch.Tensor] = []
        deeper = None
        for k in reversed(range(len(feats))):
            deeper = self.fusion[k](*feats[k], deeper)
            fused.insert(0, deeper)
        f_pet, logit_pet = self.decoder_pet([p for p, _ in feats], fused)
        f_ct, logit_ct = self.decoder_ct([c for _, c in feats], fused)
        self._branch_logits = (logit_pet, logit_ct) if self.training else None
        if self.fused_head is not None:
            return self.fused_head(torch.cat([f_pet, f_ct], dim=1))
        return 0.5 * (logit_pet + logit_ct)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """lambda x MSE between the PET and CT branch probabilities of the last training-mode forward;
        ``None`` before any forward, after an eval-mode forward, or in eval mode. Add it to the
        segmentation loss before calling ``backward`` (it shares that forward's graph)."""
        if not self.training or self._branch_logits is None:
            return None
        pet, ct = (probabilities(logits.float()) for logits in self._branch_logits)
        return self.similarity_weight * F.mse_loss(pet, ct)

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and ``copy.deepcopy`` leave out the stored branch logits (non-leaf tensors)."""
        state = dict(self.__dict__)
        state["_branch_logits"] = None
        return state
