"""Case sampling: fixed per (seed, epoch), split across ranks, optionally weighted to lesion studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_fixtures import tiny_config, write_tiny_cohort

from h2aseg.config import ConfigError
from h2aseg.data.layouts import discover
from h2aseg.data.preprocess import CaseCache
from h2aseg.training.sampling import EpochSampler, PatchDataset, lesion_case_weights
from h2aseg.training.trainer import train


def test_epoch_sampler_ranks_draw_distinct_cases() -> None:
    a = EpochSampler(10, seed=1, rank=0, world=2)
    b = EpochSampler(10, seed=1, rank=1, world=2)
    ia, ib = list(a), list(b)
    assert len(ia) == len(ib) == 5 and not set(ia) & set(ib) and set(ia) | set(ib) == set(range(10))
    a.set_epoch(1)
    assert list(a) != ia  # a new order every epoch
    a.set_epoch(0)
    assert list(a) == ia  # and the same order again for the same epoch (resume)


def test_weighted_draws_follow_the_lesion_case_fraction_and_repeat_per_epoch() -> None:
    has_lesion = [True, True, False, False, False, False, False, False]
    w = lesion_case_weights(has_lesion, 0.75)
    assert w is not None and sum(w) == pytest.approx(1.0)
    s = EpochSampler(8, seed=3, num_samples=4000, weights=w)
    s.set_epoch(2)
    draws = list(s)
    share = np.mean([has_lesion[i] for i in draws])
    assert abs(share - 0.75) < 0.03  # uniform sampling would give 0.25
    assert set(draws) == set(range(8))  # lesion-free studies are still drawn
    assert list(s) == draws  # same epoch, same draws (resume)
    s.set_epoch(3)
    assert list(s) != draws


def test_lesion_case_weights_edge_cases() -> None:
    assert lesion_case_weights([True, True], 0.5) is None  # nothing to re-balance
    assert lesion_case_weights([False, False], 0.5) is None
    assert lesion_case_weights([True, False], 1.0) == [1.0, 0.0]
    with pytest.raises(ValueError, match="lesion_case_fraction"):
        lesion_case_weights([True, False], 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        EpochSampler(3, seed=0, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="3 non-negative"):
        EpochSampler(3, seed=0, weights=[1.0, 1.0])


def test_training_draws_only_lesion_studies_at_fraction_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tiny_cohort(tmp_path / "cohort")
    cfg = tiny_config(root, epochs=2, extra=("data.lesion_case_fraction=1.0", "train.steps_per_epoch=3"))
    drawn: list[str] = []
    getitem = PatchDataset.__getitem__

    def record(self: PatchDataset, i: int) -> list[dict]:
        drawn.append(self.cases[i].case_id)
        return getitem(self, i)

    monkeypatch.setattr(PatchDataset, "__getitem__", record)
    res = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(res.history[-1]["train_loss"])
    cache = CaseCache(tmp_path / "run" / "cache", cfg.data)
    train_ids = set(json.loads((tmp_path / "run" / "split.json").read_text())["train"])
    cases = [c for c in discover(root, "auto") if c.case_id in train_ids]
    lesion = {c.case_id for c in cases if np.any(cache.get(c).label)}
    assert lesion and len(lesion) < len(cases)  # the fixture has both kinds in its training split
    assert len(drawn) == 2 * 3 * cfg.train.batch_size and set(drawn) <= lesion


def test_lesion_case_fraction_needs_steps_per_epoch(tmp_path: Path) -> None:
    root = write_tiny_cohort(tmp_path / "cohort")
    cfg = tiny_config(root, epochs=1, extra=("data.lesion_case_fraction=0.5", "train.steps_per_epoch=null"))
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        train(cfg, tmp_path / "run", progress=False)
