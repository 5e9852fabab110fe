"""NestedFormer (Xing et al., MICCAI 2022), reimplemented for two modalities (CT, PET).

Source: the paper (arXiv 2208.14876) and the facts in ``shared/reference/baselines.md`` section A1, taken
from the official code ``920232796/NestedFormer`` (Apache-2.0; ``medical/model/nested_former.py``,
``encoder/global_poolformer.py``, ``fusion/{nmafa,multi_spatial_att,cross_modality_att,layers}.py``).
This is our own code written from those facts, not a copy.

Reconstructed:

- one encoder per modality (no shared weights): ``TwoConv`` (conv3 + InstanceNorm + ReLU, twice) at full
  resolution, then 4 stride-2 "GlobalPoolformer" stages: patch-embedding conv (kernel = stride = 2) + channel
  LayerNorm, then 2 GlobalPool blocks (normalise, mean over all voxels, ``Linear(1 -> N_voxels)`` spreads
  it back; added to the normalised input and the block input; then a pre-norm 1x1x1-conv MLP, hidden 2C,
  GELU, dropout 0.1);
- NMaFA at the bottleneck: tri-oriented spatial attention (1x1x1 conv of the concatenated modalities, 2
  pre-LN blocks whose attention is the sum of plane MHSA, axis MHSA and 3-D window MHSA with a learned
  relative-position bias; learned position embeddings on the plane and axis branches of block 0), then
  cross-modality attention (queries: the TSA tokens; keys/values: per modality a 1x1x1 embedding + learned
  position embedding reduced by one TokenLearner to ``num_tokens`` tokens; one post-LN cross-attention
  block with MLP); its output is added to a ``TwoConv`` of the concatenated bottlenecks (the CNN path);
- ``TwoConv`` fusion of the concatenated modality features at the 4 skip resolutions, 4 ``UpCat`` steps
  (transposed conv halving the width, concatenation with the fused skip, ``TwoConv``), a 1x1x1 head.
  One output, no deep supervision (a single tensor in training and in eval mode).

Differences: the window attention's relative-position bias has one table per head (Swin style, 0.02
normal init) where the released code shares one table across heads; the released cross-attention block
holds a LayerNorm it never uses, which is left out; attention uses PyTorch's ``MultiheadAttention`` /
``scaled_dot_product_attention``. The paper's modality-sensitive gating on the skips is absent, as in the
released code. GlobalPool and the position embeddings fix the input size: ``img_size`` must be the training
patch size and inference must use a sliding window of that size (a different input raises ``ValueError``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.blocks import InstanceNorm3dFP32
from h2aseg.models.registry import register_network

Triple = tuple[int, int, int]
STAGES = 4  # stride-2 stages: the input size must be divisible by 2**STAGES


def _conv_norm_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1), InstanceNorm3dFP32(cout), nn.ReLU(inplace=True)]


class TwoConv(nn.Sequential):
    """(conv3 + InstanceNorm + ReLU) twice."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*_conv_norm_relu(cin, cout), *_conv_norm_relu(cout, cout))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, X, Y, Z)``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class GlobalPoolBlock(nn.Module):
    """Token mixing by a global mean spread back over the ``size`` voxels, then a 1x1x1-conv MLP."""

    def __init__(self, channels: int, size: Triple, dropout: float) -> None:
        super().__init__()
        self.size = size
        self.norm1 = ChannelLayerNorm(channels, eps=1e-6)
        self.spread = nn.Linear(1, math.prod(size))
        self.norm2 = ChannelLayerNorm(channels, eps=1e-6)
        hidden = 2 * channels
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, 1), nn.GELU(), nn.Dropout(dropout),
            nn.Conv3d(hidden, channels, 1), nn.Dropout(dropout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        mixed = self.spread(y.flatten(2).mean(-1, keepdim=True)).view_as(y)
        x = x + y + mixed
        return x + self.mlp(self.norm2(x))


class ModalityEncoder(nn.Module):
    """TwoConv at full resolution, then 4 GlobalPoolformer stages; returns the 5 feature maps."""

    def __init__(self, features: Sequence[int], img_size: Triple, dropout: float) -> None:
        super().__init__()
        self.stem = TwoConv(1, features[0])
        stages = []
        for k in range(1, STAGES + 1):
            size = tuple(s // 2**k for s in img_size)
            stages.append(nn.Sequential(
                nn.Conv3d(features[k - 1], features[k], 2, stride=2),
                ChannelLayerNorm(features[k]),
                GlobalPoolBlock(features[k], size, dropout),  # type: ignore[arg-type]
                GlobalPoolBlock(features[k], size, dropout),  # type: ignore[arg-type]
            ))  # fmt: skip
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class WindowAttention3d(nn.Module):
    """Multi-head self-attention inside non-overlapping 3-D windows, with a relative-position bias."""

    def __init__(self, dim: int, heads: int, window: Triple) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        spans = [2 * w - 1 for w in window]
        self.bias_table = nn.Parameter(0.02 * torch.randn(heads, math.prod(spans)))
        coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + torch.tensor([w - 1 for w in window])[:, None, None]
        index = (rel[0] * spans[1] + rel[1]) * spans[2] + rel[2]
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, X, Y, Z, C)`` -> same shape."""
        b, sx, sy, sz, c = x.shape
        (wx, wy, wz), h = self.window, self.heads
        win = x.view(b, sx // wx, wx, sy // wy, wy, sz // wz, wz, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        win = win.reshape(-1, wx * wy * wz, c)
        q, k, v = self.qkv(win).view(win.shape[0], win.shape[1], 3, h, c // h).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(win.shape)
        out = out.view(b, sx // wx, sy // wy, sz // wz, wx, wy, wz, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return self.proj(out.reshape(b, sx, sy, sz, c))


class TriOrientedAttention(nn.Module):
    """Sum of plane MHSA (planes orthogonal to the first axis), axis MHSA (along it) and window MHSA."""

    def __init__(self, dim: int, heads: int, size: Triple, window: Triple, position: bool) -> None:
        super().__init__()
        self.plane = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.axis = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.window = WindowAttention3d(dim, heads, window)
        self.pos_plane = nn.Parameter(torch.zeros(1, size[1] * size[2], dim)) if position else None
        self.pos_axis = nn.Parameter(torch.zeros(1, size[0], dim)) if position else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, X, Y, Z, C)`` -> same shape."""
        b, sx, sy, sz, c = x.shape
        a = x.reshape(b * sx, sy * sz, c)
        t = x.permute(0, 2, 3, 1, 4).reshape(b * sy * sz, sx, c)
        if self.pos_plane is not None and self.pos_axis is not None:
            a, t = a + self.pos_plane, t + self.pos_axis
        a = self.plane(a, a, a, need_weights=False)[0].view(b, sx, sy, sz, c)
        t = self.axis(t, t, t, need_weights=False)[0].view(b, sy, sz, sx, c).permute(0, 3, 1, 2, 4)
        return a + t + self.window(x)


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
    )


