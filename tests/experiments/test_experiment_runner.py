"""The whole experiment on a tiny cohort: two shards, a killed run resumed, a rerun that retrains nothing,
then the tables (Table 1 with seed counts, cost) and the dry run.

One module fixture drives the sequence (the training is the slow part: 4 tiny runs of 2 steps):

1. shard 0/2 (runs 1, 3, 5) is killed after epoch 1 of run 3 (a callback raises KeyboardInterrupt right
   after the epoch's checkpoint, as a kill would leave it);
2. shard 1/2 (runs 2, 4, 6) runs;
3. shard 0/2 again: run 1 is skipped, run 3 resumes from epoch 1, run 5 trains;
4. the whole experiment again, from the command line: everything is skipped, nothing retrained.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from experiment_fixtures import SCHEDULE, spec_dict, write_spec
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.experiments.plan import Layout, Run, plan_runs, select_shard
from h2aseg.experiments.runner import ExperimentResult, plan_lines, run_experiment
from h2aseg.experiments.spec import ExperimentSpec, load_spec
from h2aseg.experiments.tables import table2_markdown
from h2aseg.training.callbacks import TrainingCallbacks

KILLED = 3  # run index killed after its first epoch


class Recorder(TrainingCallbacks):
    """Records each training start (run folder, first epoch) and optionally dies after epoch 1."""

    def __init__(self, starts: list[tuple[str, int]], die: bool = False) -> None:
        self.starts, self.die = starts, die

    def on_start(self, run_dir: Path, start_epoch: int, total_steps: int) -> None:
        self.starts.append((f"{run_dir.parent.name}/{run_dir.name}", start_epoch))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self.die and row["epoch"] == 1:
            raise KeyboardInterrupt


@dataclass
class Story:
    spec: ExperimentSpec
    config: Path
    out: Path
    logs: list[list[str]] = field(default_factory=list)
    starts: list[list[tuple[str, int]]] = field(default_factory=list)
    results: list[ExperimentResult] = field(default_factory=list)
    after_kill: dict[str, Any] = field(default_factory=dict)
    mtimes: dict[str, int] = field(default_factory=dict)
    rerun_output: str = ""


def _invoke(story: Story, shard: tuple[int, int], kill: bool = False) -> None:
    logs: list[str] = []
    starts: list[tuple[str, int]] = []
    story.logs.append(logs)
    story.starts.append(starts)

    def callbacks(run: Run) -> list[TrainingCallbacks]:
        return [Recorder(starts, die=kill and run.index == KILLED)]

    story.results.append(
        run_experiment(
            story.spec, story.out, shard=shard, progress=False, log=logs.append, callbacks=callbacks
        )
    )


def _last_pts(out: Path) -> dict[str, int]:
    files = sorted(out.glob("runs/*/*/checkpoints/*.pt"))
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def story(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Story:
    tmp = tmp_path_factory.mktemp("experiment")
    config = write_spec(tmp / "tiny.yaml", spec_dict(cohort))
    s = Story(load_spec(config), config, tmp / "out")
    with pytest.raises(KeyboardInterrupt):
        _invoke(s, (0, 2), kill=True)
    layout = Layout(s.out)
    killed = plan_runs(s.spec)[KILLED - 1]
    s.after_kill = {
        "checkpoint": (layout.run_dir(killed) / "checkpoints" / "last.pt").exists(),
        "done": layout.done(killed).exists(),
        "lock": layout.lock(killed).exists(),
    }
    _invoke(s, (1, 2))
    _invoke(s, (0, 2))
    s.mtimes = _last_pts(s.out)
    args = ["experiment", "--config", str(config), "--out", str(s.out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    s.rerun_output = result.output
    return s


def test_killed_run_leaves_a_checkpoint_and_no_marker_or_lock(story: Story) -> None:
    assert story.after_kill == {"checkpoint": True, "done": False, "lock": False}
    assert story.logs[0][-1] == "run 3/6: full seed 0 (training)"


def test_killed_run_resumes_from_its_checkpoint(story: Story) -> None:
    assert ("full/seed0", 1) in story.starts[2]  # the second shard-0 invocation continues after epoch 1
    assert "run 3/6: full seed 0 (done)" in story.logs[2]
    metrics = (story.out / "runs" / "full" / "seed0" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2"]
    done = json.loads((story.out / "runs" / "full" / "seed0" / "done.json").read_text())
    assert done["training"] == "resumed after epoch 1"


def test_shards_together_cover_every_run_once(story: Story) -> None:
    runs = plan_runs(story.spec)
    shards = [select_shard(runs, (i, 2)) for i in range(2)]
    assert sorted(r.index for s in shards for r in s) == [r.index for r in runs]
    finished = [line for logs in story.logs for line in logs if line.endswith("(done)")]
    assert sorted(finished) == sorted(f"run {r.index}/6: {r.name} (done)" for r in runs)
    assert story.results[0].done == [r.name for r in shards[1]]  # the killed invocation returned nothing
    assert story.results[1].skipped == [runs[0].name]
    assert story.results[1].done == [r.name for r in shards[0][1:]]


def test_second_invocation_retrains_nothing(story: Story) -> None:
    assert _last_pts(story.out) == story.mtimes and len(story.mtimes) == 4
    skipped = [line for line in story.rerun_output.splitlines() if line.endswith("(done, skipped)")]
    assert len(skipped) == 6
    assert "(training)" not in story.rerun_output
    assert "0 run(s) done now, 6 done before" in story.rerun_output


def test_progress_lines(story: Story) -> None:
    lines = story.logs[1]
    for stage in ("training", "predicting", "evaluating", "done"):
        assert f"run 4/6: base seed 0 ({stage})" in lines
    assert "run 2/6: suv_41pct seed - (predicting)" in lines


def test_table1_has_a_row_per_method_with_its_seed_count(story: Story) -> None:
    text = (story.out / "table1.md").read_text()
    for row in (
        "| SUV >= 2.5 (training-free) |",
        "| 41% SUVmax (training-free) |",
        "| H2ASeg (2/2 seeds) |",
        "| Baseline (2/2 seeds) |",
    ):
        assert row in text
    rows = [line for line in text.splitlines() if line.startswith("| H2ASeg")]
    assert len(rows) == 1 and rows[0].count("|") == 6 and "–" not in rows[0]  # all four metrics
    assert "full: 2 of 2 seeds (0, 1)" in text
    doc = json.loads((story.out / "table1.json").read_text())
    assert doc["seeds_done"] == {"suv_2.5": [None], "suv_41pct": [None], "full": [0, 1], "base": [0, 1]}
    assert doc["rows"]["H2ASeg (2/2 seeds)"]["Tiny"]["dice"]["n_runs"] == 2
    assert "\\begin{tabular}" in (story.out / "table1.tex").read_text()
    assert not (story.out / "table2.md").exists()  # two of the four ablation configurations


def test_cost_table_has_a_row_per_network_method(story: Story) -> None:
    text = (story.out / "cost.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "h2aseg" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["H2ASeg", "Baseline"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[3:-1]]
        assert len(cells) == 6 and "–" not in cells and "(n=4)" in cells[4]  # 2 runs x 2 test cases
    assert "FlopCounterMode" in text and "peak RSS (VmHWM" in text
    cost = json.loads((story.out / "cost" / "full.json").read_text())
    assert cost["params"] > 0 and cost["gflop"] > 0 and cost["patch"] == [32, 32, 32]


def test_cost_notes_name_their_rows_when_rows_were_measured_differently(story: Story, tmp_path: Path) -> None:
    from h2aseg.experiments.tables import cost_markdown

    out = tmp_path / "out"
    shutil.copytree(story.out, out)
    probe = out / "cost" / "base.json"
    cost = json.loads(probe.read_text())
    probe.write_text(json.dumps({**cost, "device": "cpu (another machine, 64 threads)"}))
    text = cost_markdown(story.spec, Layout(out), {})
    notes = [n for n in text.splitlines() if n.startswith("- ") and "Train step" in n]
    assert len(notes) == 2
    assert sum(n.startswith("- Baseline: Forward:") and "64 threads" in n for n in notes) == 1
    assert sum(n.startswith("- H2ASeg: Forward:") and "64 threads" not in n for n in notes) == 1
    one = cost_markdown(story.spec, Layout(story.out), {})  # measured alike: one note, naming no row
    assert [n[:10] for n in one.splitlines() if n.startswith("- ") and "Train step" in n] == ["- Forward:"]


def test_dry_run_lists_every_run_as_done(story: Story) -> None:
    result = CliRunner().invoke(
        app,
        ["experiment", "--config", str(story.config), "--out", str(story.out), "--dry-run", "--shard", "1/2"],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("run ")]
    assert lines == [
        f"run {i}/6: {name}: done"
        for i, name in ((2, "suv_41pct seed -"), (4, "base seed 0"), (6, "base seed 1"))
    ]


def test_dry_run_flags_runs_made_with_another_config(story: Story, tmp_path: Path) -> None:
    doc = spec_dict(story.spec.dataset.root)
    doc["schedule"]["overrides"] = [o.replace("train.epochs=2", "train.epochs=3") for o in SCHEDULE]
    lines = plan_lines(load_spec(write_spec(tmp_path / "changed.yaml", doc)), story.out)
    assert lines[2] == "run 1/6: suv_2.5 seed -: done"  # training-free: only the data settings count
    assert lines[4].startswith("run 3/6: full seed 0: done (made with a different config")


def test_table2_when_all_four_ablations_are_methods(story: Story, tmp_path: Path) -> None:
    methods = [
        {"label": f"m{i}", "network": "h2aseg", "ablation": {"mcsa": a, "tamw": b}}
        for i, (a, b) in enumerate([(False, False), (True, False), (False, True), (True, True)])
    ]
    spec = load_spec(write_spec(tmp_path / "t2.yaml", spec_dict(story.out, methods=methods)))
    summary = json.loads((story.out / "runs" / "full" / "seed0" / "evaluation" / "summary.json").read_text())
    worse = json.loads(json.dumps(summary))
    worse["metrics"]["dice"]["mean"] -= 1.0
    done = {"m0": [(0, worse)], "m1": [], "m2": [(0, worse), (1, worse)], "m3": [(0, summary)]}
    text = table2_markdown(spec, done) or ""
    lines = text.splitlines()
    assert lines[2].startswith("| MCSA | TAMW | Dice")
    assert lines[4].startswith("|  |  | <u>") and lines[4].endswith("| 1/2 |")
    assert lines[5].startswith("| ✓ |  | – |") and lines[5].endswith("| 0/2 |")
    assert lines[7].startswith("| ✓ | ✓ | **")


def test_tables_only_rewrites_tables_and_trains_nothing(story: Story, tmp_path: Path) -> None:
    out = tmp_path / "copied"
    shutil.copytree(story.out, out)
    layout = Layout(out)
    last = plan_runs(story.spec)[-1]  # base seed 1: as if its process had been stopped before the end
    layout.done(last).unlink()
    for name in ("table1.md", "fig3.png"):
        (out / name).unlink()
    before = _last_pts(out)
    args = ["experiment", "--config", str(story.config), "--out", str(out), "--tables-only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rewritten from the runs done" in result.output
    assert "Baseline (1/2 seeds)" in (out / "table1.md").read_text()
    assert (out / "fig3.png").is_file()
    assert not layout.done(last).exists() and _last_pts(out) == before  # nothing trained


def test_tables_only_without_a_done_run_is_an_error(story: Story, tmp_path: Path) -> None:
    args = ["experiment", "--config", str(story.config), "--out", str(tmp_path / "empty"), "--tables-only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "no split.json, so no run of this experiment has been done there" in result.output
    assert not (tmp_path / "empty").exists()  # read-only: a mistyped --out is not created
    split_only = tmp_path / "split_only"  # a split but no run: nothing to tabulate
    split_only.mkdir()
    shutil.copy(story.out / "split.json", split_only / "split.json")
    result = CliRunner().invoke(app, [*args[:4], str(split_only), "--tables-only"])
    assert result.exit_code != 0 and "no run of" in result.output and "is done yet" in result.output
    assert sorted(p.name for p in split_only.iterdir()) == ["split.json", "test_cases.csv"]


def _stored_elsewhere(story: Story, tmp_path: Path) -> tuple[Path, Callable[[dict[str, Any]], str]]:
    """A copy of the story's output whose run "full seed 0" has a fingerprint from another config; returns
    that run's folder and ``restore(config)``: write its stored config.yaml, return its dry-run line."""
    import yaml

    out = tmp_path / "out"
    shutil.copytree(story.out, out)
    run_dir = out / "runs" / "full" / "seed0"
    done = json.loads((run_dir / "done.json").read_text())
    (run_dir / "done.json").write_text(json.dumps({**done, "fingerprint": "made-with-another-config"}))

    def restore(config: dict[str, Any]) -> str:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        return plan_lines(story.spec, out)[4]

    return run_dir, restore


