"""Paired per-study comparisons (``paired.md``) and scoring on the validation part (``evaluate_on``).

The statistics are checked against hand-computed values on written ``per_case.csv`` files; the runner is
checked on the tiny cohort: an experiment first scored on the test part only, then asked for the
validation part too, scores validation without retraining.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from experiment_fixtures import SCHEDULE, spec_dict, write_spec

from h2aseg.evaluation.report import write_per_case_csv
from h2aseg.experiments.paired import compare, estimate, paired_rows, write_paired
from h2aseg.experiments.plan import Layout, plan_runs
from h2aseg.experiments.runner import plan_lines, run_experiment
from h2aseg.experiments.spec import SpecError, load_spec

METHODS = [
    {"label": "suv_2.5", "network": "suv_2.5"},
    {"label": "base", "title": "Baseline", "network": "h2aseg", "ablation": {"mcsa": False, "tamw": False}},
    {"label": "full", "title": "H2ASeg", "network": "h2aseg", "ablation": {"mcsa": True, "tamw": True}},
]


def test_estimate_and_paired_difference_by_hand() -> None:
    method = {0: {"a": 0.5, "b": 0.7}, 1: {"a": 0.6, "b": 0.9}}
    ref = {0: {"a": 0.4, "b": 0.7}, 1: {"a": 0.5, "b": 0.6}}
    diff, seeds, better, worse, per_seed = compare(method, ref)
    # per study, seed means: a 0.55 vs 0.45, b 0.80 vs 0.65 -> differences 0.10, 0.15
    assert diff is not None and seeds == [0, 1] and (better, worse) == (2, 0)
    assert math.isclose(diff.mean, 0.125) and diff.n == 2
    assert diff.se is not None and math.isclose(diff.se, 0.025, rel_tol=1e-9)  # sd 0.0354 / sqrt(2)
    assert per_seed == pytest.approx([0.05, 0.20])
    one = estimate([30.0])
    assert one is not None and one.se is None and one.text() == "30.0"


def test_training_free_reference_pairs_with_every_seed() -> None:
    fixed = {None: {"a": 0.2, "b": 0.4}}
    method = {0: {"a": 0.3, "b": 0.3}, 3: {"a": 0.5, "b": 0.3}}
    diff, seeds, better, worse, per_seed = compare(method, fixed)
    assert diff is not None and seeds == [0, 3]
    assert diff.mean == pytest.approx(((0.4 - 0.2) + (0.3 - 0.4)) / 2) and (better, worse) == (1, 1)
    assert per_seed == pytest.approx([0.0, 0.1])


def _spec(tmp_path: Path, root: Path, **changes: object) -> Path:
    fields = {"methods": METHODS, "seeds": [0, 1], "evaluate_on": ["validation", "test"], **changes}
    return write_spec(tmp_path / "exp.yaml", spec_dict(root, **fields))


def _write_run(layout: Layout, run: object, part: str, dice: dict[str, float]) -> None:
    rows = [{"case_id": c, "has_lesion": 1.0, "dice": d} for c, d in dice.items()]
    rows.append({"case_id": "empty", "has_lesion": 0.0, "dice": float("nan")})
    out = layout.evaluation(run, part)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    write_per_case_csv(rows, out / "per_case.csv", ("case_id", "has_lesion", "dice"))
    layout.done(run).write_text("{}")  # type: ignore[arg-type]


def test_paired_tables_from_written_evaluations(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, tmp_path, reference="base"))
    layout = Layout(tmp_path / "out")
    values = {  # Dice in percent, as per_case.csv holds it
        ("suv_2.5", None): {"x": 10.0, "y": 20.0, "z": 30.0},
        ("base", 0): {"x": 50.0, "y": 50.0, "z": 50.0},
        ("base", 1): {"x": 70.0, "y": 50.0, "z": 30.0},
        ("full", 0): {"x": 60.0, "y": 40.0, "z": 80.0},  # seed 1 of "full" is not done
    }
    for run in plan_runs(spec):
        key = (run.method.label, run.seed)
        if key in values:
            for part in ("validation", "test"):
                _write_run(layout, run, part, values[key])
    rows = paired_rows(spec, layout, "validation")
    assert [r.label for r in rows] == ["base", "suv_2.5", "full"]
    base, suv, full = rows
    assert base.level is not None and base.level.mean == pytest.approx(50.0) and base.level.n == 3
    assert full.common_seeds == [0] and full.diff is not None  # only seed 0 pairs
    assert full.diff.mean == pytest.approx((10 - 10 + 30) / 3) and (full.better, full.worse) == (2, 1)
    assert suv.common_seeds == [0, 1] and suv.diff is not None
    assert suv.diff.mean == pytest.approx(((10 - 60) + (20 - 50) + (30 - 40)) / 3)
    paths = write_paired(spec, layout)
    text = (layout.out / "paired.md").read_text()
    assert [p.name for p in paths] == ["paired.md", "paired.json"]
    assert "## validation part (3 studies with lesions)" in text and "## test part" in text
    assert "| Baseline (reference) | 0, 1 | 50.0 ± 5.8 |" in text
    assert "| H2ASeg | 0 | 60.0 ± 11.5 | +10.0 ± 11.5 (seeds 0) | 2 / 1 | +10.0 |" in text
    doc = json.loads((layout.out / "paired.json").read_text())
    assert doc["reference"] == "base" and set(doc["parts"]) == {"validation", "test"}


def test_a_list_of_references_writes_a_table_against_each(tmp_path: Path) -> None:
    """``reference: [base, full]``: paired.md against ``base`` as before, and paired-vs-full.md with every
    other method paired against ``full`` over the seeds each shares with it."""
    spec = load_spec(_spec(tmp_path, tmp_path, reference=["base", "full"]))
    assert spec.reference == "base" and spec.also_against == ("full",)
    layout = Layout(tmp_path / "out")
    values = {
        ("base", 0): {"x": 50.0, "y": 50.0, "z": 50.0},
        ("base", 1): {"x": 70.0, "y": 50.0, "z": 30.0},
        ("full", 0): {"x": 60.0, "y": 40.0, "z": 80.0},
        ("full", 1): {"x": 60.0, "y": 60.0, "z": 60.0},
    }
    for run in plan_runs(spec):
        if (run.method.label, run.seed) in values:
            for part in ("validation", "test"):
                _write_run(layout, run, part, values[(run.method.label, run.seed)])
    paths = write_paired(spec, layout)
    assert [p.name for p in paths] == ["paired.md", "paired.json", "paired-vs-full.md", "paired-vs-full.json"]
    against_full = (layout.out / "paired-vs-full.md").read_text()
    assert "paired differences against H2ASeg" in against_full
    # base - full per study, seeds averaged: x (-10 + 10) / 2 = 0, y (10 - 10) / 2 = 0, z (-30 - 30) / 2 = -30
    assert (
        "| Baseline | 0, 1 | 50.0 ± 5.8 | -10.0 ± 10.0 (seeds 0, 1) | 0 / 1 | -10.0, -10.0 |" in against_full
    )
    assert "| H2ASeg (reference) | 0, 1 |" in against_full
    assert json.loads((layout.out / "paired-vs-full.json").read_text())["reference"] == "full"
    assert "| H2ASeg | 0, 1 |" in (layout.out / "paired.md").read_text()
    with pytest.raises(SpecError, match=r"reference: a label appears twice"):
        load_spec(_spec(tmp_path, tmp_path, reference=["base", "base"]))
    with pytest.raises(SpecError, match=r"reference: 'nope' is not a method label"):
        load_spec(_spec(tmp_path, tmp_path, reference=["base", "nope"]))


def test_spec_checks_evaluate_on_and_reference(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"reference: 'nope' is not a method label"):
        load_spec(_spec(tmp_path, tmp_path, reference="nope"))
    with pytest.raises(SpecError, match=r"evaluate_on: expected \[test\] or \[validation, test\]"):
        load_spec(_spec(tmp_path, tmp_path, evaluate_on=["validation"]))
    spec = load_spec(write_spec(tmp_path / "plain.yaml", spec_dict(tmp_path, methods=METHODS)))
    assert spec.evaluate_on == ("test",) and spec.reference is None


def test_validation_scored_later_without_retraining(cohort: Path, tmp_path: Path) -> None:
    """A run done on the test part only is scored on validation when the experiment asks for it."""
    schedule = {"base": "cpu-small", "overrides": [*SCHEDULE[:-1], "data.split_ratios=[0.34,0.33,0.33]"]}
    methods = METHODS[:2]
    first = write_spec(tmp_path / "a.yaml", spec_dict(cohort, methods=methods, seeds=[0], schedule=schedule))
    out = tmp_path / "out"
    res = run_experiment(load_spec(first), out, progress=False, log=lambda _: None)
    assert len(res.done) == 2 and not (out / "validation_cases.csv").exists()
    ckpt = next(out.glob("runs/base/seed0/checkpoints/*.pt"))
    stamp = ckpt.stat().st_mtime_ns
    fields = {"methods": methods, "seeds": [0], "schedule": schedule, "reference": "base"}
    doc = spec_dict(cohort, evaluate_on=["validation", "test"], **fields)
    spec = load_spec(write_spec(tmp_path / "b.yaml", doc))
    assert any("scoring of validation pending" in line for line in plan_lines(spec, out))
    logs: list[str] = []
    res = run_experiment(spec, out, progress=False, log=logs.append)
    assert len(res.done) == 2 and ckpt.stat().st_mtime_ns == stamp  # nothing retrained
    assert not any("(training)" in line for line in logs)
    assert any("(predicting the validation part)" in line for line in logs)
    assert (out / "validation_cases.csv").is_file()
    for label, leaf in (("base", "seed0"), ("suv_2.5", "fixed")):
        assert (out / "runs" / label / leaf / "evaluation-val" / "summary.json").is_file()
    assert "## validation part" in (out / "paired.md").read_text()
    again = run_experiment(spec, out, progress=False, log=lambda _: None)
    assert len(again.skipped) == 2 and not again.done
