"""nnU-Net in an experiment: the runner exports the split, drives nnU-Net's commands (stand-ins here,
``fake_nnunet.py``), resumes a killed training with ``--c``, scores the masks by case id, fills the tables.

One module fixture drives the sequence on the tiny cohort (a threshold row and nnU-Net with two seeds):

1. the first invocation: nnU-Net's training of seed 0 "dies" once (exit status 1 after its latest
   checkpoint); the run is reported failed, seed 1 and the threshold finish;
2. the second invocation: seed 0 continues (``--c``) and finishes; the others are skipped;
3. the third: nothing runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from experiment_fixtures import spec_dict, write_spec
from fake_nnunet import read_calls, write_fake_nnunet

from h2aseg.data.layouts import discover
from h2aseg.data.splits import Split, load_split, save_split
from h2aseg.experiments.plan import Layout, plan_runs
from h2aseg.experiments.runner import ExperimentResult, plan_lines, run_experiment
from h2aseg.experiments.spec import load_spec


@dataclass
class Story:
    out: Path
    config: Path
    calls: Path
    results: list[ExperimentResult] = field(default_factory=list)
    logs: list[list[str]] = field(default_factory=list)
    calls_per_invocation: list[list[dict[str, Any]]] = field(default_factory=list)
    first_error: str = ""  # seed 0's error.txt after the first invocation (its success removes it)


def _nnunet_doc(root: Path, bin_dir: Path) -> dict[str, Any]:
    methods = [
        {"label": "suv_2.5", "network": "suv_2.5"},
        {"label": "nnunet", "network": "nnunet", "nnunet": {"bin": str(bin_dir), "device": "cpu"}},
    ]
    return spec_dict(root, methods=methods)


def _split_with_val(cohort: Path, out: Path) -> None:
    """A saved split of the tiny cohort's 3 patients, one per part, the test one with lesions (nnU-Net's
    fold 0 needs val cases; the runner reuses a split it finds in its output folder)."""
    cases = discover(cohort, "auto")
    patients = {c.case_id: c.patient_id for c in cases}
    with_lesions = {c.patient_id for c in cases if np.asarray(nib.load(str(c.label)).dataobj).any()}
    order = sorted(set(patients.values()), key=lambda p: (p not in with_lesions, p))
    parts = [[cid for cid, p in patients.items() if p == patient] for patient in order]
    save_split(
        Split(train=parts[2], val=parts[1], test=parts[0], seed=0, patients=patients), out / "split.json"
    )


@pytest.fixture(scope="module")
def story(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Story:
    tmp = tmp_path_factory.mktemp("nnunet_experiment")
    bin_dir = write_fake_nnunet(tmp / "bin")
    config = write_spec(tmp / "exp.yaml", _nnunet_doc(cohort, bin_dir))
    s = Story(tmp / "out", config, tmp / "calls.jsonl")
    _split_with_val(cohort, s.out)
    spec = load_spec(config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_NNUNET_CALLS", str(s.calls))
        for die in (str(tmp / "died"), "", ""):  # the first training dies once
            mp.setenv("FAKE_NNUNET_DIE", die)
            before = len(read_calls(s.calls))
            logs: list[str] = []
            s.logs.append(logs)
            s.results.append(run_experiment(spec, s.out, progress=False, log=logs.append))
            s.calls_per_invocation.append(read_calls(s.calls)[before:])
            if len(s.results) == 1:
                s.first_error = (s.out / "runs" / "nnunet" / "seed0" / "error.txt").read_text()
    return s


def _commands(calls: list[dict[str, Any]]) -> list[str]:
    return [c["command"] for c in calls]


def test_first_invocation_plans_once_and_reports_the_killed_training(story: Story) -> None:
    first = story.results[0]
    assert first.done == ["suv_2.5 seed -", "nnunet seed 1"] and first.failed == ["nnunet seed 0"]
    assert _commands(story.calls_per_invocation[0]) == [
        "nnUNetv2_plan_and_preprocess",
        "nnUNetv2_train",  # seed 0: dies
        "nnUNetv2_train",  # seed 1
        "nnUNetv2_predict",
    ]
    error = story.first_error
    assert "nnUNetv2_train failed (exit status 1)" in error and "fake training killed" in error
    assert "nnunet_train.log" in error


def test_second_invocation_continues_the_killed_training(story: Story) -> None:
    second = story.results[1]
    assert second.done == ["nnunet seed 0"] and not second.failed
    assert not (story.out / "runs" / "nnunet" / "seed0" / "error.txt").exists()
    assert second.skipped == ["suv_2.5 seed -", "nnunet seed 1"]
    assert _commands(story.calls_per_invocation[1]) == ["nnUNetv2_train", "nnUNetv2_predict"]
    done = json.loads((story.out / "runs" / "nnunet" / "seed0" / "done.json").read_text())
    assert done["training"] == "resumed from nnU-Net's last checkpoint" and done["network"] == "nnunet"
    finished = json.loads((story.out / "runs" / "nnunet" / "seed0" / "finished.json").read_text())
    assert finished["trainer"] == "nnUNetTrainer_1epoch" and finished["seconds"] > 0


def test_third_invocation_runs_nothing(story: Story) -> None:
    third = story.results[2]
    assert not third.done and not third.failed and len(third.skipped) == 3
    assert story.calls_per_invocation[2] == []


def test_commands_get_the_settings_and_each_seed_its_own_results(story: Story) -> None:
    calls = read_calls(story.calls)
    out = story.out.resolve()
    for c in calls:
        assert c["nnUNet_raw"] == str(out / "nnunet" / "raw")
        assert c["nnUNet_preprocessed"] == str(out / "nnunet" / "preprocessed")
    plan = calls[0]["argv"]
    assert plan[:6] == ["-d", "999", "-c", "3d_fullres", "-pl", "ExperimentPlanner"]
    assert "--verify_dataset_integrity" in plan
    trains = [c for c in calls if c["command"] == "nnUNetv2_train"]
    assert all(
        c["argv"] == ["999", "3d_fullres", "0", "-tr", "nnUNetTrainer_1epoch", "-p", "nnUNetPlans",
                      "-device", "cpu", "--c"]
        for c in trains
    )  # fmt: skip
    assert {c["nnUNet_results"] for c in trains} == {
        str(out / "runs" / "nnunet" / f"seed{s}" / "nnUNet_results") for s in (0, 1)
    }
    predict = next(c["argv"] for c in calls if c["command"] == "nnUNetv2_predict")
    assert predict[predict.index("-f") + 1] == "0" and "--continue_prediction" in predict
    assert predict[predict.index("-i") + 1] == str(out / "nnunet" / "raw" / "Dataset999_H2ASeg" / "imagesTs")


def test_export_uses_the_experiments_split(story: Story) -> None:
    split = load_split(story.out / "split.json")
    cases = json.loads((story.out / "nnunet" / "raw" / "Dataset999_H2ASeg" / "h2aseg_cases.json").read_text())
    parts = {v["case_id"]: v["part"] for v in cases["cases"].values()}
    assert {cid for cid, part in parts.items() if part == "test"} == set(split.test)
    splits = json.loads(
        (story.out / "nnunet" / "preprocessed" / "Dataset999_H2ASeg" / "splits_final.json").read_text()
    )
    assert len(splits) == 1 and sorted(splits[0]["train"]) == sorted(
        i for i, v in cases["cases"].items() if v["part"] == "train"
    )


def test_masks_are_renamed_to_case_ids_and_scored(story: Story) -> None:
    split = load_split(story.out / "split.json")
    cases = json.loads((story.out / "nnunet" / "raw" / "Dataset999_H2ASeg" / "h2aseg_cases.json").read_text())
    ident = {v["case_id"]: i for i, v in cases["cases"].items()}
    for seed in (0, 1):
        run = story.out / "runs" / "nnunet" / f"seed{seed}"
        for case_id in split.test:
            ours = nib.load(str(run / "predictions" / f"{case_id}.nii.gz"))
            theirs = nib.load(str(run / "nnunet_pred" / f"{ident[case_id]}.nii.gz"))
            assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
        summary = json.loads((run / "evaluation" / "summary.json").read_text())
        assert summary["n_cases"] == len(split.test)
        timing = json.loads((run / "timing.json").read_text())
        assert timing["cases"] == len(split.test)


def test_tables_have_the_nnunet_row(story: Story) -> None:
    table1 = (story.out / "table1.md").read_text()
    assert "| nnU-Net (2/2 seeds) |" in table1 and "nnunet: 2 of 2 seeds (0, 1)" in table1
    cost = (story.out / "cost.md").read_text()
    row = next(line for line in cost.splitlines() if line.startswith("| nnU-Net"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "nnunet" and cells[2:6] == ["–"] * 4 and "(n=" in cells[6] and cells[7] != "–"
    assert "nnU-Net's own network" in cost
    assert (story.out / "fig3.png").is_file()


def test_dry_run_sees_a_changed_nnunet_setting(story: Story, tmp_path: Path) -> None:
    doc = _nnunet_doc(load_spec(story.config).dataset.root, tmp_path / "elsewhere")
    same = plan_lines(load_spec(write_spec(tmp_path / "same.yaml", doc)), story.out)
    assert same[-1] == "run 3/3: nnunet seed 1: done"  # another bin folder: the same runs
    doc["methods"][1]["nnunet"]["trainer"] = "nnUNetTrainer_5epochs"
    changed = plan_lines(load_spec(write_spec(tmp_path / "changed.yaml", doc)), story.out)
    assert changed[-1].startswith("run 3/3: nnunet seed 1: done (made with a different config")


def test_missing_commands_fail_the_run_with_a_clear_error(cohort: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    doc = _nnunet_doc(cohort, empty)
    doc["seeds"] = [0]
    _split_with_val(cohort, tmp_path / "out")
    spec = load_spec(write_spec(tmp_path / "exp.yaml", doc))
    logs: list[str] = []
    result = run_experiment(spec, tmp_path / "out", progress=False, log=logs.append)
    assert result.done == ["suv_2.5 seed -"] and result.failed == ["nnunet seed 0"]
    layout = Layout(tmp_path / "out")
    error = (layout.run_dir(plan_runs(spec)[1]) / "error.txt").read_text()
    assert f"nnUNetv2_plan_and_preprocess was not found in nnunet.bin ({empty})" in error
    assert "pip install" in error
    assert not (tmp_path / "out" / "nnunet" / "raw").exists()  # nothing exported before the check
    assert plan_lines(spec, tmp_path / "out")[-1] == "run 2/2: nnunet seed 0: pending"
    (layout.run_dir(plan_runs(spec)[1]) / "nnunet_state.json").write_text('{"train_seconds": 5}')
    assert plan_lines(spec, tmp_path / "out")[-1] == (
        "run 2/2: nnunet seed 0: pending, nnU-Net's training continues from its latest checkpoint (--c)"
    )


class _LostLock:
    """A heartbeat whose lock is lost (as :class:`LockLost` would be raised) once ``ready`` exists."""

    def __init__(self, ready: Path) -> None:
        self.ready = ready

    def beat(self, force: bool = False) -> None:
        if self.ready.exists():
            raise RuntimeError("lock lost")


def test_a_stopped_command_takes_its_workers_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys
    import time

    from h2aseg.experiments import nnunet

    monkeypatch.setattr(nnunet, "POLL_S", 0.1)
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "command.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file) + '.tmp'!r}, 'w').write(str(worker.pid))\n"
        f"import os; os.replace({str(pid_file) + '.tmp'!r}, {str(pid_file)!r})\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "command.log"
    with pytest.raises(RuntimeError, match="lock lost"):
        nnunet.run_command([sys.executable, script], dict(os.environ), log, _LostLock(pid_file))  # type: ignore[arg-type]
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} outlived the stopped command")
    assert "stopping the command and its workers" in log.read_text()
