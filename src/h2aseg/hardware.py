"""The device helpers: which device to run on, autocast for the ``amp`` settings, what the machine can do
fast, and the process settings that make CPU training faster.

:func:`resolve_device` turns a ``device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a
:class:`torch.device`; :func:`autocast_context` the ``amp`` setting (``auto``, ``bf16``, ``fp16``, ``off``)
into an autocast context. Training, inference, the experiments and the analyses all use them.

Two facts measured on a 2-core AMD EPYC (AVX2, no AVX-512; ``docs/training-notes.md``):

- **bf16 without hardware support is not a speed-up but a trap.** Where the CPU has no native bf16
  (AVX-512 BF16 or AMX), oneDNN runs bf16 3D convolutions through a reference path: one training step of the
  synthetic preset took more than 10 minutes instead of 11 s in float32. :func:`cpu_has_bf16` tells which
  kind of CPU this is; :func:`autocast_context` falls back to float32 (with a warning) when bf16 is asked
  for on a CPU without it.
- **glibc returns every large freed block to the kernel** (blocks over its ``mmap`` threshold, at most
  32 MB), so each training step page-faults its activations in anew; on virtual machines a page fault is
  expensive (half of a step's CPU time was system time). :func:`tune_allocator` keeps freed memory in the
  process: 15.5 -> 11.4 s per training step in that measurement.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import warnings
from pathlib import Path

import torch

from h2aseg.config import ConfigError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
ALLOCATOR_ENV = "H2ASEG_MALLOC"  # "system" leaves the C allocator alone


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (Linux), or ``None`` where it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    return flags


def _torch_reports_bf16() -> bool | None:
    """PyTorch's own answer (a private operator; ``None`` where this build does not have it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one (a container's or a
    batch job's cpuset), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes (POSIX ``sysconf``), or ``None`` where it cannot be read."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return int(pages * page_size) if pages > 0 and page_size > 0 else None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (so that bf16 autocast speeds convolutions up)."""
    answer = _torch_reports_bf16()
    if answer is not None:
        return answer
    flags = _cpuinfo_flags()
    return bool(flags and any(f in flags for f in BF16_CPU_FLAGS))


def tune_allocator() -> bool:
    """Keep freed memory inside the process (glibc only); returns whether the settings were applied.

    Turns off ``mmap`` for large blocks (``M_MMAP_MAX = 0``) and raises the heap trim threshold to 1 GiB, so
    that the same activation buffers are reused step after step instead of being unmapped and page-faulted
    again. Peak memory is unchanged; memory freed at the end of a step stays reserved for the next one.
    Skipped on other platforms and C libraries, and when the environment variable ``H2ASEG_MALLOC=system``
    is set.
    """
    if os.environ.get(ALLOCATOR_ENV, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    ok &= mallopt(_M_TOP_PAD, 64 << 20) == 1
    return bool(ok)


# ------------------------------------------------------------------------------------------- device, amp
def resolve_device(name: str = "auto", setting: str = "device") -> torch.device:
    """``"auto"``: CUDA when present, else CPU; otherwise the named device. An unknown or unavailable
    device is a :class:`~h2aseg.config.ConfigError` naming ``setting`` (the config field, e.g.
    ``train.device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{setting}: {name!r} is not a device (auto, cpu, cuda, cuda:N): {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}: device {name!r} requested but CUDA is not available on this machine")
    return dev


def autocast_context(
    amp: str, device: torch.device, setting: str = "amp"
) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in ``auto | bf16 | fp16 | off`` (``auto``: fp16 on CUDA, off on CPU).

    ``bf16`` on a CPU without native bf16 (no AVX-512 BF16 / AMX) runs in float32 with a warning: there
    oneDNN's bf16 convolutions are orders of magnitude slower than float32 (:func:`cpu_has_bf16`). A bad
    value is a :class:`~h2aseg.config.ConfigError` naming ``setting`` (the config field, e.g. ``infer.amp``).
    """
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"{setting} must be auto, bf16, fp16 or off, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError(f"{setting}=fp16: fp16 autocast is for CUDA; use {setting}=bf16 (or off) on CPU")
    if device.type == "cpu" and not cpu_has_bf16():
        _warn_no_bf16()
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@functools.cache
def _warn_no_bf16() -> None:
    warnings.warn(
        "amp=bf16 asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 convolutions "
        "are far slower than float32: running in float32 instead (set amp=off to silence this)",
        RuntimeWarning,
        stacklevel=3,
    )
