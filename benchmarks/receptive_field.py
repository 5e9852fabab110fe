"""Diagnostic: how far does each network of Table 2 already see? (receptive field inside one patch)

MCSA's case in the paper is context: attention between windows reaches voxels that a stack of 3x3x3
convolutions cannot. This script measures, for the four Table 2 configurations of a preset, which input
voxels can change the prediction at the centre of a training patch: the gradient of the finest logit at the
centre voxel with respect to the CT and PET inputs (weights at initialisation, eval mode, float64, so that
every path a weight could open is open). Instance normalisation makes every voxel depend on every other
through its mean and variance (a global but content-blind dependence); by default its statistics are treated
as constants (``--norm-stats detached``), so that what remains is the reach of the convolutions, the
attention and TAMW's pooling; ``--norm-stats live`` keeps them. It prints, per configuration and modality,
the extent of the non-zero gradient along each axis (voxels, and as a fraction of the patch) and the share
of the patch's voxels it covers, and the share of the gradient's mass within 8 voxels of the centre (how
local the dependence is at initialisation).

Read it as: where the convolutional baseline already covers the whole patch, MCSA adds no reach inside a
patch, only a different (content-dependent, cross-modal) way of mixing what the convolutions already see.

Usage::

    python benchmarks/receptive_field.py [--preset synthetic] [--patch 64 64 32]
"""

from __future__ import annotations

import argparse
import os

os.environ["H2ASEG_REFERENCE_KERNELS"] = "1"  # module by module, so that the norms below are the ones run

import numpy as np
import torch
import torch.nn as nn

from h2aseg.config import load_config
from h2aseg.models.factory import build_from_config

CONFIGS = {
    "dual-branch ResUNet-3D": ("model.use_mcsa=false", "model.use_tamw=false"),
    "+ MCSA": ("model.use_mcsa=true", "model.use_tamw=false"),
    "+ TAMW": ("model.use_mcsa=false", "model.use_tamw=true"),
    "H2ASeg": ("model.use_mcsa=true", "model.use_tamw=true"),
}


def detach_norm_statistics(model: nn.Module) -> None:
    """Every InstanceNorm3d normalises with its statistics treated as constants (no gradient through
    them): the same forward, a backward that follows only the voxel's own path."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        mean = x.mean(dims, keepdim=True).detach()
        var = x.var(dims, keepdim=True, unbiased=False).detach()
        return (x - mean) / torch.sqrt(var + 1e-5)

    for m in model.modules():
        if isinstance(m, nn.InstanceNorm3d):
            m.forward = forward  # type: ignore[method-assign]


def centre_gradient(model: torch.nn.Module, patch: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """|d logit(centre) / d input| for CT and PET, each ``patch``-shaped."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, *patch, dtype=torch.float64, requires_grad=True)
    out = model(x)
    logits = out[0] if isinstance(out, list) else out
    cx, cy, cz = (s // 2 for s in patch)
    logits[0, -1, cx, cy, cz].backward()
    assert x.grad is not None
    g = x.grad[0].abs().numpy()
    return g[0], g[1]


def extent(g: np.ndarray) -> tuple[list[int], float, float]:
    """Per-axis extent of the non-zero gradient, the covered share of voxels, the mass within 8 voxels."""
    nz = g > 0
    ext = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(nz.any(axis=other))
        ext.append(int(idx[-1] - idx[0] + 1) if idx.size else 0)
    centre = np.array([s // 2 for s in g.shape])
    grid = np.indices(g.shape).reshape(3, -1).T
    near = (np.abs(grid - centre).max(axis=1) <= 8).reshape(g.shape)
    mass = float(g[near].sum() / g.sum()) if g.sum() > 0 else 0.0
    return ext, float(nz.mean()), mass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="synthetic")
    ap.add_argument("--patch", type=int, nargs=3, default=None, help="default: the preset's patch_size")
    ap.add_argument("--norm-stats", choices=("detached", "live"), default="detached")
    args = ap.parse_args()
    base = load_config(args.preset)
    patch = tuple(args.patch or base.data.patch_size)
    print(
        f"preset {args.preset}, patch {patch}, weights at initialisation, eval mode, float64, "
        f"instance-norm statistics {args.norm_stats}"
    )
    print("| configuration | input | non-zero extent x, y, z (voxels) | share of patch | mass within 8 vx |")
    print("|---|---|---|---|---|")
    for name, sets in CONFIGS.items():
        cfg = load_config(args.preset, list(sets))
        torch.manual_seed(0)
        model = build_from_config(cfg.model, patch).double().eval()
        if args.norm_stats == "detached":
            detach_norm_statistics(model)
        for mod, g in zip(("CT", "PET"), centre_gradient(model, patch), strict=True):
            ext, share, mass = extent(g)
            frac = ", ".join(f"{e} ({e / s:.0%})" for e, s in zip(ext, patch, strict=True))
            print(f"| {name} | {mod} | {frac} | {share:.1%} | {mass:.1%} |")


if __name__ == "__main__":
    main()
