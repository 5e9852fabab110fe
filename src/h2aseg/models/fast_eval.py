"""A faster float32 CPU inference path: channels-last 3D weights and windows (and oneDNN convolutions).

**Channels-last** (:func:`channels_last_weights`, :class:`ChannelsLastForward`): the network's 5-D weights
and each batch of windows in ``torch.channels_last_3d``, so that oneDNN runs its convolutions in the
channels-last layout. On the development machine it was not measurably faster than the current path
(``benchmarks/cpu_candidates.py``, docs/benchmarks.md), so ``infer.cpu_fast_path`` is off by default:
the switch is there to measure it on other CPUs. The weights are converted for the duration of a
prediction and put back afterwards, so a model that is being trained (validation runs prediction) keeps
its layout. Same convolutions, another summation order: probabilities equal to float rounding.

**oneDNN for every convolution** (:func:`onednn_convolutions`, measured but not part of the fast path):

PyTorch sends a float32 CPU convolution to oneDNN only when a heuristic written for 2D convs allows it
(``batch > 1``, a kernel wider than 3, or ``batch * C * X * Y > 20480``); otherwise it takes its native
``slow_conv3d`` kernel (im2col + matrix product). At batch 1 that is most of H2ASeg's 3x3x3 convs below
full resolution (level 4 of a 128x128x64 window: ``64 * 16 * 16 = 16384``), where oneDNN is faster.
:func:`onednn_convolutions` routes the convolutions run inside it to oneDNN directly
(``torch.mkldnn_convolution``: the same convolution, its own float32 summation order, so results agree to
float rounding, about 1e-6 relative).

It applies only where it is safe: CPU float32 tensors that need no gradient, 5-D input, numeric padding;
anything else (CUDA, bf16 autocast, training) runs as before.

``infer.cpu_fast_path`` turns the fast path on for prediction (:func:`cpu_fast_forward`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV3D = (F.conv3d, torch.conv3d)


def _triple(value: int | Sequence[int]) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def _conv_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """``conv3d``'s arguments ``(input, weight, bias, stride, padding, dilation, groups)``, defaults
    filled in."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    values = list(args) + [
        kwargs.get(n, d) for n, d in zip(names[len(args) :], defaults[len(args) :], strict=True)
    ]
    return tuple(values)


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, padding: object) -> bool:
    """Whether :func:`onednn_convolutions` sends this conv to oneDNN: CPU float32 5-D input and weight,
    no gradient to record, numeric padding, and a PyTorch built with oneDNN."""
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 5
        and not isinstance(padding, str)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class _OneDNNConvMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _CONV3D and not torch.is_autocast_enabled("cpu"):
            x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs)
            if onednn_applies(x, weight, padding):
                return torch.mkldnn_convolution(
                    x, weight, bias, _triple(padding), _triple(stride), _triple(dilation), int(groups)
                )
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_convolutions():  # type: ignore[no-untyped-def]
    """``with onednn_convolutions(): model(x)``: the float32 CPU 3D convs inside go to oneDNN (see the
    module docstring); the rest of the forward is untouched."""
    with _OneDNNConvMode():
        yield


@contextlib.contextmanager
def channels_last_weights(model: nn.Module) -> Iterator[nn.Module]:
    """``with channels_last_weights(model): ...``: the model's 5-D parameters in ``channels_last_3d`` inside
    the block, their previous layout restored afterwards (values untouched)."""
    saved = []
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 5:
                saved.append((p, p.data))
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    try:
        yield model
    finally:
        for p, data in saved:
            p.data = data


class ChannelsLastForward:
    """``model(x)`` with the batch of windows ``x`` in ``channels_last_3d`` and the logits returned in the
    usual layout (what MONAI's sliding window expects of its predictor)."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.model(x).contiguous()


@contextlib.contextmanager
def cpu_fast_forward(
    model: nn.Module, enabled: bool, device: torch.device
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """``with cpu_fast_forward(model, cfg.cpu_fast_path, device) as forward: ...``: the forward to give
    the sliding window. With ``enabled`` on the CPU: channels-last weights (restored on exit) and windows;
    otherwise ``model`` itself."""
    if not (enabled and device.type == "cpu"):
        yield model
        return
    with channels_last_weights(model):
        yield ChannelsLastForward(model)
