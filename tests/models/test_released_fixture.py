"""The released variant loads the authors' state_dict unchanged and reproduces their outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import h2aseg.models.kernels as kernels
from h2aseg.models import build_network


@pytest.mark.parametrize("reference_kernels", [False, True], ids=["fast", "reference-kernels"])
def test_reproduces_released_outputs(reference: Path, reference_kernels: bool) -> None:
    fx = torch.load(reference / "official_forward_small.pt", weights_only=True)
    cfg = fx["config"]
    net = build_network(
        "h2aseg",
        variant="released",
        channels=tuple(cfg["num_channels"]),
        window_size=tuple(cfg["window_size"]),
        out_channels=cfg["n_classes"],
    )
    net.load_state_dict(fx["state_dict"], strict=True)
    net.eval()
    previous = kernels.set_reference_kernels(reference_kernels)
    try:
        with torch.no_grad():
            outs = net(fx["ct"], fx["pet"], return_all=True)
    finally:
        kernels.set_reference_kernels(previous)
    assert len(outs) == len(fx["outputs"]) == 5
    for ours, theirs in zip(outs, fx["outputs"], strict=True):
        rel = (ours - theirs).abs().max() / theirs.abs().max()
        assert rel < 1e-5, f"relative error {rel:.2e}"


def test_state_dict_keys_and_shapes_match_release(reference: Path) -> None:
    lines = (reference / "official_state_dict_keys.txt").read_text().splitlines()
    expected = {}
    for line in lines:
        m = re.match(r"^(\S+) \(([\d, ]*)\)$", line)
        if m:
            expected[m.group(1)] = tuple(int(v) for v in m.group(2).split(",") if v.strip())
    n_params = int(re.search(r"parameters: (\d+)", lines[0]).group(1))
    net = build_network("h2aseg", variant="released")
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == expected
    assert sum(p.numel() for p in net.parameters()) == n_params
