"""The kernel choice (h2aseg.models.kernels): the reference path can be forced by function, context
manager or environment variable, and the whole network gives the same outputs on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import h2aseg.models.kernels as kernels
from h2aseg.models import build_network


def test_switch_sets_and_restores() -> None:
    assert not kernels.reference_kernels()
    assert kernels.set_reference_kernels(True) is False
    try:
        assert kernels.reference_kernels()
        with kernels.use_reference_kernels(False):
            assert not kernels.reference_kernels()
        assert kernels.reference_kernels()
    finally:
        kernels.set_reference_kernels(False)
    with pytest.raises(RuntimeError), kernels.use_reference_kernels():
        raise RuntimeError
    assert not kernels.reference_kernels()


def test_environment_variable_is_read_at_import() -> None:
    """Unset (every other test), the fast paths run; ``H2ASEG_REFERENCE_KERNELS=1`` forces the reference."""
    env = {**os.environ, kernels.REFERENCE_ENV: "1"}
    code = "import h2aseg.models.kernels as k; print(k.reference_kernels())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_paper_variant_training_step_is_the_same_on_both_paths() -> None:
    """Outputs and parameter gradients of a CPU training step (fused norm node, recomputing attention,
    factored TAMW) equal those of the reference path."""
    torch.manual_seed(0)
    net = build_network("h2aseg", variant="paper", channels=(2, 2, 4, 4, 4), window_size=(4, 4, 2)).train()
    x = torch.randn(1, 2, 32, 16, 16)
    results = []
    for forced in (False, True):
        net.zero_grad(set_to_none=True)
        with kernels.use_reference_kernels(forced):
            outs = net(x)
            sum(o.square().mean() for o in outs).backward()
        results.append([o.detach() for o in outs] + [p.grad for p in net.parameters()])
    for fast, ref in zip(*results, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
