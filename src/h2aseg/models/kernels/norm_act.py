"""Instance norm followed by PReLUs (and the convs they feed), as one autograd node, and its reference.

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
  buffers) instead of the generic PReLU-backward kernel, several times slower on the CPU;
- a ``Dropout3d`` between PReLU and conv (the level-1 block) is a per-channel multiplier inside the node,
  drawn from the RNG exactly as the module draws it;
- inputs larger than :data:`CHUNK_ELEMENTS` go through a few samples at a time (the statistics are per
  sample and channel), which bounds backward's temporaries;
- narrow convs run channels-last on the CPU (:func:`_layout`).

Same mathematics as the modules, which stay in the model (their names and parameters are the released
state_dict's): :func:`reference_norm_prelu` / :func:`reference_norm_prelu_conv` run them one by one and are
the ground truth of the tests. The node calls ATen operators that are not public API
(``native_batch_norm`` and its backward, ``convolution_backward``, ``threshold_backward``); where one is
missing, :data:`PRIVATE_OPS_AVAILABLE` is False and :mod:`h2aseg.models.kernels`, which chooses between
node and modules, takes the modules. Measured in ``benchmarks/bench_model.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from h2aseg.models.kernels.tiny_conv import conv3d, conv_dtype


def _private_ops_available() -> bool:
    try:
        aten = torch.ops.aten
        ops = (aten.convolution_backward, aten.threshold_backward, aten.native_batch_norm_backward)
        return callable(torch.native_batch_norm) and all(op is not None for op in ops)
    except (AttributeError, RuntimeError):
        return False


#: whether this PyTorch has the non-public operators the node calls (else the modules run)
PRIVATE_OPS_AVAILABLE: bool = _private_ops_available()


def _unit_weight(xv: torch.Tensor) -> torch.Tensor:
    """Ones, one per row of ``(1, rows, N)``, in float32 at least: a float32 weight puts the batch-norm kernel
    in its mixed mode for bf16/fp16 input (statistics in float32)."""
    return torch.ones(xv.shape[1], device=xv.device, dtype=torch.promote_types(xv.dtype, torch.float32))


def _normalise(xv: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1, B*C, N)`` -> normalised map (input dtype), per-row mean and 1/std (float32)."""
    weight = _unit_weight(xv)
    return torch.native_batch_norm(xv, weight, torch.zeros_like(weight), None, None, True, 0.0, eps)


