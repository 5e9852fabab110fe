"""Shared phantom studies (synthesised once per session) and a tissue-mask helper."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from h2aseg.synth import synth_case

SMALL = (48, 48, 64)


def _tissue(res: dict, name: str) -> np.ndarray:
    return res["tissue"] == res["meta"]["tissues"].index(name)


@pytest.fixture(scope="session")
def tissue_of() -> Callable[[dict, str], np.ndarray]:
    """``tissue_of(study, name)``: the boolean mask of tissue ``name`` on the study's CT grid."""
    return _tissue


@pytest.fixture(scope="session")
def wb_free() -> dict:
    return synth_case("wholebody", seed=11, shape=SMALL, spacing=(8.0, 8.0, 10.0), lesion_free=True)


@pytest.fixture(scope="session")
def wb_les() -> dict:
    return synth_case(
        "wholebody", seed=12, shape=(64, 64, 80), spacing=(6.0, 6.0, 8.0), n_lesions=6, lesion_free=False
    )
