"""`h2aseg export-nnunet` and `h2aseg evaluate --nnunet-cases`: an nnU-Net prediction folder (files named by
identifier) scored by h2aseg's case ids; one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.evaluation.matching import EvaluationError, rename_cases
from h2aseg.synth import write_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, 5, "autopet", seed=6, shape=(24, 24, 32))
    return root


@pytest.fixture(scope="module")
def dataset(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw, pre = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("pre")
    args = ["export-nnunet", "--data", str(cohort), "--out", str(raw), "--dataset-id", "7", "--no-progress"]
    result = runner.invoke(app, args, env={"nnUNet_preprocessed": str(pre)})
    assert result.exit_code == 0, result.output
    assert "exported 5 cases (train" in result.output and "15 files written" in result.output
    assert (pre / "Dataset007_H2ASeg" / "splits_final.json").is_file()  # where nnU-Net reads it
    again = runner.invoke(app, args, env={"nnUNet_preprocessed": str(pre)})
    assert again.exit_code == 0 and "0 files written, 15 already there" in again.output
    return raw / "Dataset007_H2ASeg"


def test_help_lists_export_nnunet() -> None:
    assert "export-nnunet" in runner.invoke(app, ["--help"]).output
    assert "--nnunet-cases" in runner.invoke(app, ["evaluate", "--help"]).output


def _per_case(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "per_case.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_evaluate_nnunet_predictions_by_case_id(dataset: Path, cohort: Path, tmp_path: Path) -> None:
    cases = json.loads((dataset / "h2aseg_cases.json").read_text())["cases"]
    test = {i: rec["case_id"] for i, rec in cases.items() if rec["part"] == "test"}
    pred = tmp_path / "nnunet_pred"  # what nnUNetv2_predict writes: <identifier>.nii.gz and its JSON files
    shutil.copytree(dataset / "labelsTs", pred)
    (pred / "plans.json").write_text("{}")
    base = ["evaluate", "--pred", str(pred), "--nnunet-cases", str(dataset / "h2aseg_cases.json")]
    result = runner.invoke(app, [*base, "--gt", str(dataset / "labelsTs"), "--out", str(tmp_path / "e1")])
    assert result.exit_code == 0, result.output
    rows = _per_case(tmp_path / "e1")
    assert sorted(rows) == sorted(test.values()) and all(" " in cid for cid in rows)
    lesion = [r for r in rows.values() if r["dice"] not in ("", "nan")]
    assert all(float(r["dice"]) == pytest.approx(100.0) for r in lesion)
    # against the original dataset: the prediction lands on its case id (the others have none)
    args = [*base, "--gt", str(cohort), "--out", str(tmp_path / "e2"), "--allow-missing"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _per_case(tmp_path / "e2")
    scored = {cid for cid, r in rows.items() if r["prediction_missing"] == "0"}
    assert scored == set(test.values()) and len(rows) == 5
    plain = runner.invoke(
        app, ["evaluate", "--pred", str(pred), "--gt", str(cohort), "--out", str(tmp_path / "e3")]
    )
    assert plain.exit_code == 2 and "no prediction matches a ground-truth case id" in plain.output


def test_rename_cases_refuses_two_files_for_one_case(tmp_path: Path) -> None:
    masks = {"a_b": tmp_path / "a_b.nii.gz", "a b": tmp_path / "a b.nii.gz", "c": tmp_path / "c.nii.gz"}
    assert rename_cases({"c": masks["c"]}, {"a_b": "a b"}) == {"c": masks["c"]}
    with pytest.raises(EvaluationError, match="two mask files for case 'a b'"):
        rename_cases(masks, {"a_b": "a b"})


def test_one_line_errors(cohort: Path, dataset: Path, tmp_path: Path) -> None:
    base = ["export-nnunet", "--data", str(cohort), "--no-progress"]
    cases = [
        (["--out", str(tmp_path), "--dataset-id", "8", "--name", "my data"], "no spaces"),
        (["--out", str(dataset.parent), "--dataset-id", "7", "--set", "data.split_seed=3"], "--force"),
        (["--out", str(cohort), "--dataset-id", "9"], "inside the input dataset"),
        (
            ["--out", str(tmp_path), "--dataset-id", "9", "--split-file", str(tmp_path / "none.json")],
            "not found",
        ),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in result.output, result.output
    bad = runner.invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(tmp_path),
            "--gt",
            str(cohort),
            "--out",
            str(tmp_path / "e"),
            "--nnunet-cases",
            str(tmp_path / "nothing.json"),
        ],
    )
    assert bad.exit_code == 2 and "nothing.json: not found" in bad.output
