"""The training step adds a network's own loss term (``auxiliary_loss()``, e.g. SDB's similarity loss)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from training_fixtures import tiny_config, write_tiny_cohort

from h2aseg.models.registry import list_networks, register_network
from h2aseg.training.loop import auxiliary_loss
from h2aseg.training.trainer import train

NAME = "test-aux-net"


class _AuxNet(nn.Module):
    """A 1x1x1 conv, plus a parameter that only ``auxiliary_loss`` sees (pulled towards 3)."""

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, out_channels, 1)
        self.p = nn.Parameter(torch.zeros(4))
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += int(self.training)
        return self.conv(x)

    def auxiliary_loss(self) -> torch.Tensor | None:
        return ((self.p - 3.0) ** 2).sum() if self.training and self.forwards else None


if NAME not in list_networks():
    register_network(NAME)(_AuxNet)


def test_auxiliary_loss_is_none_for_networks_without_one() -> None:
    assert auxiliary_loss(nn.Conv3d(2, 1, 1)) is None
    net = _AuxNet()
    assert auxiliary_loss(net) is None  # before any training forward
    net(torch.zeros(1, 2, 2, 2, 2))
    assert float(auxiliary_loss(net)) == 36.0


def test_training_adds_the_network_term_to_the_loss(tmp_path: Path) -> None:
    root = write_tiny_cohort(tmp_path / "cohort")
    cfg = tiny_config(root, epochs=1, extra=(f"model.name={NAME}", "train.lr=0.05", "train.grad_clip=null"))
    res = train(cfg, tmp_path / "run", progress=False)
    p = res.model.p.detach() if res.model is not None else None
    assert p is not None and bool((p > 0.05).all())  # moved towards 3 only through auxiliary_loss
    assert res.history[-1]["train_loss"] > 30.0  # the logged loss includes the term (about 36 at start)
