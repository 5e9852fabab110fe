"""Fixtures of the experiment tests: the tiny synthetic cohort, written once."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiment_fixtures import write_tiny_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))
