"""The CUDA check's precision handling, checked on the CPU: "fp32" means autocast off (a bare
``torch.autocast`` falls back to the device's default low-precision type, which once mislabelled fp16
training rows as fp32), and the tune section's "% of peak" is left out on a device whose peak it does not
know."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch


@pytest.fixture(scope="module")
def check(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("cuda_check")


@pytest.mark.parametrize(("prec", "enabled"), [("fp32", False), ("bf16", True)])
def test_autocast_is_off_for_fp32(check: ModuleType, prec: str, enabled: bool) -> None:
    with check._autocast(torch.device("cpu"), prec):
        assert torch.is_autocast_enabled("cpu") is enabled


def test_fp32_training_step_computes_in_float32(check: ModuleType) -> None:
    seen: list[torch.dtype] = []

    class Probe(torch.nn.Module):
        out_channels = 1

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 1, 1)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            y = self.conv(x)
            seen.append(y.dtype)
            return [y]

    x = torch.randn(1, 2, 4, 4, 4)
    y = (torch.rand(1, 1, 4, 4, 4) > 0.5).long()
    check.TrainStep(Probe(), "fp32", x, y)()
    check.TrainStep(Probe(), "bf16", x, y)()
    assert seen == [torch.float32, torch.bfloat16]


def test_tune_leaves_out_the_share_of_peak_on_an_unknown_device(check: ModuleType) -> None:
    rep = check.Report()
    check.TUNE_SETTINGS = {"plain": {}}  # the module is this test file's own copy
    check.section_tune(rep, torch.device("cpu"), quick=True)
    rows = [line for line in rep.lines if line.startswith("| paper") or line.startswith("| released")]
    assert len(rows) == 8  # 2 variants x eval/train x fp32/bf16
    assert all(line.split("|")[7].strip() == "-" for line in rows)
    assert "no known peak for CPU" in "\n".join(rep.lines)
