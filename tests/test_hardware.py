"""h2aseg.hardware: bf16 detection (PyTorch's answer and the /proc/cpuinfo fallback), the float32 fallback of
bf16 autocast on CPUs without it, the device setting, and the allocator settings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from h2aseg import hardware


@pytest.fixture(autouse=True)
def _fresh_cache():
    hardware.cpu_has_bf16.cache_clear()
    hardware._warn_no_bf16.cache_clear()
    yield
    hardware.cpu_has_bf16.cache_clear()
    hardware._warn_no_bf16.cache_clear()


def test_cpuinfo_flags_are_parsed(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu amx_bf16\n"
    )
    assert {"avx2", "avx512_bf16", "amx_bf16", "fpu"} <= hardware._cpuinfo_flags(info)
    assert hardware._cpuinfo_flags(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("flags", "expected"), [({"avx2", "fma"}, False), ({"avx512_bf16"}, True), (None, False)]
)
def test_cpuinfo_fallback_when_torch_cannot_tell(monkeypatch, flags, expected) -> None:
    monkeypatch.setattr(hardware, "_torch_reports_bf16", lambda: None)
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda path=None: flags)
    assert hardware.cpu_has_bf16() is expected


def test_torch_answer_wins(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "_torch_reports_bf16", lambda: True)
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda path=None: set())
    assert hardware.cpu_has_bf16() is True


def test_torch_answer_is_a_bool_or_none() -> None:
    assert hardware._torch_reports_bf16() in (True, False, None)


def test_bf16_autocast_falls_back_to_float32_without_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4, 4)
    with (
        pytest.warns(RuntimeWarning, match="no native bf16"),
        hardware.autocast_context("bf16", torch.device("cpu")),
    ):
        y = conv(x)
    assert y.dtype == torch.float32
    with warnings.catch_warnings():  # warned once per process, not at every step
        warnings.simplefilter("error")
        with hardware.autocast_context("bf16", torch.device("cpu")):
            conv(x)


def test_bf16_autocast_is_used_where_native(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    with hardware.autocast_context("bf16", torch.device("cpu")):
        y = conv(torch.randn(1, 1, 4, 4, 4))
    assert y.dtype == torch.bfloat16


def test_tune_allocator_respects_opt_out(monkeypatch) -> None:
    monkeypatch.setenv(hardware.ALLOCATOR_ENV, "system")
    assert hardware.tune_allocator() is False


def test_tune_allocator_applies_on_glibc(monkeypatch) -> None:
    monkeypatch.delenv(hardware.ALLOCATOR_ENV, raising=False)
    applied = hardware.tune_allocator()
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied is True
    x = torch.ones(64, 1024, 1024)  # 256 MB: allocations keep working afterwards
    assert float(x.sum()) == 64 * 1024 * 1024


def test_usable_cpus_follow_the_affinity_mask(monkeypatch) -> None:
    import os

    from h2aseg.hardware import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert usable_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1
