"""The released variant loads the authors' state_dict unchanged and reproduces their outputs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from h2aseg.models import build_network


def test_reproduces_released_outputs(reference: Path) -> None:
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
    with torch.no_grad():
        outs = net(fx["ct"], fx["pet"], return_all=True)
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