class TSABlock(nn.Module):
    """Pre-LN transformer block with tri-oriented attention, on ``(B, X, Y, Z, C)``."""

    def __init__(self, dim: int, heads: int, size: Triple, window: Triple, position: bool, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TriOrientedAttention(dim, heads, size, window, position)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _mlp(dim, 2 * dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenLearner(nn.Module):
    """``num_tokens`` tokens, each the spatial mean of the features weighted by a learned sigmoid map."""

    def __init__(self, channels: int, num_tokens: int) -> None:
        super().__init__()
        self.maps = nn.Conv3d(channels, num_tokens, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, X, Y, Z)`` -> ``(B, num_tokens, C)``."""
        weights = torch.sigmoid(self.maps(x)).flatten(2)
        return torch.einsum("bsn,bcn->bsc", weights, x.flatten(2)) / weights.shape[-1]


class CrossModalityAttention(nn.Module):
    """Queries: one token per bottleneck voxel; keys/values: the token-learned tokens of every modality."""

    def __init__(self, dim: int, heads: int, size: Triple, modalities: int, tokens: int, dropout: float):
        super().__init__()
        self.embed = nn.ModuleList([nn.Conv3d(dim, dim, 1) for _ in range(modalities)])
        self.pos = nn.ParameterList([nn.Parameter(torch.zeros(1, dim, *size)) for _ in range(modalities)])
        self.drop = nn.Dropout(dropout)
        self.tokens = TokenLearner(dim, tokens)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _mlp(dim, 2 * dim, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, query: torch.Tensor, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``query`` ``(B, C, X, Y, Z)``, ``feats`` one such map per modality -> ``(B, C, X, Y, Z)``."""
        pairs = zip(self.embed, self.pos, feats, strict=True)
        kv = torch.cat([self.tokens(self.drop(emb(f) + pos)) for emb, pos, f in pairs], dim=1)
        q = query.flatten(2).transpose(1, 2)
        x = self.norm1(q + self.attn(q, kv, kv, need_weights=False)[0])
        x = self.norm2(x + self.mlp(x))
        return x.transpose(1, 2).reshape(query.shape)


class NMaFA(nn.Module):
    """Nested modality-aware feature aggregation: TSA on the concatenated modalities, then CMA."""

    def __init__(
        self, dim: int, modalities: int, size: Triple, window: Triple, heads: int, tokens: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Conv3d(modalities * dim, dim, 1)
        self.blocks = nn.ModuleList([TSABlock(dim, heads, size, window, i == 0, dropout) for i in range(2)])
        self.cma = CrossModalityAttention(dim, heads, size, modalities, tokens, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.embed(torch.cat(list(feats), dim=1)).permute(0, 2, 3, 4, 1)
        for block in self.blocks:
            x = block(x)
        return self.cma(x.permute(0, 4, 1, 2, 3), feats)


class UpCat(nn.Module):
    """Transposed conv (kernel = stride = 2) to half the width, concatenation with the skip, TwoConv."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cin // 2, 2, stride=2)
        self.conv = TwoConv(cskip + cin // 2, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def _validate(
    img_size: Triple, features: Sequence[int], window: Triple, heads: int, tokens: int, out_channels: int
) -> None:
    factor = 2**STAGES
    if len(img_size) != 3 or any(not isinstance(s, int) or s < factor for s in img_size):
        raise ValueError(f"img_size must be 3 integers >= {factor}, got {tuple(img_size)}")
    if any(s % factor for s in img_size):
        good = tuple(-(-s // factor) * factor for s in img_size)
        raise ValueError(
            f"img_size must be divisible by {factor} along every axis, got {img_size}; e.g. {good}"
        )
    if len(features) != 6 or any(not isinstance(f, int) or f < 1 for f in features):
        raise ValueError(
            f"features must be 6 positive integers, e.g. (16, 16, 32, 64, 128, 16), got {features}"
        )
    if any(f < 2 for f in features[1:5]):
        raise ValueError(f"features[1:5] must be >= 2 (the up-sampling halves them), got {tuple(features)}")
    if heads < 1:
        raise ValueError(f"num_heads must be >= 1, e.g. 8, got {heads}")
    if features[4] % heads:
        raise ValueError(
            f"features[4]={features[4]} (bottleneck width) must be divisible by num_heads={heads}; "
            f"e.g. features[4]={-(-features[4] // heads) * heads}"
        )
    bottleneck = tuple(s // factor for s in img_size)
    if len(window) != 3 or any(w < 1 or b % w for w, b in zip(window, bottleneck, strict=False)):
        divisors = [[d for d in range(1, b + 1) if b % d == 0] for b in bottleneck]
        raise ValueError(
            f"window_size {tuple(window)} must divide the bottleneck size {bottleneck} = "
            f"img_size // {factor} along every axis; allowed per axis: {divisors}"
        )
    if tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, e.g. 32, got {tokens}")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")


@register_network("nestedformer")
class NestedFormer(nn.Module):
    """NestedFormer for CT/PET input ``(B, 2, *img_size)``; see the module docstring.

    Args:
        img_size: the fixed input size (the training patch size), divisible by 16 along every axis.
        features: widths of levels 0..4 and of the decoder's last layer (the released ``fea``).
        window_size: TSA window; must divide ``img_size // 16`` (released ``main.py``: ``(4, 4, 4)``).
        num_heads: attention heads in TSA and CMA (released: 8).
        num_tokens: TokenLearner tokens per modality (released: 32).
        dropout: MLP / embedding dropout (released: 0.1).
        out_channels: 1 (sigmoid logit) or >= 2 classes (softmax logits).
    """

    def __init__(
        self,
        img_size: Sequence[int] = (128, 128, 64),
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        window_size: Sequence[int] = (4, 4, 4),
        num_heads: int = 8,
        num_tokens: int = 32,
        dropout: float = 0.1,
        out_channels: int = 2,
        in_channels: int = 2,
    ) -> None:
        super().__init__()
        if in_channels != 2:
            raise ValueError(f"NestedFormer takes 2 input channels (CT, PET), got in_channels={in_channels}")
        size: Triple = tuple(int(s) for s in img_size)  # type: ignore[assignment]
        window: Triple = tuple(int(w) for w in window_size)  # type: ignore[assignment]
        fea = [int(f) for f in features]
        _validate(size, fea, window, num_heads, num_tokens, out_channels)
        self.img_size, self.out_channels = size, out_channels
        bottleneck: Triple = tuple(s // 2**STAGES for s in size)  # type: ignore[assignment]
        self.encoders = nn.ModuleList([ModalityEncoder(fea, size, dropout) for _ in range(2)])
        self.nmafa = NMaFA(fea[4], 2, bottleneck, window, num_heads, num_tokens, dropout)
        self.bottleneck_conv = TwoConv(2 * fea[4], fea[4])
        self.skip_convs = nn.ModuleList([TwoConv(2 * fea[k], fea[k]) for k in range(STAGES)])
        outs = [fea[5], fea[1], fea[2], fea[3]]  # UpCat k gives fea[k]; the last one gives fea[5]
        self.ups = nn.ModuleList([UpCat(fea[k + 1], fea[k], outs[k]) for k in range(STAGES)])
        self.head = nn.Conv3d(fea[5], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(f"expected input (B, 2, X, Y, Z) with CT then PET, got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"NestedFormer was built for img_size={self.img_size} (its GlobalPool layers and position "
                f"embeddings fix the size) but got input {tuple(x.shape[2:])}; use a sliding window of "
                f"{self.img_size} or rebuild with img_size={tuple(x.shape[2:])}"
            )
        feats = [enc(x[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
        deepest = [f[STAGES] for f in feats]
        y = self.nmafa(deepest) + self.bottleneck_conv(torch.cat(deepest, dim=1))
        for k in reversed(range(STAGES)):
            skip = self.skip_convs[k](torch.cat([f[k] for f in feats], dim=1))
            y = self.ups[k](y, skip)
        return self.head(y)
