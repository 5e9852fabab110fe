"""A2FSeg (Wang & Hong, MICCAI 2023), reimplemented for two modalities (CT, PET).

Source: the paper ("A2FSeg: Adaptive multi-modal fusion network for medical image segmentation") and the
facts in ``shared/reference/baselines.md`` section A2, taken from the official code ``Zirui0623/A2FSeg``
(Apache-2.0, built in nnU-Net v1; ``nnunet/network_architecture/my/generic_MAML3_channel.py``). This is
our own code written from those facts, not a copy.

Reconstructed:

- one nnU-Net-style UNet per modality (1 input channel, no shared weights): per stage two conv3 +
  InstanceNorm(affine) + LeakyReLU(0.01), the first of them strided (2) from the second stage on, transposed
  conv (kernel = stride = 2, no bias) up, concatenation with the encoder skip and two convs per decoder
  stage; widths default ``(32, 64, 128, 256, 320)`` (nnU-Net v1: base 32, doubled, capped at 320); He
  initialisation (``a = 0.01``), no dropout. It yields the bottleneck and every decoder-stage output;
- stage 1, average fusion: a separate decoder starts from the voxel-wise mean of the modality bottlenecks;
  at each level it up-samples, concatenates the mean of the modalities' decoder features of that level,
  applies two convs, and has a deep-supervision head (1x1x1 conv without bias);
- stage 2, adaptive fusion: per modality ``W_m = g_m([F_m || F_avg])`` with ``g_m`` = conv3 (2C -> C) +
  IN + LReLU, conv3 (C -> C), LeakyReLU; softmax of the ``W_m`` over the modality axis (per voxel and
  channel); ``F_ada = sum_m W_m * F_m``; conv3 (2C -> C) + IN + LReLU on ``[F_ada || F_avg]``, 1x1x1 head.

Differences from A2FSeg: two modalities (CT, PET) instead of the four hard-coded ones, and no
missing-modality training (PET/CT is complete). Outputs: A2FSeg returns three groups (final logits,
each modality UNet's deep-supervision outputs, the average decoder's). Our loss takes at most 5 maps
(finest first, weights 5, 4, 3, 2, 1), so training mode returns the final logits followed by the average
decoder's deep-supervision maps (finest first), at most 5 maps in total, each up-sampled to the input
size; eval mode returns the final logits only. The modality UNets therefore have no segmentation heads of
their own (they would receive no gradient) and learn through the two fusion stages only. Every spatial
size must be divisible by ``2 ** (len(widths) - 1)`` (16 by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from h2aseg.models.baselines._common import check_sized_input
from h2aseg.models.blocks import InstanceNorm3dFP32, upsample
from h2aseg.models.registry import register_network

MAX_OUTPUTS = 5  # maps the deep-supervision loss takes (weights 5, 4, 3, 2, 1)
MODALITIES = 2


def conv_norm_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """conv3 + InstanceNorm(affine) + LeakyReLU(0.01), nnU-Net's basic layer."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
        InstanceNorm3dFP32(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


def stage(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Two nnU-Net layers; the first carries the stride."""
    return nn.Sequential(conv_norm_act(cin, cout, stride), conv_norm_act(cout, cout))


def up(cin: int, cout: int) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(cin, cout, 2, stride=2, bias=False)


def he_init(module: nn.Module) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)``: Kaiming normal (a = 0.01) on convs, zero biases."""
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ModalityUNet(nn.Module):
    """nnU-Net-style UNet for one modality, without segmentation heads."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            [stage(1, widths[0])] + [stage(widths[k - 1], widths[k], 2) for k in range(1, len(widths))]
        )
        self.ups = nn.ModuleList([up(widths[k + 1], widths[k]) for k in range(len(widths) - 1)])
        self.decoder = nn.ModuleList([stage(2 * widths[k], widths[k]) for k in range(len(widths) - 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns ``[bottleneck, decoder output of the deepest level, ..., of the finest level]``."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        feats = [x]
        for k in reversed(range(len(self.ups))):
            x = self.decoder[k](torch.cat([self.ups[k](x), skips[k]], dim=1))
            feats.append(x)
        return feats


class AverageFusionDecoder(nn.Module):
    """Stage 1: a decoder over the modality-averaged bottleneck and decoder features."""

    def __init__(self, widths: Sequence[int], out_channels: int, heads: int) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.ups = nn.ModuleList([up(widths[k + 1], widths[k]) for k in range(levels)])
        self.decoder = nn.ModuleList([stage(2 * widths[k], widths[k]) for k in range(levels)])
        self.heads = nn.ModuleList([nn.Conv3d(widths[k], out_channels, 1, bias=False) for k in range(heads)])

    def forward(self, per_modality: Sequence[list[torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the finest feature ``F_avg`` and the deep-supervision logits, finest first."""
        means = [torch.stack(level).mean(0) for level in zip(*per_modality, strict=True)]
        x, logits = means[0], []
        for i, k in enumerate(reversed(range(len(self.ups)))):
            x = self.decoder[k](torch.cat([self.ups[k](x), means[i + 1]], dim=1))
            if k < len(self.heads):
                logits.append(self.heads[k](x))
        return x, logits[::-1]


class AdaptiveFusion(nn.Module):
    """Stage 2: softmax-over-modalities weights ``W_m``, ``F_ada = sum_m W_m F_m``, fused head."""

    def __init__(self, channels: int, out_channels: int, modalities: int = MODALITIES) -> None:
        super().__init__()
        c = channels
        self.gates = nn.ModuleList(
            [
                nn.Sequential(conv_norm_act(2 * c, c), nn.Conv3d(c, c, 3, padding=1), nn.LeakyReLU(0.01))
                for _ in range(modalities)
            ]
        )
        self.fuse = conv_norm_act(2 * c, c)
        self.head = nn.Conv3d(c, out_channels, 1, bias=False)

    def weights(self, feats: Sequence[torch.Tensor], avg: torch.Tensor) -> torch.Tensor:
        """``(B, M, C, X, Y, Z)`` fusion weights; they sum to 1 over the modality axis ``M``."""
        gated = [g(torch.cat([f, avg], dim=1)) for g, f in zip(self.gates, feats, strict=True)]
        return torch.softmax(torch.stack(gated, dim=1), dim=1)

    def forward(self, feats: Sequence[torch.Tensor], avg: torch.Tensor) -> torch.Tensor:
        """Logits from the modalities' finest features ``feats`` and the average decoder's ``avg``."""
        w = self.weights(feats, avg)
        fused = (w * torch.stack(list(feats), dim=1)).sum(1)
        return self.head(self.fuse(torch.cat([fused, avg], dim=1)))


def _validate(widths: Sequence[int], out_channels: int, in_channels: int) -> None:
    if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be >= 2 positive integers, e.g. (32, 64, 128, 256, 320), got {widths}")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    if in_channels != MODALITIES:
        raise ValueError(f"A2FSeg here takes 2 input channels (CT, PET), got in_channels={in_channels}")


@register_network("a2fseg")
class A2FSeg(nn.Module):
    """A2FSeg for ``(B, 2, X, Y, Z)`` CT/PET input; see the module docstring.

    Args:
        widths: per-stage widths of every UNet (nnU-Net v1 default ``(32, 64, 128, 256, 320)``); the input
            sizes must be divisible by ``2 ** (len(widths) - 1)``.
        out_channels: 1 (sigmoid logit) or >= 2 classes (softmax logits).
    """

    def __init__(
        self, widths: Sequence[int] = (32, 64, 128, 256, 320), out_channels: int = 2, in_channels: int = 2
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        _validate(widths, out_channels, in_channels)
        self.out_channels = out_channels
        self.size_divisor = 2 ** (len(widths) - 1)
        self.unets = nn.ModuleList([ModalityUNet(widths) for _ in range(MODALITIES)])
        heads = min(len(widths) - 1, MAX_OUTPUTS - 1)
        self.average = AverageFusionDecoder(widths, out_channels, heads)
        self.adaptive = AdaptiveFusion(widths[0], out_channels, MODALITIES)
        self.apply(he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_sized_input("A2FSeg", x, (self.size_divisor,) * 3, self.training)  # IN: training only
        size = x.shape[2:]
        per_modality = [unet(x[:, m : m + 1]) for m, unet in enumerate(self.unets)]
        avg, deep = self.average(per_modality)
        final = self.adaptive([feats[-1] for feats in per_modality], avg)
        if not self.training:
            return final
        return [final] + [d if d.shape[2:] == size else upsample(d, size, False) for d in deep]
