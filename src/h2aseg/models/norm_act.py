"""Instance norm followed by one or more PReLUs, as one autograd node.

Every block of the network opens with ``InstanceNorm3d -> PReLU`` (the pre-activation blocks feed one
normalisation to two PReLUs). Done module by module under bf16 autocast this costs, per element, a cast
of the input to float32 (the statistics need float32), a float32 normalisation, a cast back, the PReLU,
and three saved copies (float32 input, bf16 PReLU input, bf16 PReLU output). Here the normalisation is
PyTorch's own batch-norm kernel over ``(1, B*C, N)`` in its *mixed* mode (bf16/fp16 input, float32
statistics), which accumulates in float32 and writes the input dtype directly, and the node saves only its
input: the normalised map is recomputed in backward (one cheap pass) instead of kept. PReLU's backward is
rewritten with PReLU(z) = a z + (1 - a) relu(z): ReLU's mask kernel plus one ``lerp`` instead of the
generic PReLU-backward kernel, which is several times slower on the CPU.

Same mathematics as ``InstanceNorm3d(affine=False) -> PReLU(1)``; the modules stay in the model (their
names and parameters are the released state_dict's) and :func:`norm_prelu` routes through them where the
fused node does not apply. Measured in ``benchmarks/bench_model.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: devices on which :func:`norm_prelu` uses the fused node. CUDA keeps the module path until the fused one
#: has been checked there (``benchmarks/cuda_check.py`` compares the two); add "cuda" once it has.
FUSED_DEVICES: set[str] = {"cpu"}


def _unit_weight(xv: torch.Tensor) -> torch.Tensor:
    """Ones, one per row of ``(1, rows, N)``, in float32 at least: a float32 weight puts the batch-norm kernel
    in its mixed mode for bf16/fp16 input (statistics in float32)."""
    return torch.ones(xv.shape[1], device=xv.device, dtype=torch.promote_types(xv.dtype, torch.float32))


def _normalise(xv: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1, B*C, N)`` -> normalised map (input dtype), per-row mean and 1/std (float32)."""
    weight = _unit_weight(xv)
    return torch.native_batch_norm(xv, weight, torch.zeros_like(weight), None, None, True, 0.0, eps)


class _InstanceNormPReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.contiguous()
            xv = x.view(1, x.shape[0] * x.shape[1], -1)
            z, mean, invstd = _normalise(xv, eps)
            outs = tuple(F.prelu(z, w.to(z.dtype)).view(x.shape) for w in weights)
        ctx.eps = eps
        ctx.save_for_backward(x, mean, invstd, *weights)
        return outs

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, invstd, *weights = ctx.saved_tensors
        xv = x.view(1, x.shape[0] * x.shape[1], -1)
        z = _normalise(xv, ctx.eps)[0]  # recomputed: cheaper than keeping it
        g = None
        zneg = None
        dweights: list[torch.Tensor | None] = []
        for i, (d, w) in enumerate(zip(grads, weights, strict=True)):
            d = d.contiguous().view(xv.shape)
            relu_grad = torch.ops.aten.threshold_backward(d, z, 0)  # d where z > 0, else 0
            if ctx.needs_input_grad[2 + i]:
                # dL/da = sum(d * min(z, 0))
                zneg = torch.clamp_max(z, 0) if zneg is None else zneg
                dweights.append((d * zneg).sum().to(w.dtype).reshape(w.shape))
            else:
                dweights.append(None)
            gi = torch.lerp(relu_grad, d, w.to(d.dtype))  # (1 - a) relu'(z) d + a d
            g = gi if g is None else g.add_(gi)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.native_batch_norm_backward(
                g, xv, _unit_weight(xv), None, None, mean, invstd, True, ctx.eps, [True, False, False]
            )[0].view(x.shape)
        return (dx, None, *dweights)


def norm_prelu(x: torch.Tensor, norm: nn.InstanceNorm3d, *prelus: nn.PReLU) -> tuple[torch.Tensor, ...]:
    """``tuple(prelu(norm(x)) for prelu in prelus)``, the normalisation computed once.

    ``norm`` must be a parameter-free instance norm (``affine=False``, no running statistics) and every
    PReLU have a single parameter; otherwise, and off :data:`FUSED_DEVICES`, the modules run one by one.
    """
    fused = (
        x.device.type in FUSED_DEVICES
        and not norm.affine
        and not norm.track_running_stats
        and all(p.weight.numel() == 1 for p in prelus)
        and x.is_floating_point()
    )
    if not fused:
        n = norm(x)
        return tuple(p(n) for p in prelus)
    return _InstanceNormPReLU.apply(x, norm.eps, *(p.weight for p in prelus))
