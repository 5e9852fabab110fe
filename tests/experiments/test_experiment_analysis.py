"""``h2aseg experiment`` on its H2ASeg runs: TAMW weights recorded by the predict step, Table 3 beside
Tables 1-2, Fig. 3 (every method) and Fig. 4 (TAMW only, then MCSA + TAMW)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from experiment_fixtures import SCHEDULE, spec_dict, write_spec

from h2aseg.experiments.plan import Layout
from h2aseg.experiments.runner import ExperimentResult, run_experiment
from h2aseg.experiments.spec import ExperimentSpec, load_spec
from h2aseg.experiments.tables import write_figures

METHODS = [
    {"label": "suv_2.5", "network": "suv_2.5"},
    {"label": "tamw", "title": "+ TAMW", "network": "h2aseg", "ablation": {"mcsa": False, "tamw": True}},
    {"label": "full", "title": "H2ASeg", "network": "h2aseg", "ablation": {"mcsa": True, "tamw": True}},
]


@dataclass
class Done:
    spec: ExperimentSpec
    out: Path
    result: ExperimentResult
    rerun: ExperimentResult
    fig3_mtimes: tuple[int, int]


@pytest.fixture(scope="module")
def experiment(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Done:
    """One seed of three methods, then a rerun that finishes nothing (so draws no figure again)."""
    tmp = tmp_path_factory.mktemp("experiment")
    schedule = {"base": "cpu-small", "overrides": [*SCHEDULE, "train.epochs=1"]}
    doc = spec_dict(cohort, seeds=[0], methods=METHODS, schedule=schedule)
    spec = load_spec(write_spec(tmp / "tiny.yaml", doc))
    out = tmp / "out"
    layout = Layout(out)
    for m in spec.methods:  # the cost probe is tested elsewhere; a present file skips it
        layout.cost(m).parent.mkdir(parents=True, exist_ok=True)
        layout.cost(m).write_text(json.dumps({"label": m.label, "params": 1}))
    result = run_experiment(spec, out, progress=False, log=lambda _m: None)
    before = (out / "fig3.png").stat().st_mtime_ns
    rerun = run_experiment(spec, out, progress=False, log=lambda _m: None)
    return Done(spec, out, result, rerun, (before, (out / "fig3.png").stat().st_mtime_ns))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tamw_runs_record_their_weights(experiment: Done) -> None:
    out, result = experiment.out, experiment.result
    assert sorted(result.done) == ["full seed 0", "suv_2.5 seed -", "tamw seed 0"]
    test_ids = [r["case_id"] for r in _csv(out / "test_cases.csv")]
    for label in ("tamw", "full"):
        per_case = _csv(out / "runs" / label / "seed0" / "analysis" / "tamw_weights_per_case.csv")
        assert sorted({r["case_id"] for r in per_case}) == sorted(test_ids) and len(per_case) == 4 * len(
            test_ids
        )
    assert not (out / "runs" / "suv_2.5" / "fixed" / "analysis").exists()


def test_table3_beside_the_other_tables(experiment: Done) -> None:
    out, result = experiment.out, experiment.result
    text = (out / "table3.md").read_text()
    assert text.index("# Table 3: + TAMW") < text.index("# Table 3: H2ASeg") and "1 of 1 seeds" in text
    rows = _csv(out / "table3.csv")
    assert [r["method"] for r in rows].count("tamw") == 16 and [r["method"] for r in rows].count("full") == 16
    assert all(-100.0 < float(r["mean"]) < 100.0 and r["n_runs"] == "1" for r in rows)
    assert {out / "table1.md", out / "table3.md", out / "table3.csv", out / "fig3.png"} <= set(result.tables)


def test_fig3_and_fig4(experiment: Done) -> None:
    out, result = experiment.out, experiment.result
    assert _is_png(out / "fig3.png")
    fig4 = sorted(out.glob("fig4_*.png"))
    assert fig4 and all(_is_png(p) for p in fig4) and set(fig4) <= set(result.tables)


def test_detection_tables_of_every_method(experiment: Done) -> None:
    det = experiment.out / "detection"
    assert {det / "lesions.csv", det / "detection.csv", det / "detection.md"} <= set(experiment.result.tables)
    lesions = _csv(det / "lesions.csv")
    methods = {r["method"] for r in lesions}
    assert methods == {"SUV >= 2.5", "+ TAMW", "H2ASeg"}  # every method's first seed, by its title
    per_method = {m: sum(r["method"] == m for r in lesions) for m in methods}
    assert len(set(per_method.values())) == 1 and all(r["site"] for r in lesions)  # same lesions; sites known
    assert "| all | all lesions |" in (det / "detection.md").read_text(encoding="utf-8")


def test_a_rerun_that_finishes_nothing_keeps_the_figures(experiment: Done) -> None:
    assert experiment.rerun.done == [] and len(experiment.rerun.skipped) == 3
    assert experiment.fig3_mtimes[0] == experiment.fig3_mtimes[1]
    assert experiment.out / "table3.md" in experiment.rerun.tables
    assert not [p for p in experiment.rerun.tables if p.suffix == ".png"]


def test_a_figure_that_fails_is_logged_not_raised(experiment: Done, monkeypatch: pytest.MonkeyPatch) -> None:
    import h2aseg.analysis.overlays as overlays
    from h2aseg.data.layouts import discover

    spec, out = experiment.spec, experiment.out

    def boom(*_a: object, **_k: object) -> Path:
        raise RuntimeError("boom")

    monkeypatch.setattr(overlays, "method_comparison", boom)
    logs: list[str] = []
    cases = discover(out / "test_cases.csv", "csv")
    paths = write_figures(spec, Layout(out), cases, logs.append)
    assert logs == ["fig3.png not drawn (RuntimeError: boom)"]
    assert paths and all(p.name.startswith("fig4_") or p.parent.name == "detection" for p in paths)


def test_runs_copied_from_another_machine_are_left_out_of_the_figures(
    experiment: Done, tmp_path: Path
) -> None:
    """A done run whose small files were copied in (no predictions, no checkpoint) must not cost the
    other methods their Fig. 3 and detection tables; the log names it."""
    import shutil

    from h2aseg.data.layouts import discover

    out = tmp_path / "out"
    shutil.copytree(experiment.out, out)
    for name in ("predictions", "checkpoints"):
        shutil.rmtree(out / "runs" / "full" / "seed0" / name)
    for old in [out / "fig3.png", *out.glob("fig4_*.png")]:
        old.unlink()
    logs: list[str] = []
    paths = write_figures(experiment.spec, Layout(out), discover(out / "test_cases.csv", "csv"), logs.append)
    assert len(logs) == 1 and logs[0].startswith("Fig. 3, Fig. 4 and detection/ leave out full:")
    assert out / "fig3.png" in paths and _is_png(out / "fig3.png")
    assert {r["method"] for r in _csv(out / "detection" / "lesions.csv")} == {"SUV >= 2.5", "+ TAMW"}
    assert [p for p in paths if p.name.startswith("fig4_")]  # the TAMW-only run still draws Fig. 4


def test_validation_predictions_get_their_own_detection_tables(experiment: Done, tmp_path: Path) -> None:
    """An experiment that evaluates its validation part writes detection-val/ from predictions-val/ (here
    the test predictions copied as if they were validation predictions)."""
    import shutil

    from h2aseg.data.layouts import discover

    out = tmp_path / "out"
    shutil.copytree(experiment.out, out)
    cases = discover(out / "test_cases.csv", "csv")
    without = write_figures(experiment.spec, Layout(out), cases, lambda _m: None, validation=cases)
    assert not [p for p in without if p.parent.name == "detection-val"]  # no predictions-val/: no tables
    for run in (out / "runs").glob("*/*"):
        if (run / "predictions").is_dir():
            shutil.copytree(run / "predictions", run / "predictions-val")
    paths = write_figures(experiment.spec, Layout(out), cases, lambda _m: None, validation=cases)
    val = out / "detection-val"
    assert {val / "lesions.csv", val / "detection.md"} <= set(paths)
    assert _csv(val / "lesions.csv") == _csv(out / "detection" / "lesions.csv")
