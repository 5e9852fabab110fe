"""What the experiment tests share: the training tests' tiny cohort and settings, and a spec writer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

_TRAINING_TESTS = str(Path(__file__).resolve().parents[1] / "training")
if _TRAINING_TESTS not in sys.path:
    sys.path.insert(0, _TRAINING_TESTS)

from training_fixtures import TINY, write_tiny_cohort  # noqa: E402

__all__ = ["METHODS", "SCHEDULE", "spec_dict", "write_spec", "write_tiny_cohort"]

#: TINY, with 2 epochs of 1 step (so that a killed run can stop after epoch 1), no validation, and a split
#: whose test part holds a study with lesions (the tiny cohort has 3 patients).
SCHEDULE = [
    *TINY,
    "train.epochs=2",
    "train.steps_per_epoch=1",
    "train.val_every=0",
    "data.split_ratios=[0.5,0.0,0.5]",
]
#: The two training-free rows and two H2ASeg ablation configurations.
METHODS: list[dict[str, Any]] = [
    {"label": "suv_2.5", "network": "suv_2.5"},
    {"label": "suv_41pct", "network": "suv_41pct"},
    {"label": "full", "title": "H2ASeg", "network": "h2aseg", "ablation": {"mcsa": True, "tamw": True}},
    {"label": "base", "title": "Baseline", "network": "h2aseg", "ablation": {"mcsa": False, "tamw": False}},
]


def spec_dict(root: Path, **changes: Any) -> dict[str, Any]:
    """The tiny experiment: 4 methods, seeds 0 and 1 (6 runs); ``changes`` replace top-level fields."""
    doc: dict[str, Any] = {
        "name": "tiny",
        "dataset": {"name": "Tiny", "root": str(root), "layout": "auto", "preset": "synthetic"},
        "schedule": {"base": "cpu-small", "overrides": list(SCHEDULE)},
        "seeds": [0, 1],
        "methods": METHODS,
    }
    doc.update(changes)
    return doc


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
