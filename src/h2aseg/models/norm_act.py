"""Instance norm followed by PReLUs (and the convs they feed), as one autograd node.

Every block of the network opens with ``InstanceNorm3d -> PReLU -> Conv3d`` (the pre-activation blocks feed
one normalisation to two PReLU -> conv branches). Done module by module under bf16 autocast this costs, per
element, a cast of the input to float32 (the statistics need float32), a float32 normalisation, a cast
back, the PReLU, and four saved copies (float32 norm input, bf16 PReLU input, bf16 PReLU output kept by
the conv, per branch). Here:

- the normalisation is PyTorch's own batch-norm kernel over ``(1, B*C, N)`` in its *mixed* mode
  (bf16/fp16 input, float32 statistics), which accumulates in float32 and writes the input dtype directly;
- the node keeps only its input (plus per-channel statistics): the normalised map and the activations
  are recomputed in backward (two cheap passes), the convs' outputs are not;
- PReLU's backward is ReLU's mask kernel plus in-place updates (no full-size temporaries beyond two
  buffers) instead of the generic PReLU-backward kernel, several times slower on the CPU.

Same mathematics as the modules; they stay in the model (their names and parameters are the released
state_dict's) and :func:`norm_prelu` / :func:`norm_prelu_conv` route through them where the fused node does
not apply. Measured in ``benchmarks/bench_model.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: devices on which the fused node runs. CUDA keeps the module path until the fused one has been checked
#: there (``benchmarks/cuda_check.py`` compares the two); add "cuda" once it has.
FUSED_DEVICES: set[str] = {"cpu"}


def _unit_weight(xv: torch.Tensor) -> torch.Tensor:
    """Ones, one per row of ``(1, rows, N)``, in float32 at least: a float32 weight puts the batch-norm kernel
    in its mixed mode for bf16/fp16 input (statistics in float32)."""
    return torch.ones(xv.shape[1], device=xv.device, dtype=torch.promote_types(xv.dtype, torch.float32))


def _normalise(xv: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1, B*C, N)`` -> normalised map (input dtype), per-row mean and 1/std (float32)."""
    weight = _unit_weight(xv)
    return torch.native_batch_norm(xv, weight, torch.zeros_like(weight), None, None, True, 0.0, eps)


def _conv(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    bias = None if bias is None else bias.to(a.dtype)
    return F.conv3d(a, weight.to(a.dtype), bias, stride=stride, padding=weight.shape[-1] // 2)


#: elements of the input processed at once: larger inputs go through the node a few samples at a time
#: (instance-norm statistics are per sample and channel), which bounds the full-size temporaries of
#: backward (normalised map, activation, gradients) to that many elements instead of the whole batch
CHUNK_ELEMENTS = 1 << 25


def _sample_chunks(x: torch.Tensor) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))
    return [slice(i, min(i + step, x.shape[0])) for i in range(0, x.shape[0], step)]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(1, B*C, N)``: instance norm as batch norm over rows."""
    return x.view(1, x.shape[0] * x.shape[1], -1)


class _NormPReLUConv(torch.autograd.Function):
    """``x -> [conv_i(prelu_i(instance_norm(x)))]``; a branch without a conv returns its activation.

    ``params`` holds per branch ``(prelu_weight, conv_weight | None, conv_bias | None)``; ``strides`` one
    stride per branch.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, eps: float, strides: tuple[int, ...], *params: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device_type=device, enabled=False):
            x = x.to(dtype).contiguous()
            outs: list[list[torch.Tensor]] = [[] for _ in strides]
            stats: list[tuple[torch.Tensor, torch.Tensor]] = []
            for samples in _sample_chunks(x):
                z, mean, invstd = _normalise(_rows(x[samples]), eps)
                stats.append((mean, invstd))
                for i, stride in enumerate(strides):
                    a_w, c_w, c_b = params[3 * i : 3 * i + 3]
                    a = F.prelu(z, a_w.to(z.dtype)).view(x[samples].shape)  # type: ignore[union-attr]
                    outs[i].append(a if c_w is None else _conv(a, c_w, c_b, stride))
                del z
        mean, invstd = (torch.cat(t) for t in zip(*stats, strict=True))
        ctx.eps, ctx.strides = eps, strides
        ctx.save_for_backward(x, mean, invstd, *params)
        return tuple(o[0] if len(o) == 1 else torch.cat(o) for o in outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, mean, invstd, *params = ctx.saved_tensors
        chunks = _sample_chunks(x)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] and len(chunks) > 1 else None
        totals: list[torch.Tensor | None] = [None] * len(params)
        for samples in chunks:
            c = x.shape[1]
            rows = slice(samples.start * c, samples.stop * c)
            dx_part, part = _backward_chunk(
                x[samples],
                mean[rows],
                invstd[rows],
                params,
                [g[samples] for g in grads],
                ctx.eps,
                ctx.strides,
                ctx.needs_input_grad,
            )
            totals = [_accumulate(t, p) for t, p in zip(totals, part, strict=True)]
            if dx is None:
                dx = dx_part
            elif dx_part is not None:
                dx[samples] = dx_part
        return (dx, None, None, *totals)


