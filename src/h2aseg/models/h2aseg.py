"""H2ASeg: a dual-branch 3D ResUNet with MCSA in the encoder and TAMW in the decoder (MICCAI 2024).

Input ``(B, 2, X, Y, Z)`` with channel 0 = CT and channel 1 = PET (or ``model(ct, pet)``, each
``(B, 1, X, Y, Z)``, as in the authors' code). Any spatial size works (odd sizes included). With
``in_channels=3`` (ours, a control: ``data.mirror_pet``) channel 2 is the PET mirrored across the body's
midline, and the PET branch takes channels 1-2; ``branch_inputs`` gives each branch any channels (ours:
``data.body_coords`` gives both branches three channels of position in the body's frame).
Output: in training mode a list of 5 logit maps ``P^1 .. P^5``, finest first, each at the input size
(deep supervision, paper eq. 5, computed by :mod:`h2aseg.training.losses`); in eval mode the finest map
only, unless ``return_all=True``.

Where the paper's parts live (Fig. 1):

- encoder level k: two ResUNet-3D blocks (:mod:`~h2aseg.models.blocks`) give ``E_ct^k, E_pet^k``; MCSA
  (section 2.1, :mod:`~h2aseg.models.mcsa`) turns them into ``F_ct^k, F_pet^k`` with inter- and
  intra-window BDSA (eq. 1, :mod:`~h2aseg.models.attention`);
- decoder level k: TAMW (section 2.2, eqs. 2-4, :mod:`~h2aseg.models.tamw`) weights
  ``F^k = concat(F_pet^k, F_ct^k, D~^{k+1})`` by the up-sampled prediction ``P~^{k+1}``; a residual block
  gives ``D^k`` and a head the logits ``P^k``.

Which kernels compute attention and normalisation is chosen in :mod:`h2aseg.models.kernels`, which can
force the plain reference formulations everywhere (``H2ASEG_REFERENCE_KERNELS=1``); ``attention`` chooses
for attention alone.

Three variants share this code:

- ``variant="paper"`` follows sections 2.1-2.3: MCSA with window (8, 8, 4) after every encoder level
  (``mcsa_levels``), BDSA with concatenation + 3x3x3 conv and full-width queries/keys (scale
  ``1/sqrt(C)``), TAMW by eqs. (2)-(4), no dropout (the paper specifies none).
- ``variant="released"`` reproduces the authors' released code (JinPLu/H2ASeg@8e6caea, see
  ``docs/released-variant.md``): MCSA only after levels 2-3 with pooling window ``min(window)``, Q/K at
  ``C/4`` channels, averaged attentions + 1x1x1 conv, InstanceNorm -> PReLU after each MCSA stage,
  global BDSA with a residual after levels 4-5, TAMW with the minus sign and unmasked decoder feature,
  ``align_corners=True`` everywhere, dropouts 0.5, two output classes. It loads the released
  state_dict with ``strict=True``; unlike the released code it is not tied to its training patch size.
- ``variant="ours"`` (the default) is the paper variant with MCSA's attention terms kept in scale
  (``mcsa_term_norm``: each term normalised and scaled by a learned gain that starts at zero, so MCSA
  begins as the identity and grows only as far as training finds it useful). The MCSA study chose it
  (``docs/results.md``; the rule: ``docs/training-notes.md`` section 21): on the synthetic phantom the paper's
  MCSA as written costs H2ASeg 10 (validation) to 16 (test) Dice points against the dual-branch baseline
  (two seeds), the released code's normalisation after each MCSA stage does not prevent that, and with
  its terms in scale H2ASeg is 2.6 points above that baseline, as good as without MCSA: training keeps the
  gains near 0.01, so MCSA stays close to switched off there.

``use_mcsa=False, use_tamw=False`` gives the dual-branch ResUNet-3D baseline of Table 2 (skip features
concatenated), so Table 2's four rows are four configurations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from h2aseg.models.attention import BiDirectionalSpatialAttention, Triple
from h2aseg.models.blocks import InputResBlock, PreActResBlock, SegHead, upsample
from h2aseg.models.kernels import ATTENTION_IMPLS, resolve_attention_impl
from h2aseg.models.mcsa import MCSA
from h2aseg.models.outputs import foreground_probability
from h2aseg.models.registry import register_network
from h2aseg.models.tamw import TAMW

VARIANTS = ("ours", "paper", "released")


def default_term_norm(variant: str) -> bool:
    """Whether ``variant``'s MCSA keeps its attention terms in scale when ``mcsa_term_norm`` is not given."""
    return variant == "ours"


