"""How much of the preprocessed cohort a training process keeps in memory (``data.memory_cache_gb``)."""

from __future__ import annotations

import pytest

import h2aseg.training.run as run_mod
from h2aseg.config import Config, ConfigError
from h2aseg.training.run import memory_cache_bytes


def test_a_set_budget_is_per_process() -> None:
    assert memory_cache_bytes(1.5, num_workers=4, local_ranks=8) == int(1.5 * 2**30)
    assert memory_cache_bytes(0.0, num_workers=0) == 0


def test_auto_budget_shares_a_quarter_of_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_mod, "physical_memory_bytes", lambda: 64 * 2**30)
    assert memory_cache_bytes(None, num_workers=0) == 16 * 2**30
    assert memory_cache_bytes(None, num_workers=1) == 8 * 2**30  # the process and its worker
    assert memory_cache_bytes(None, num_workers=3, local_ranks=2) == 2 * 2**30
    monkeypatch.setattr(run_mod, "physical_memory_bytes", lambda: None)
    assert memory_cache_bytes(None, num_workers=0) == 0  # unknown machine: the disk cache only


def test_the_setting_is_checked() -> None:
    cfg = Config().override(["data.memory_cache_gb=2.5"])
    assert cfg.data.memory_cache_gb == 2.5
    with pytest.raises(ConfigError, match="memory_cache_gb"):
        Config().override(["data.memory_cache_gb=-1"])


def test_the_budget_does_not_change_a_runs_identity() -> None:
    """A finished run stays done when the machine's memory or loader settings change."""
    from h2aseg.experiments.plan import fingerprint
    from h2aseg.experiments.spec import MethodSpec

    method = MethodSpec(label="h2aseg", network="h2aseg", title="H2ASeg")
    here = Config()
    there = Config().override(["data.memory_cache_gb=1", "data.num_workers=3"])
    assert fingerprint(here, method) == fingerprint(there, method)
    assert fingerprint(here, method) != fingerprint(Config().override(["train.epochs=7"]), method)