def _accumulate(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    if part is None or total is None:
        return part if total is None else total
    return total.add_(part)


def _backward_chunk(
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    params: list[torch.Tensor | None],
    grads: list[torch.Tensor],
    eps: float,
    strides: tuple[int, ...],
    need: tuple[bool, ...],
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Backward of :class:`_NormPReLUConv` for some samples: ``(dL/dx, per-parameter gradients)``;
    ``need`` is the node's ``needs_input_grad``."""
    xv = _rows(x)
    z = _normalise(xv, eps)[0]  # recomputed: cheaper than keeping it
    g = None
    param_grads: list[torch.Tensor | None] = []
    for i, (grad, stride) in enumerate(zip(grads, strides, strict=True)):
        a_w, c_w, c_b = params[3 * i : 3 * i + 3]
        base = 3 + 3 * i  # index of this branch's PReLU weight among forward's inputs
        d_cw = d_cb = None
        if c_w is None:
            d = grad.reshape(xv.shape).clone()  # modified in place below: never the caller's tensor
        else:
            a = F.prelu(z, a_w.to(z.dtype)).view(x.shape)  # type: ignore[union-attr]
            d, d_cw, d_cb = torch.ops.aten.convolution_backward(
                grad.contiguous(),
                a,
                c_w.to(a.dtype),
                None if c_b is None else [c_b.shape[0]],
                [stride] * 3,
                [c_w.shape[-1] // 2] * 3,
                [1, 1, 1],
                False,
                [0, 0, 0],
                1,
                [True, need[base + 1], c_b is not None and need[base + 2]],
            )
            del a
            d = d.view(xv.shape)
            d_cw = None if d_cw is None else d_cw.to(c_w.dtype)
            d_cb = None if d_cb is None else d_cb.to(c_b.dtype)  # type: ignore[union-attr]
        # PReLU backward in place, two full-size buffers at most: with d+ = d [z > 0], d- = d [z <= 0],
        # dL/dz = d+ + a d-  and  dL/da = sum(d- z)
        gi = torch.ops.aten.threshold_backward(d, z, 0)  # d+
        d.sub_(gi)  # d-
        gi.addcmul_(d, a_w.to(d.dtype))  # type: ignore[union-attr]
        d_aw = d.mul_(z).sum().float().reshape(a_w.shape) if need[base] else None  # type: ignore[union-attr]
        del d
        g = gi if g is None else g.add_(gi)
        del gi
        param_grads += [None if d_aw is None else d_aw.to(a_w.dtype), d_cw, d_cb]  # type: ignore[union-attr]
    del z
    dx = None
    if need[0]:
        dx = torch.ops.aten.native_batch_norm_backward(
            g, xv, _unit_weight(xv), None, None, mean, invstd, True, eps, [True, False, False]
        )[0].view(x.shape)
    return dx, param_grads


def _fusable(x: torch.Tensor, norm: nn.InstanceNorm3d, prelus: Sequence[nn.PReLU]) -> bool:
    return (
        x.device.type in FUSED_DEVICES
        and x.is_floating_point()
        and not norm.affine
        and not norm.track_running_stats
        and all(p.weight.numel() == 1 for p in prelus)
    )


def norm_prelu(x: torch.Tensor, norm: nn.InstanceNorm3d, *prelus: nn.PReLU) -> tuple[torch.Tensor, ...]:
    """``tuple(prelu(norm(x)) for prelu in prelus)``, the normalisation computed once.

    ``norm`` must be a parameter-free instance norm (``affine=False``, no running statistics) and every
    PReLU have a single parameter; otherwise, and off :data:`FUSED_DEVICES`, the modules run one by one.
    """
    if not _fusable(x, norm, prelus):
        n = norm(x)
        return tuple(p(n) for p in prelus)
    params = [t for p in prelus for t in (p.weight, None, None)]
    return _NormPReLUConv.apply(x, norm.eps, (1,) * len(prelus), *params)


def norm_prelu_conv(
    x: torch.Tensor, norm: nn.InstanceNorm3d, *branches: tuple[nn.PReLU, nn.Conv3d]
) -> tuple[torch.Tensor, ...]:
    """``tuple(conv(prelu(norm(x))) for prelu, conv in branches)``, normalised once, no activation kept.

    Each conv must be a plain cubic-kernel conv with "same" padding (``padding = kernel // 2``), a stride
    equal along the three axes and no dilation or groups, as every conv of the blocks is.
    """
    convs = [c for _, c in branches]
    plain = all(
        c.kernel_size[0] == c.kernel_size[1] == c.kernel_size[2]
        and c.padding == (c.kernel_size[0] // 2,) * 3
        and c.stride[0] == c.stride[1] == c.stride[2]
        and c.dilation == (1, 1, 1)
        and c.groups == 1
        and c.padding_mode == "zeros"
        for c in convs
    )
    if not (plain and _fusable(x, norm, [p for p, _ in branches])):
        n = norm(x)
        return tuple(c(p(n)) for p, c in branches)
    params = [t for p, c in branches for t in (p.weight, c.weight, c.bias)]
    strides = tuple(c.stride[0] for c in convs)
    return _NormPReLUConv.apply(x, norm.eps, strides, *params)