def _validate(
    variant: str,
    channels: Sequence[int],
    window_size: Sequence[int],
    mcsa_levels: Sequence[int],
    out_channels: int,
    in_channels: int,
    branch_inputs: tuple[tuple[int, ...], tuple[int, ...]],
    dropouts: dict[str, float],
    attention: str,
) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if len(channels) != 5 or any(not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"channels must be 5 positive integers (one per level), got {list(channels)}")
    if len(window_size) != 3 or any(not isinstance(w, int) or w < 1 for w in window_size):
        raise ValueError(f"window_size must be 3 positive integers, got {list(window_size)}")
    bad = [lv for lv in mcsa_levels if lv not in (1, 2, 3, 4, 5)]
    if bad:
        raise ValueError(f"mcsa_levels must be levels among 1..5, got {list(mcsa_levels)}")
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive integer, got {out_channels!r}")
    if not isinstance(in_channels, int) or in_channels < 2:
        raise ValueError(f"H2ASeg takes at least 2 input channels (CT, PET), got in_channels={in_channels}")
    for name, idx in zip(("CT", "PET"), branch_inputs, strict=True):
        if not idx or len(set(idx)) != len(idx) or not all(0 <= i < in_channels for i in idx):
            raise ValueError(
                f"branch_inputs: the {name} branch must take distinct channels among 0..{in_channels - 1}, "
                f"got {list(idx)}"
            )
    for name, p in dropouts.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")
    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")


def _attention_impl(impl: str) -> str:
    """``impl`` with a deprecated alias (``"sdpa"``) mapped to its name (warning at the model's caller)."""
    try:
        return resolve_attention_impl(impl, stacklevel=3)
    except ValueError:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}") from None


def _channels(x: torch.Tensor, idx: tuple[int, ...]) -> torch.Tensor:
    """Channels ``idx`` of ``x`` ``(B, C, ...)``: a view when they are consecutive, else a copy."""
    if idx == tuple(range(idx[0], idx[0] + len(idx))):
        return x[:, idx[0] : idx[0] + len(idx)]
    return x[:, list(idx)]


