"""Fig. 3: several methods side by side on the same cases, from arrays and from prediction folders."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from analysis_fixtures import is_png, write_small_cohort
from typer.testing import CliRunner

from h2aseg.analysis.overlays import (
    ComparisonCase,
    comparison_case,
    pick_cases,
    prediction_label,
    render_comparison,
)
from h2aseg.cli import app
from h2aseg.cli.analyze import parse_pred


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, dict[str, Path]]:
    """The cohort, and two methods: ``perfect`` (the labels) and ``empty`` (one case missing)."""
    root = tmp_path_factory.mktemp("cohort")
    cases = write_small_cohort(root)
    dirs = {"perfect": root.parent / f"{root.name}-perfect", "empty": root.parent / f"{root.name}-empty"}
    for d in dirs.values():
        d.mkdir()
    for i, c in enumerate(cases):
        img = nib.load(str(c.label))
        nib.save(img, dirs["perfect"] / f"{c.case_id}.nii.gz")
        if i:
            empty = np.zeros(img.shape, np.uint8)
            nib.save(nib.Nifti1Image(empty, img.affine), dirs["empty"] / f"{c.case_id}.nii.gz")
    return root, cases, dirs


def test_render_comparison_from_arrays(tmp_path: Path) -> None:
    shape = (20, 16, 24)
    gt = np.zeros(shape, bool)
    gt[8:12, 6:9, 10:14] = True
    row = ComparisonCase(
        "c1",
        np.random.default_rng(0).random(shape, dtype=np.float32) + 5 * gt,
        np.zeros(shape, np.float32),
        gt,
        {"A": gt, "B": np.roll(gt, 2, axis=0), "C": None},
        spacing=(2.0, 2.0, 3.0),
    )
    out = render_comparison(
        [row, ComparisonCase("c2", row.pet)],
        ["A", "B", "C"],
        tmp_path / "f" / "fig3.png",
        axis="axial",
        title="t",
    )
    assert is_png(out) and not list(out.parent.glob(".tmp-*"))
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > height  # 6 columns, 2 rows
    with pytest.raises(ValueError, match="unknown base"):
        render_comparison([row], ["A"], tmp_path / "x.png", base="mri")  # type: ignore[arg-type]


def test_comparison_case_reads_predictions_in_ct_geometry(data: tuple[Path, list, dict[str, Path]]) -> None:
    _, cases, dirs = data
    row = comparison_case(cases[0], dirs)
    assert row.preds["empty"] is None  # missing file: no prediction
    assert row.gt is not None and np.array_equal(row.preds["perfect"], row.gt > 0)
    assert row.ct is not None and row.ct.min() >= -1024.0 and row.pet.shape == row.gt.shape
    assert row.spacing == (12.0, 12.0, 14.0)


def test_pick_cases_prefers_the_largest_lesions(data: tuple[Path, list, dict[str, Path]]) -> None:
    _, cases, _ = data
    picked = pick_cases(cases, 3)
    assert len(picked) == 2  # two of the four studies have lesions
    sizes = [int(np.count_nonzero(np.asanyarray(nib.load(str(c.label)).dataobj))) for c in picked]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) > 0
    volumes = {cases[0].case_id: 5.0, cases[3].case_id: 9.0}  # given (an evaluation's mtv_gt_ml): no reading
    assert pick_cases(cases, 3, volumes) == [cases[3], cases[0]]


def test_labels_of_prediction_folders() -> None:
    assert prediction_label("/x/runs/full/seed0/predictions") == "full"
    assert prediction_label("/x/runs/suv_2.5/fixed/predictions") == "suv_2.5"
    assert prediction_label("/x/preds_unet") == "preds_unet"
    assert parse_pred("UNet=/x/p") == ("UNet", Path("/x/p"))
    assert parse_pred("/x/runs/full/seed1/predictions") == ("full", Path("/x/runs/full/seed1/predictions"))


def test_cli_overlays(data: tuple[Path, list, dict[str, Path]], tmp_path: Path) -> None:
    root, cases, dirs = data
    runner = CliRunner()
    preds = ["--pred", f"Perfect={dirs['perfect']}", "--pred", str(dirs["empty"])]
    result = runner.invoke(app, ["analyze", "overlays", *preds, "--data", str(root), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert is_png(tmp_path / "fig3.png")
    result = runner.invoke(
        app,
        [
            "analyze",
            "overlays",
            *preds,
            "--data",
            str(root),
            "--out",
            str(tmp_path / "b"),
            "--case",
            cases[0].case_id,
            "--view",
            "axial",
            "--base",
            "pet",
        ],
    )
    assert result.exit_code == 0 and is_png(tmp_path / "b" / "fig3.png")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), wrong / f"{cases[0].case_id}.nii.gz")
    for extra, message in (
        (["--pred", str(wrong), "--case", cases[0].case_id], "differs from the CT's"),
        (["--pred", str(tmp_path / "none")], "no such prediction folder"),
        (["--pred", f"X={dirs['perfect']}", "--pred", f"X={dirs['empty']}"], "the same label"),
        (["--pred", str(dirs["perfect"]), "--case", "nobody"], "no case(s) nobody"),
        (["--pred", str(dirs["perfect"]), "--view", "sagittal"], "unknown view"),
    ):
        result = runner.invoke(
            app, ["analyze", "overlays", *extra, "--data", str(root), "--out", str(tmp_path)]
        )
        assert result.exit_code == 2 and message in result.output, result.output
