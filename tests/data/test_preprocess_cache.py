"""The preprocessed-case cache: hits, invalidation on settings and inputs, atomic and corrupt entries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import h2aseg.data.preprocess as pre
from h2aseg.config import DataConfig
from h2aseg.data.preprocess import CaseCache
from h2aseg.synth import write_cohort


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cache") / "data"
    return write_cohort(root, 1, "autopet", seed=2, shape=(20, 20, 24))[0]


@pytest.fixture()
def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = pre.preprocess_case

    def spy(c, cfg):
        calls.append(c.case_id)
        return real(c, cfg)

    monkeypatch.setattr(pre, "preprocess_case", spy)
    return calls


def test_cache_hit_returns_identical_arrays(case, counting, tmp_path: Path) -> None:
    cfg = DataConfig()
    cache = CaseCache(tmp_path / "cache", cfg)
    first = cache.get(case)
    second = CaseCache(tmp_path / "cache", cfg).get(case)
    assert counting == [case.case_id]  # decoded once
    assert np.array_equal(first.image, second.image) and np.array_equal(first.suv, second.suv)
    assert np.array_equal(first.label, second.label) and second.case_id == case.case_id
    assert np.allclose(first.geometry.ct_affine, second.geometry.ct_affine)
    assert first.geometry.ct_shape == second.geometry.ct_shape
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary files left behind
    assert not any(p.name.endswith(".npz") for p in case.ct.parent.iterdir())  # nothing next to the inputs


def test_changed_setting_never_reads_stale_entry(case, counting, tmp_path: Path) -> None:
    a = CaseCache(tmp_path, DataConfig()).get(case)
    b = CaseCache(tmp_path, DataConfig(ct_window=(-200.0, 300.0))).get(case)
    c = CaseCache(tmp_path, DataConfig(pet_window=(0.0, 10.0))).get(case)
    d = CaseCache(tmp_path, DataConfig(target_spacing=(8.0, 8.0, 10.0))).get(case)
    assert len(counting) == 4 and len(list(tmp_path.iterdir())) == 4
    assert not np.array_equal(a.image[0], b.image[0]) and not np.array_equal(a.image[1], c.image[1])
    assert d.image.shape[1:] == (10, 10, 12)
    CaseCache(tmp_path, DataConfig(ct_window=(-200.0, 300.0))).get(case)  # back to a cached setting: a hit
    assert len(counting) == 4
    # settings that do not change the arrays share the entry
    CaseCache(tmp_path, DataConfig(patch_size=(8, 8, 8), rotate_prob=0.0)).get(case)
    assert len(counting) == 4


def test_changed_input_file_invalidates(case, counting, tmp_path: Path) -> None:
    cache = CaseCache(tmp_path, DataConfig())
    cache.get(case)
    st = case.pet.stat()
    os.utime(case.pet, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        cache.get(case)
    finally:
        os.utime(case.pet, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(counting) == 2


def test_corrupt_entry_is_recomputed(case, counting, tmp_path: Path) -> None:
    cache = CaseCache(tmp_path, DataConfig())
    good = cache.get(case)
    cache.path(case).write_bytes(b"truncated")
    again = cache.get(case)
    assert len(counting) == 2 and np.array_equal(good.image, again.image)
    assert CaseCache(tmp_path, DataConfig()).get(case).image.shape == good.image.shape
    assert len(counting) == 2


def test_memory_cache(case, counting, tmp_path: Path) -> None:
    cache = CaseCache(tmp_path, DataConfig(), memory_bytes=None)
    assert cache.get(case) is cache.get(case)
    assert len(counting) == 1


@pytest.fixture(scope="module")
def three_cases(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lru") / "data"
    return write_cohort(root, 3, "autopet", seed=3, shape=(20, 20, 24))


def test_memory_cache_drops_the_least_recently_used_case_beyond_its_budget(three_cases, tmp_path) -> None:
    a, b, c = three_cases
    size = pre.case_nbytes(CaseCache(tmp_path, DataConfig()).get(a))  # fills the disk cache too
    assert size > 0
    cache = CaseCache(tmp_path, DataConfig(), memory_bytes=2 * size)
    pa, pb = cache.get(a), cache.get(b)
    assert cache.memory_used == 2 * size
    assert cache.get(a) is pa  # a is now the most recently used
    pc = cache.get(c)  # no room for three: b goes
    assert cache.memory_used == 2 * size
    assert cache.get(a) is pa and cache.get(c) is pc
    again = cache.get(b)  # read from disk again: equal arrays, another object
    assert again is not pb and np.array_equal(again.image, pb.image)
    assert cache.memory_used <= 2 * size


def test_memory_cache_off_and_too_small(three_cases, tmp_path) -> None:
    a = three_cases[0]
    off = CaseCache(tmp_path, DataConfig())
    assert off.get(a) is not off.get(a) and off.memory_used == 0
    tiny = CaseCache(tmp_path, DataConfig(), memory_bytes=10)  # a case larger than the budget is not kept
    assert tiny.get(a) is not tiny.get(a) and tiny.memory_used == 0
    with pytest.raises(ValueError, match="memory_bytes"):
        CaseCache(tmp_path, DataConfig(), memory_bytes=-1)
