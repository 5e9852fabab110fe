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
