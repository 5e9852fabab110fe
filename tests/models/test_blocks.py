"""The blocks' named layers are the layers the released state_dict indexes, and each block's forward is
the composition of its named layers (fast path and reference path alike)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from h2aseg.models.blocks import InputResBlock, NormAct, PreActResBlock, SegHead
from h2aseg.models.kernels import use_reference_kernels


def test_names_point_at_the_released_indices() -> None:
    pre = PreActResBlock(4, 6, stride=2)
    names = ["norm1", "act1", "conv1", "drop", "norm2", "act2", "conv2"]
    assert [getattr(pre, n) for n in names] == list(pre.conv_block)
    assert [pre.skip_norm, pre.skip_act, pre.skip_conv] == list(pre.conv_skip)
    inp = InputResBlock(1, 4)
    assert [inp.conv1, inp.norm1, inp.act1, inp.drop, inp.conv2] == list(inp.conv_block)
    assert inp.skip_conv is inp.conv_skip[0]
    head = SegHead(4, 2)
    assert [head.norm, head.act, head.to_logits] == list(head.conv)
    na = NormAct(3)
    assert [na.norm, na.act] == list(na)
    # the names add no state_dict entries
    keys = ["1.weight", "2.weight", "2.bias", "5.weight", "6.weight", "6.bias"]
    skip = ["1.weight", "2.weight", "2.bias"]
    assert list(pre.state_dict()) == [f"conv_block.{k}" for k in keys] + [f"conv_skip.{k}" for k in skip]


def _composed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block written out with its named layers, module by module."""
    if isinstance(block, PreActResBlock):
        h = block.conv2(block.act2(block.norm2(block.drop(block.conv1(block.act1(block.norm1(x)))))))
        return h + block.skip_conv(block.skip_act(block.skip_norm(x)))
    if isinstance(block, InputResBlock):
        h = block.conv2(block.drop(block.act1(block.norm1(block.conv1(x)))))
        return h + block.skip_conv(x)
    if isinstance(block, SegHead):
        return block.to_logits(block.act(block.norm(x)))
    return block.act(block.norm(x))


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("kind", ["pre-activation", "input", "head", "norm-act"])
def test_forward_is_the_composition_of_the_named_layers(kind: str, forced: bool) -> None:
    torch.manual_seed(0)
    block, channels = {
        "pre-activation": (PreActResBlock(4, 6, stride=2), 4),
        "input": (InputResBlock(1, 4), 1),
        "head": (SegHead(4, 2), 4),
        "norm-act": (NormAct(3), 3),
    }[kind]
    with torch.no_grad():  # PReLUs away from their initial value, so that a swapped one would show
        for i, p in enumerate(q for q in block.parameters() if q.numel() == 1):
            p.fill_(0.1 + 0.2 * i)
    x = torch.randn(2, channels, 6, 5, 4)
    with use_reference_kernels(forced):
        got = block.eval()(x)
    torch.testing.assert_close(got, _composed(block, x), rtol=1e-5, atol=1e-5)
