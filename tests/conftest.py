"""Shared test helpers: deterministic seeds, small thread count, and the reference fixtures' folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# one share of the cores per pytest-xdist worker: two workers with two threads each on two cores made
# the OpenMP threads wait on each other (a 1-second test took 40 s in the parallel suite)
# (H2ASEG_TEST_THREADS=1 for a single-process run on a machine that is busy with something else)
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = os.environ.get("H2ASEG_TEST_THREADS")
torch.set_num_threads(int(_threads) if _threads else max(1, min(2, (os.cpu_count() or 1) // _workers)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference_dir() -> Path | None:
    """``shared/reference`` beside the checkout (CI lays it there), or ``$H2ASEG_REFERENCE_DIR``."""
    env = os.environ.get("H2ASEG_REFERENCE_DIR")
    candidates = [Path(env)] if env else []
    root = Path(__file__).resolve().parents[1]
    candidates += [root.parent / "shared" / "reference", root / "shared" / "reference"]
    for c in candidates:
        if (c / "official_forward_small.pt").is_file():
            return c
    return None


@pytest.fixture
def reference() -> Path:
    ref = reference_dir()
    if ref is None:
        if os.environ.get("CI"):
            pytest.fail("shared/reference/official_forward_small.pt not found beside the checkout in CI")
        pytest.skip("shared/reference fixtures not available (set H2ASEG_REFERENCE_DIR)")
    return ref