FLAGGED = "run 3/6: full seed 0: done (made with a different config"


def test_a_config_field_added_since_a_run_was_made_does_not_flag_it(story: Story, tmp_path: Path) -> None:
    """A new field changes every fingerprint; a run whose stored config lacks only fields now at their
    default is still done, one that lacks a field set to something else is flagged."""
    import yaml

    run_dir, restore = _stored_elsewhere(story, tmp_path)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    del stored["infer"]["cpu_fast_path"]  # as written before the field existed (default False)
    assert restore(stored) == "run 3/6: full seed 0: done"
    stored["train"]["epochs"] = 99  # a result-changing field differs: flagged
    assert restore(stored).startswith(FLAGGED)


def test_the_default_variant_and_its_spelled_out_twin_are_one_config(story: Story, tmp_path: Path) -> None:
    """``variant: ours`` is ``variant: paper`` with ``extra.mcsa_term_norm: true``: a run stored under one
    spelling is done for a method written in the other; the paper's MCSA as written is not."""
    import yaml

    run_dir, restore = _stored_elsewhere(story, tmp_path)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["model"]["variant"] == "ours" and not stored["model"]["extra"]
    stored["model"] |= {"variant": "paper", "extra": {"mcsa_term_norm": True}}
    assert restore(stored) == "run 3/6: full seed 0: done"
    stored["model"]["extra"] = {}  # the paper's MCSA as written: another network
    assert restore(stored).startswith(FLAGGED)
