"""What a network costs: parameters, forward GFLOP, train-step time and peak memory, prediction time.

:func:`measure_cost` builds the method's network from its config and measures, on the training device:

* **parameters**;
* **forward GFLOP** of one eval forward at the schedule's patch, batch 1, as counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2);
* **train-step time**: forward, eq. (5) loss, backward and optimizer step on random data at the
  schedule's batch (``train.batch_size`` x ``data.crops_per_case`` patches) and precision
  (``train.amp``); the second of two steps (the first warms up allocators and the optimizer state);
* **peak memory** of those steps over what was allocated before the network was built: on CUDA
  ``torch.cuda.max_memory_allocated``; on a CPU the rise of the process's peak RSS (``VmHWM``), with
  the peak first reset through ``/proc/self/clear_refs`` where Linux allows it (otherwise the rise of
  ``resource.getrusage``'s max RSS, a lower bound, and the figure says so). On a CPU the probe runs in a
  freshly spawned process: in a process that has already trained or probed another network, the allocator
  reuses pages it kept, the RSS does not rise, and the figure would be too low (down to 0).

The whole-case prediction time comes from the runs' predict step (``timing.json``), not from here.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from h2aseg.config import Config


class MemoryProbe:
    """Peak memory over a block, on CUDA (allocated) or a CPU (max RSS); :meth:`stop` returns MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ""
        self.base = 0.0
        self.peak: Callable[[], float | None] = _max_rss_mib  # the CPU reading stop() compares with base

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            self.kind = "CUDA max_memory_allocated, over what was allocated before"
            return
        peak = _peak_rss_mib() if _reset_peak_rss() else None  # right after the reset: the current RSS
        if peak is not None:
            self.base, self.peak = peak, _peak_rss_mib
            self.kind = "CPU: rise of the process's peak RSS (VmHWM, reset via /proc/self/clear_refs)"
        else:
            self.base, self.peak = _max_rss_mib(), _max_rss_mib
            self.kind = "CPU: rise of the process's max RSS (getrusage; a lower bound: peak not reset)"

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        return max(0.0, (self.peak() or 0.0) - self.base)


def _peak_rss_mib() -> float | None:
    """The process's peak RSS since the last reset (``VmHWM`` of ``/proc/self/status``, MiB); None where
    there is none. Not ``getrusage``: its ``ru_maxrss`` keeps the peak of the process image replaced by
    ``exec``, so in a spawned process it starts at the RSS of the (forked copy of the) parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def forward_gflop(
    model: torch.nn.Module, patch: tuple[int, ...], device: torch.device, channels: int = 2
) -> float:
    """GFLOP of one eval forward of a ``(1, channels, *patch)`` input (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.zeros(1, channels, *patch, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def train_step_seconds(model: torch.nn.Module, cfg: Config, device: torch.device) -> float:
    """Seconds of the second of two training steps on random data at the config's batch and patch."""
    from h2aseg.hardware import autocast_context
    from h2aseg.models.factory import resolved_out_channels
    from h2aseg.training.losses import DeepSupervisedDiceCE

    t = cfg.train
    n = t.batch_size * cfg.data.crops_per_case
    patch = tuple(int(v) for v in cfg.data.patch_size)
    x = torch.randn(n, cfg.data.input_channels(), *patch, device=device)
    y = (torch.rand(n, 1, *patch, device=device) > 0.98).long()
    loss_fn = DeepSupervisedDiceCE(resolved_out_channels(cfg.model))
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    model.train()
    seconds = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast_context(t.amp, device, "train.amp"):
            outs = model(x)
        if not t.deep_supervision and isinstance(outs, list):
            outs = outs[0]
        loss_fn(outs, y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    return seconds


def measure_cost(cfg: Config, *, fresh_process: bool | None = None) -> dict[str, Any]:
    """Parameters, forward GFLOP, train-step seconds and peak memory of ``cfg.model`` (see the module);
    ``fresh_process`` (default: on a CPU) measures in a spawned process with this one's thread count."""
    from h2aseg.hardware import resolve_device

    device = resolve_device(cfg.train.device, "train.device")
    if fresh_process is None:
        fresh_process = device.type == "cpu"
    if not fresh_process:
        return _measure(cfg, device)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure_in_child, cfg, torch.get_num_threads()).result()


def _measure_in_child(cfg: Config, threads: int) -> dict[str, Any]:
    from h2aseg.hardware import resolve_device

    torch.set_num_threads(threads)
    result = _measure(cfg, resolve_device(cfg.train.device, "train.device"))
    result["memory_kind"] += "; in a fresh process"
    return result


def _measure(cfg: Config, device: torch.device) -> dict[str, Any]:
    from h2aseg.models.factory import build_from_config

    probe = MemoryProbe(device)
    probe.start()
    torch.manual_seed(0)
    model = build_from_config(cfg.model, layout=cfg.data.input_layout()).to(device)
    patch = tuple(int(v) for v in cfg.data.patch_size)
    params = sum(p.numel() for p in model.parameters())
    gflop = forward_gflop(model, patch, device, cfg.data.input_channels())
    step_s = train_step_seconds(model, cfg, device)
    peak = probe.stop()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "network": cfg.model.name,
        "params": params,
        "gflop": gflop,
        "patch": list(patch),
        "train_batch": cfg.train.batch_size * cfg.data.crops_per_case,
        "amp": cfg.train.amp,
        "train_step_s": step_s,
        "peak_memory_mib": peak,
        "memory_kind": probe.kind,
        "device": _device_name(device),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
