"""The cost probe: on a CPU it measures in a fresh process, so earlier work in this one does not hide the
network's memory."""

from __future__ import annotations

import torch
from experiment_fixtures import SCHEDULE

from h2aseg.config import load_config
from h2aseg.experiments.cost import measure_cost


def test_cpu_probe_runs_in_a_fresh_process_and_sees_the_memory() -> None:
    cfg = load_config("synthetic", SCHEDULE)
    fresh = measure_cost(cfg)
    assert fresh["memory_kind"].endswith("in a fresh process") and fresh["peak_memory_mib"] > 0
    assert fresh["params"] > 0 and fresh["gflop"] > 0 and fresh["train_step_s"] > 0
    assert fresh["device"].endswith(f"{torch.get_num_threads()} threads)")
    here = measure_cost(cfg, fresh_process=False)
    assert "fresh" not in here["memory_kind"] and here["params"] == fresh["params"]
    assert here["gflop"] == fresh["gflop"]


def _probe_nothing() -> float:
    from h2aseg.experiments.cost import MemoryProbe

    probe = MemoryProbe(torch.device("cpu"))
    probe.start()
    return probe.stop()


def test_spawned_probe_does_not_count_the_parents_memory() -> None:
    """getrusage's max RSS of a spawned process starts at its forked parent's RSS; the probe must not
    report that as the network's memory."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB resident in this (the parent) process
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        rise = pool.submit(_probe_nothing).result()
    assert ballast.sum() > 0
    assert rise < 50, f"{rise:.0f} MiB for a probe that allocated nothing"