def _layout(a: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """Channels-last for narrow convs on the CPU (out <= 8, in <= 16 channels: the level-1 8->8 convs and
    the heads), where oneDNN runs them 1.4-2.6x faster even counting the layout copies; measured slower
    for wider ones."""
    narrow = weight.shape[0] <= 8 and weight.shape[1] <= 16
    return torch.channels_last_3d if a.device.type == "cpu" and narrow else torch.contiguous_format


def _conv(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    layout, dtype = _layout(a, weight), conv_dtype(a, a.dtype)
    bias = None if bias is None else bias.to(dtype)
    y = F.conv3d(
        a.to(dtype).contiguous(memory_format=layout),
        weight.to(dtype).contiguous(memory_format=layout),
        bias,
        stride=stride,
        padding=weight.shape[-1] // 2,
    )
    return y.contiguous().to(a.dtype)


def _conv_backward(
    grad: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`_conv` with respect to ``(a, weight, bias)`` (``mask`` says which are needed)."""
    layout, dtype = _layout(a, weight), conv_dtype(a, a.dtype)
    d, d_w, d_b = torch.ops.aten.convolution_backward(
        grad.to(dtype).contiguous(memory_format=layout),
        a.to(dtype).contiguous(memory_format=layout),
        weight.to(dtype).contiguous(memory_format=layout),
        None if bias is None else [bias.shape[0]],
        [stride] * 3,
        [weight.shape[-1] // 2] * 3,
        [1, 1, 1],
        False,
        [0, 0, 0],
        1,
        mask,
    )
    d_w = None if d_w is None else d_w.contiguous().to(weight.dtype)
    d_b = None if d_b is None else d_b.to(bias.dtype)  # type: ignore[union-attr]
    return d.contiguous().to(a.dtype), d_w, d_b


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

    ``params`` holds per branch ``(prelu_weight, conv_weight | None, conv_bias | None, keep | None)``, with
    ``keep`` a ``(B, C, 1, 1, 1)`` channel-dropout multiplier applied to the activation (Dropout3d between
    the PReLU and the conv); ``strides`` one stride per branch.
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
                    a = _activation(z, params[4 * i], params[4 * i + 3], x[samples].shape, samples)
                    c_w, c_b = params[4 * i + 1 : 4 * i + 3]
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
                samples,
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


def _activation(
    z: torch.Tensor, weight: torch.Tensor | None, keep: torch.Tensor | None, shape: torch.Size, samples: slice
) -> torch.Tensor:
    """PReLU of the normalised rows ``z`` as a map of ``shape``, times the channel-dropout ``keep``."""
    a = F.prelu(z, weight.to(z.dtype)).view(shape)  # type: ignore[union-attr]
    return a if keep is None else a.mul_(keep[samples].to(a.dtype))


def _accumulate(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    if part is None or total is None:
        return part if total is None else total
    return total.add_(part)


def _backward_chunk(
    x: torch.Tensor,
    samples: slice,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    params: list[torch.Tensor | None],
    grads: list[torch.Tensor],
    eps: float,
    strides: tuple[int, ...],
    need: tuple[bool, ...],
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Backward of :class:`_NormPReLUConv` for the samples ``samples`` (``x`` holds them):
    ``(dL/dx, per-parameter gradients)``; ``need`` is the node's ``needs_input_grad``."""
    xv = _rows(x)
    z = _normalise(xv, eps)[0]  # recomputed: cheaper than keeping it
    g = None
    param_grads: list[torch.Tensor | None] = []
    for i, (grad, stride) in enumerate(zip(grads, strides, strict=True)):
        a_w, c_w, c_b, keep = params[4 * i : 4 * i + 4]
        base = 3 + 4 * i  # index of this branch's PReLU weight among forward's inputs
        d_cw = d_cb = None
        if c_w is None:
            d = grad.reshape(x.shape).clone()  # modified in place below: never the caller's tensor
        else:
            a = _activation(z, a_w, keep, x.shape, samples)
            mask = [True, need[base + 1], c_b is not None and need[base + 2]]
            d, d_cw, d_cb = _conv_backward(grad, a, c_w, c_b, stride, mask)
            del a
        if keep is not None:  # through the channel dropout
            d.mul_(keep[samples].to(d.dtype))
        d = d.view(xv.shape)
        # PReLU backward in place, two full-size buffers at most: with d+ = d [z > 0], d- = d [z <= 0],
        # dL/dz = d+ + a d-  and  dL/da = sum(d- z)
        gi = torch.ops.aten.threshold_backward(d, z, 0)  # d+
        d.sub_(gi)  # d-
        gi.addcmul_(d, a_w.to(d.dtype))  # type: ignore[union-attr]
        # summed in float32 at least (bf16 maps), in float64 for float64 maps
        acc = torch.promote_types(d.dtype, torch.float32)
        d_aw = d.mul_(z).sum(dtype=acc).reshape(a_w.shape) if need[base] else None  # type: ignore[union-attr]
        del d
        g = gi if g is None else g.add_(gi)
        del gi
        param_grads += [None if d_aw is None else d_aw.to(a_w.dtype), d_cw, d_cb, None]  # type: ignore[union-attr]
    del z
    dx = None
    if need[0]:
        dx = torch.ops.aten.native_batch_norm_backward(
            g, xv, _unit_weight(xv), None, None, mean, invstd, True, eps, [True, False, False]
        )[0].view(x.shape)
    return dx, param_grads


def supports(
    x: torch.Tensor, norm: nn.InstanceNorm3d, prelus: Sequence[nn.PReLU], convs: Sequence[nn.Conv3d] = ()
) -> bool:
    """Whether the node computes ``norm -> prelu (-> conv)`` for ``x``: a floating-point input, a
    parameter-free instance norm (``affine=False``, no running statistics), single-parameter PReLUs, and
    plain cubic-kernel convs with "same" padding (``padding = kernel // 2``), a stride equal along the
    three axes and no dilation or groups, as every conv of the blocks is."""
    plain = all(
        c.kernel_size[0] == c.kernel_size[1] == c.kernel_size[2]
        and c.padding == (c.kernel_size[0] // 2,) * 3
        and c.stride[0] == c.stride[1] == c.stride[2]
        and c.dilation == (1, 1, 1)
        and c.groups == 1
        and c.padding_mode == "zeros"
        for c in convs
    )
    return (
        plain
        and x.is_floating_point()
        and not norm.affine
        and not norm.track_running_stats
        and all(p.weight.numel() == 1 for p in prelus)
    )


def fused_norm_prelu(x: torch.Tensor, norm: nn.InstanceNorm3d, *prelus: nn.PReLU) -> tuple[torch.Tensor, ...]:
    """:func:`reference_norm_prelu` as one node (see :func:`supports` for what it takes)."""
    params = [t for p in prelus for t in (p.weight, None, None, None)]
    return _NormPReLUConv.apply(x, norm.eps, (1,) * len(prelus), *params)


Branch = tuple[nn.PReLU, nn.Conv3d] | tuple[nn.PReLU, nn.Dropout3d, nn.Conv3d]


def fused_norm_prelu_conv(
    x: torch.Tensor, norm: nn.InstanceNorm3d, *branches: Branch
) -> tuple[torch.Tensor, ...]:
    """:func:`reference_norm_prelu_conv` as one node that keeps no activation (see :func:`supports`)."""
    params = []
    for branch in branches:
        prelu, conv = branch[0], branch[-1]
        params += [
            prelu.weight,
            conv.weight,
            conv.bias,
            _channel_keep(x, branch[1] if len(branch) == 3 else None),
        ]
    strides = tuple(b[-1].stride[0] for b in branches)
    return _NormPReLUConv.apply(x, norm.eps, strides, *params)


def reference_norm_prelu(
    x: torch.Tensor, norm: nn.InstanceNorm3d, *prelus: nn.PReLU
) -> tuple[torch.Tensor, ...]:
    """``tuple(prelu(norm(x)) for prelu in prelus)``: the modules one by one, the normalisation once."""
    n = norm(x)
    return tuple(p(n) for p in prelus)


def reference_norm_prelu_conv(
    x: torch.Tensor, norm: nn.InstanceNorm3d, *branches: Branch
) -> tuple[torch.Tensor, ...]:
    """``tuple(conv(prelu(norm(x))) for prelu, conv in branches)``, module by module; a branch
    ``(prelu, dropout, conv)`` has a ``Dropout3d`` between its PReLU and conv. The convs go through
    :func:`~h2aseg.models.kernels.tiny_conv.conv3d` (float32 on tiny bf16 maps)."""
    n = norm(x)
    outs = []
    for branch in branches:
        h = n
        for layer in branch:
            h = conv3d(layer, h) if isinstance(layer, nn.Conv3d) else layer(h)
        outs.append(h)
    return tuple(outs)


def _channel_keep(x: torch.Tensor, dropout: nn.Dropout3d | None) -> torch.Tensor | None:
    """The ``(B, C, 1, 1, 1)`` multipliers (0 or ``1 / (1 - p)``) that ``dropout`` applies to a map like
    ``x``, drawn from the RNG as ``Dropout3d`` draws them; None where it is inactive."""
    if dropout is None or not dropout.training or dropout.p == 0.0:
        return None
    ones = torch.ones((*x.shape[:2], 1, 1, 1), device=x.device)
    return F.dropout3d(ones, dropout.p, training=True)
