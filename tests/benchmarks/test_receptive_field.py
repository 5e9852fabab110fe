"""benchmarks/receptive_field.py: the extent of a gradient, and instance norm with detached statistics
(the same forward; a backward that no longer spreads through the mean and variance)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn as nn


@pytest.fixture
def rf(load_script: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("H2ASEG_REFERENCE_KERNELS", "1")  # the script sets it; restored after the test
    return load_script("receptive_field")


def test_extent_of_a_box(rf: ModuleType) -> None:
    g = np.zeros((20, 20, 20))
    g[9:12, 8:13, 10:12] = 1.0
    g[0, 0, 0] = 0.0
    ext, share, mass = rf.extent(g)
    assert ext == [3, 5, 2] and share == pytest.approx(30 / 8000) and mass == pytest.approx(1.0)
    g[0, 0, 0] = 30.0  # as much mass far from the centre as near it
    ext, _, mass = rf.extent(g)
    assert ext == [12, 13, 12] and mass == pytest.approx(0.5)


def _centre_grad(model: nn.Module) -> torch.Tensor:
    x = torch.rand(1, 1, 7, 7, 7, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, 3, 3, 3].backward()
    assert x.grad is not None
    return x.grad[0, 0]


def test_detached_statistics_keep_the_forward_and_localise_the_gradient(rf: ModuleType) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 1, 1, bias=False), nn.InstanceNorm3d(1)).double()
    x = torch.rand(1, 1, 7, 7, 7, dtype=torch.float64)
    before = model(x)
    live = _centre_grad(model)
    assert int((live != 0).sum()) == 7**3  # the statistics tie every voxel to the centre
    rf.detach_norm_statistics(model)
    torch.testing.assert_close(model(x), before)
    detached = _centre_grad(model)
    assert int((detached != 0).sum()) == 1 and detached[3, 3, 3] != 0  # a 1x1x1 conv sees one voxel