def run_block(module: nn.Module, *args: torch.Tensor, checkpointed: bool = False) -> object:
    """Call ``module(*args)``; with ``checkpointed`` (training only) keep no activations inside it and
    recompute them in the backward pass (activation checkpointing: less memory, about 30% more compute)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class DualEncoder(nn.Module):
    """Two ResUNet-3D encoders (CT, PET) whose levels talk through attention modules ``sa{k}`` (MCSA, or
    the released code's global BDSA at levels 4-5)."""

    def __init__(
        self,
        channels: Sequence[int],
        attention_modules: dict[int, nn.Module],
        dropout: float,
        pet_channels: int = 1,
        ct_channels: int = 1,
    ) -> None:
        super().__init__()
        for mod, first in (("ct", ct_channels), ("pet", pet_channels)):
            prev = 1
            for k, c in enumerate(channels, start=1):
                block = InputResBlock(first, c, dropout) if k == 1 else PreActResBlock(prev, c, 2, dropout)
                setattr(self, f"conv{k}_{mod}", block)
                prev = c
        for k, module in attention_modules.items():
            setattr(self, f"sa{k}", module)
        self.attention_levels = tuple(sorted(attention_modules))
        self.checkpointed: frozenset[int] = frozenset()  # levels whose blocks are recomputed in backward

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns ``[(F_ct^k, F_pet^k) for k = 1..5]``: block outputs ``E^k`` after the level's attention
        (``E^k`` itself where there is none); each level's output feeds the next."""
        feats = []
        for k in range(1, 6):
            ckpt = k in self.checkpointed
            ct = run_block(getattr(self, f"conv{k}_ct"), ct, checkpointed=ckpt)
            pet = run_block(getattr(self, f"conv{k}_pet"), pet, checkpointed=ckpt)
            if k in self.attention_levels:
                ct, pet = run_block(getattr(self, f"sa{k}"), ct, pet, checkpointed=ckpt)
            feats.append((ct, pet))
        return feats


class Decoder(nn.Module):
    """Decoder levels 4..1 (TAMW, eqs. 2-4, then a residual block) and heads at all five levels."""

    def __init__(
        self,
        channels: Sequence[int],
        out_channels: int,
        *,
        use_tamw: bool,
        variant: str,
        dropout: float,
        align_corners: bool,
    ) -> None:
        super().__init__()
        c = list(channels)
        for k in (4, 3, 2, 1):
            in_ch = 2 * c[k - 1] + 2 * c[k]
            setattr(self, f"conv{k}", PreActResBlock(in_ch, 2 * c[k - 1], 1, dropout))
        if use_tamw:
            for k in (4, 3, 2, 1):
                setattr(self, f"tamw{k}", TAMW(c[k - 1], 2 * c[k], variant=variant))
        for k in (5, 4, 3, 2, 1):
            setattr(self, f"output{k}", SegHead(2 * c[k - 1], out_channels))
        self.use_tamw = use_tamw
        self.align_corners = align_corners
        self.checkpointed: frozenset[int] = frozenset()

    def _up(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return upsample(x, size, self.align_corners)

    def forward(self, feats: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """``feats[k - 1] = (F_ct^k, F_pet^k)`` -> the logits ``P^1 .. P^5`` (finest first), each at its
        level's resolution."""
        d = torch.cat(feats[4], dim=1)  # the deepest level reads both modalities directly
        logits = [self.output5(d)]  # P^5
        for k in (4, 3, 2, 1):
            ckpt = k in self.checkpointed
            f_ct, f_pet = feats[k - 1]
            size = f_ct.shape[2:]
            d_up = self._up(d, size)  # D~^{k+1}
            if self.use_tamw:
                p_up = foreground_probability(self._up(logits[-1], size))  # P~^{k+1}
                tamw = getattr(self, f"tamw{k}")
                f = run_block(tamw, f_ct, f_pet, d_up, p_up, checkpointed=ckpt)  # F_enh^k
            else:
                f = torch.cat([f_ct, f_pet, d_up], dim=1)
            d = run_block(getattr(self, f"conv{k}"), f, checkpointed=ckpt)  # D^k
            logits.append(run_block(getattr(self, f"output{k}"), d, checkpointed=ckpt))  # P^k
        return logits[::-1]


@register_network("h2aseg")
class H2ASeg(nn.Module):
    """H2ASeg (ours, paper or released variant); see the module docstring.

    Args:
        variant: ``"ours"`` (default: the paper's network with term-normalised MCSA), ``"paper"`` (the
            paper as written) or ``"released"`` (the authors' code).
        channels: encoder widths of levels 1..5 (default ``(8, 16, 32, 64, 128)``).
        window_size: MCSA window ``(X, Y, Z)``; an int applies one size to all levels, a dict
            ``{level: (x, y, z)}`` sets each level's window.
        mcsa_levels: levels followed by MCSA (paper default 1..5; released: 2, 3 with global BDSA at 4, 5).
        use_mcsa, use_tamw: ablation switches (both off = dual-branch ResUNet-3D baseline).
        out_channels: 1 (sigmoid, the paper's BCE), 2 (softmax, released), or more classes.
        in_channels: 2 (CT, PET), or 3 (ours, a control): the PET branch also takes the PET mirrored
            across the body's midline (:mod:`h2aseg.data.mirror`; set by ``data.mirror_pet``), or more.
        branch_inputs: the input channels each branch takes, ``(ct_branch, pet_branch)``; default: channel 0
            for the CT branch, channels 1 .. ``in_channels - 1`` for the PET branch. ``data.body_coords``
            (ours, :mod:`h2aseg.data.body_frame`) gives both branches the three coordinate channels
            (:func:`h2aseg.models.factory.branch_inputs`).
        attn_dropout, dropout: attention-weight dropout and encoder/decoder Dropout3d probability
            (paper default 0, released 0.5).
        qk_reduction: queries/keys have ``C // qk_reduction`` channels (paper 1, released 4 in MCSA).
        attention: ``"fast"`` (default): the fastest exact route for each call
            (:func:`h2aseg.models.kernels.attention`): on the CPU a recomputing autograd node in training
            and chunked softmax attention for bf16/fp16 inference, PyTorch's ``scaled_dot_product_attention``
            for float32 inference; on CUDA PyTorch's fused kernel in training and inference, except with
            attention dropout (the released variant in train mode), which takes the recomputing node on
            every device. ``"reference"``: the plain einsum/softmax formulation (tests, comparisons).
            ``"sdpa"``, this value's old name, is still accepted (deprecated) and means ``"fast"``.
        gradient_checkpointing: recompute block activations in backward (less memory, more compute):
            ``True`` for every level, or the levels to checkpoint, e.g. ``(1,)`` for the full-resolution
            level alone, which holds most of the activations.
        mcsa_term_norm: (ours) MCSA's attention terms normalised and scaled by learned gains that start at
            zero (:class:`~h2aseg.models.mcsa.MCSA` ``term_norm``). Default: the variant's (ours: on;
            paper, released: off); ``--set model.extra.mcsa_term_norm=true|false`` sets it for any variant.
        mcsa_norm_act: InstanceNorm -> PReLU after each MCSA stage (:class:`~h2aseg.models.mcsa.MCSA`
            ``norm_act``). Default: the variant's (released: on, as in the authors' code; paper: off, the
            paper names no normalisation there). ``--set model.extra.mcsa_norm_act=true`` gives the paper
            variant the released code's normalisation (the controlled study of ``docs/results.md``).
    """

    def __init__(
        self,
        variant: str = "ours",
        channels: Sequence[int] = (8, 16, 32, 64, 128),
        window_size: Sequence[int] | int | dict[int, Sequence[int]] = (8, 8, 4),
        mcsa_levels: Sequence[int] | None = None,
        use_mcsa: bool = True,
        use_tamw: bool = True,
        out_channels: int | None = None,
        in_channels: int = 2,
        branch_inputs: tuple[Sequence[int], Sequence[int]] | None = None,
        attn_dropout: float | None = None,
        dropout: float | None = None,
        qk_reduction: int | None = None,
        attention: str = "fast",
        gradient_checkpointing: bool | Sequence[int] = False,
        mcsa_term_norm: bool | None = None,
        mcsa_norm_act: bool | None = None,
    ) -> None:
        super().__init__()
        released = variant == "released"
        if out_channels is None:
            out_channels = 2 if released else 1
        if mcsa_levels is None:
            mcsa_levels = (2, 3) if released else (1, 2, 3, 4, 5)
        attn_dropout = (0.5 if released else 0.0) if attn_dropout is None else attn_dropout
        dropout = (0.5 if released else 0.0) if dropout is None else dropout
        windows = self._windows(window_size)
        attention = _attention_impl(attention)
        if branch_inputs is None:
            branch_inputs = ((0,), tuple(range(1, in_channels)) if isinstance(in_channels, int) else ())
        inputs = (tuple(int(i) for i in branch_inputs[0]), tuple(int(i) for i in branch_inputs[1]))
        _validate(
            variant,
            list(channels),
            list(windows[1]),
            list(mcsa_levels),
            out_channels,
            in_channels,
            inputs,
            {"attn_dropout": attn_dropout, "dropout": dropout},
            attention,
        )
        qk_reduction = qk_reduction or (4 if released else 1)
        mcsa_norm_act = released if mcsa_norm_act is None else bool(mcsa_norm_act)
        mcsa_term_norm = default_term_norm(variant) if mcsa_term_norm is None else bool(mcsa_term_norm)
        channels = [int(c) for c in channels]

        attn: dict[int, nn.Module] = {}
        if use_mcsa:
            for k in mcsa_levels:
                c = channels[k - 1]
                attn[k] = MCSA(
                    c,
                    windows[k],
                    pool_window=(min(windows[k]),) * 3 if released else None,
                    qk_channels=max(1, c // qk_reduction),
                    combine="mean" if released else "concat",
                    norm_act=mcsa_norm_act,
                    align_corners=released,
                    attn_dropout=attn_dropout,
                    dropout=attn_dropout if released else 0.0,
                    term_norm=mcsa_term_norm,
                )
            if released:  # plain global bi-directional attention with a residual after levels 4 and 5
                for k in (4, 5):
                    attn[k] = BiDirectionalSpatialAttention(
                        channels[k - 1],
                        channels[k - 1],
                        combine="mean",
                        residual=True,
                        attn_dropout=attn_dropout,
                        dropout=attn_dropout,
                    )
        self.encoder = DualEncoder(
            channels, attn, dropout, pet_channels=len(inputs[1]), ct_channels=len(inputs[0])
        )
        self.decoder = Decoder(
            channels,
            out_channels,
            use_tamw=use_tamw,
            variant="released" if released else "paper",  # the decoder and TAMW of ours are the paper's
            dropout=dropout,
            align_corners=released,
        )
        self.variant = variant
        self.in_channels = in_channels
        self.branch_inputs = inputs
        self.out_channels = out_channels
        self.align_corners = released
        self.set_attention_impl(attention)
        self.gradient_checkpointing = gradient_checkpointing

    @staticmethod
    def _windows(window_size: Sequence[int] | int | dict[int, Sequence[int]]) -> dict[int, Triple]:
        if isinstance(window_size, int):
            return dict.fromkeys(range(1, 6), (window_size,) * 3)
        if isinstance(window_size, dict):
            missing = [k for k in range(1, 6) if k not in window_size]
            if missing:
                raise ValueError(f"window_size dict must give levels 1..5, missing {missing}")
            out = {}
            for k in range(1, 6):
                w = tuple(int(v) for v in window_size[k])
                if len(w) != 3 or min(w) < 1:
                    raise ValueError(f"window_size[{k}] must be 3 positive integers, got {window_size[k]}")
                out[k] = w
            return out  # type: ignore[return-value]
        w = tuple(window_size)
        if len(w) != 3:
            raise ValueError(f"window_size must be 3 positive integers, got {list(w)}")
        return dict.fromkeys(range(1, 6), w)  # type: ignore[arg-type]

    @property
    def gradient_checkpointing(self) -> tuple[int, ...]:
        """Levels whose encoder, attention and decoder blocks are recomputed in backward (empty: none)."""
        return tuple(sorted(self.encoder.checkpointed))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool | Sequence[int]) -> None:
        if isinstance(value, bool):
            levels = frozenset(range(1, 6)) if value else frozenset()
        else:
            levels = frozenset(int(v) for v in value)
            if not levels <= set(range(1, 6)):
                raise ValueError(f"gradient_checkpointing levels must be among 1..5, got {sorted(levels)}")
        self.encoder.checkpointed = self.decoder.checkpointed = levels

    def set_attention_impl(self, impl: str) -> None:
        """Switch every BDSA between ``"fast"`` (the fastest exact route for each call, see ``attention``
        in the class docstring) and the einsum ``"reference"``; ``"sdpa"`` is a deprecated alias of
        ``"fast"``."""
        impl = _attention_impl(impl)
        for m in self.modules():
            if isinstance(m, BiDirectionalSpatialAttention):
                m.impl = impl

    def forward(
        self, x: torch.Tensor, pet: torch.Tensor | None = None, *, return_all: bool | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        if pet is None:
            if x.ndim != 5 or x.shape[1] != self.in_channels:
                what = "CT then PET" + (" then the mirrored PET" if self.in_channels == 3 else "")
                raise ValueError(
                    f"expected input (B, {self.in_channels}, X, Y, Z) with {what}, got {tuple(x.shape)}"
                )
            ct, pet = (_channels(x, idx) for idx in self.branch_inputs)
        else:
            ct, (c, p) = x, (len(idx) for idx in self.branch_inputs)
            if (
                ct.shape[2:] != pet.shape[2:]
                or ct.ndim != 5
                or ct.shape[1] != c
                or pet.shape[:2] != (ct.shape[0], p)
            ):
                raise ValueError(
                    f"expected ct of shape (B, {c}, X, Y, Z) and pet of shape (B, {p}, X, Y, Z), got "
                    f"{tuple(ct.shape)}, {tuple(pet.shape)}"
                )
        size = ct.shape[2:]
        deepest = [(s + 15) // 16 for s in size]
        if self.training and deepest[0] * deepest[1] * deepest[2] == 1:
            raise ValueError(
                f"input {tuple(size)} is too small to train: the 16x down-sampled level has one voxel, "
                "which instance normalisation cannot normalise; use patches of >= 32 voxels along an axis"
            )
        logits = self.decoder(self.encoder(ct, pet))
        if return_all is None:
            return_all = self.training
        if not return_all:
            return logits[0]
        return [out if out.shape[2:] == size else upsample(out, size, self.align_corners) for out in logits]
