"""`h2aseg quantify` and `h2aseg predict --quantify`: the lesion and patient CSVs, one-line errors."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from h2aseg.cli import app
from h2aseg.data.io import read_volume, write_volume
from h2aseg.synth import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import save_tiny_checkpoint

runner = CliRunner()
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    suv = np.ones((20, 20, 12), np.float32)
    suv[3:7, 3:7, 2:5] = 6.0
    suv[12:15, 12:15, 7:9] = 3.0
    mask = np.zeros(suv.shape, np.uint8)
    mask[3:7, 3:7, 2:5] = 1
    mask[12:15, 12:15, 7:9] = 1
    gt = np.zeros_like(mask)
    gt[3:7, 3:7, 2:5] = 1
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("suv", "mask", "gt")}
    for key, arr in (("suv", suv), ("mask", mask), ("gt", gt)):
        write_volume(paths[key], arr, AFFINE)
    return paths


def test_help_lists_quantify() -> None:
    assert "quantify" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["quantify", "--help"])
    assert result.exit_code == 0 and "--pet" in result.output and "--gt" in result.output


def test_quantify_writes_both_csvs(images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q"
    args = ["quantify", "--pet", str(images["suv"]), "--mask", str(images["mask"]), "--out", str(out)]
    result = runner.invoke(app, [*args, "--gt", str(images["gt"])])
    assert result.exit_code == 0, result.output
    assert "2 lesion(s)" in result.output and "1 of 1 GT lesion(s) detected" in result.output
    rows = list(csv.DictReader((out / "lesions.csv").open()))
    by_volume = {round(float(r["volume_ml"]), 6): r for r in rows}
    big, small = by_volume[round(48 * 12 / 1000, 6)], by_volume[round(18 * 12 / 1000, 6)]
    assert (big["suv_max"], big["suv_mean"], big["detected"]) == ("6", "6", "1")
    assert float(small["tlg"]) == pytest.approx(3.0 * 18 * 12 / 1000) and small["detected"] == "0"
    (patient,) = csv.DictReader((out / "patient.csv").open())
    assert patient["lesion_count"] == "2" and patient["fp_lesions"] == "1"
    assert float(patient["mtv_ml"]) == pytest.approx(66 * 12 / 1000)
    # centroids (4.5, 4.5, 3) and (13, 13, 7.5) voxels -> Dmax in mm
    expected = float(np.linalg.norm([(13 - 4.5) * 2, (13 - 4.5) * 2, (7.5 - 3) * 3]))
    assert float(patient["dmax_mm"]) == pytest.approx(expected)


def test_quantify_errors_are_one_line(images: dict[str, Path], tmp_path: Path) -> None:
    write_volume(tmp_path / "other.nii.gz", np.zeros((20, 20, 13), np.uint8), AFFINE)
    result = runner.invoke(
        app,
        [
            "quantify",
            "--pet",
            str(images["suv"]),
            "--mask",
            str(tmp_path / "other.nii.gz"),
            "--out",
            str(tmp_path / "q"),
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "other.nii.gz" in result.output and "suv.nii.gz" in result.output
    result = runner.invoke(
        app,
        [
            "quantify",
            "--pet",
            str(tmp_path / "none.nii.gz"),
            "--mask",
            str(images["mask"]),
            "--out",
            str(tmp_path / "q"),
        ],
    )
    assert result.exit_code == 2 and "file not found" in result.output
    assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def test_predict_quantify_writes_csvs_beside_each_mask(checkpoint: Path, tmp_path: Path) -> None:
    shape, spacing = (36, 40, 30), (10.0, 10.0, 12.0)
    cases = write_cohort(tmp_path / "data", 2, "autopet", seed=3, shape=shape, spacing=spacing)
    out = tmp_path / "pred"
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "data"),
            "--out-dir",
            str(out),
            "--quantify",
        ],
    )
    assert result.exit_code == 0, result.output
    for case in cases:
        assert (out / f"{case.case_id}.nii.gz").is_file()
        (row,) = csv.DictReader((out / f"{case.case_id}_patient.csv").open())
        assert row["case_id"] == case.case_id
        assert (out / f"{case.case_id}_lesions.csv").read_text().startswith("case_id,lesion_id,")
    single = tmp_path / "one" / "mask.nii.gz"
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--ct",
            str(cases[0].ct),
            "--pet",
            str(cases[0].pet),
            "--out",
            str(single),
            "--quantify",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (single.parent / "mask_lesions.csv").is_file() and (single.parent / "mask_patient.csv").is_file()


def _array(path: Path) -> np.ndarray:
    return read_volume(path, dtype=None).array


def _quantify(images: dict[str, Path], mask: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(
        app, ["quantify", "--pet", str(images["suv"]), "--mask", str(mask), "--out", str(out), *extra]
    )


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    return line


def test_a_probability_map_is_refused_unless_binarised(images: dict[str, Path], tmp_path: Path) -> None:
    mask = _array(images["mask"]).astype(np.float32) * 0.9
    mask[0, 0, 0] = 0.2  # a stray voxel below the threshold
    write_volume(tmp_path / "prob.nii.gz", mask, AFFINE)
    out = tmp_path / "q"
    line = _one_error_line(_quantify(images, tmp_path / "prob.nii.gz", out))
    assert "prob.nii.gz" in line and "values in (0, 1)" in line and "--threshold 0.5" in line
    assert not out.exists()
    result = _quantify(images, tmp_path / "prob.nii.gz", out, "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert "mask binarised at >= 0.5: 66 of 4800 voxel(s)" in result.output and "2 lesion(s)" in result.output
    (patient,) = csv.DictReader((out / "patient.csv").open())
    assert float(patient["mtv_ml"]) == pytest.approx(66 * 12 / 1000)


@pytest.mark.parametrize(
    ("values", "needle"),
    [(1.5, "non-integer values (e.g. 1.5; range 0 to 1.5)"), (-1.0, "negative values (minimum -1)")],
)
def test_an_image_passed_as_mask_is_refused(
    images: dict[str, Path], tmp_path: Path, values: float, needle: str
) -> None:
    write_volume(tmp_path / "image.nii.gz", _array(images["mask"]).astype(np.float32) * values, AFFINE)
    line = _one_error_line(_quantify(images, tmp_path / "image.nii.gz", tmp_path / "q"))
    assert "image.nii.gz" in line and needle in line and "--threshold T" in line
    assert not (tmp_path / "q").exists()


def test_integer_label_maps_stay_valid(images: dict[str, Path], tmp_path: Path) -> None:
    """HECKTOR masks: GTVp = 1, GTVn = 2, both lesion (as before)."""
    labels = _array(images["mask"]).astype(np.float32)  # whole numbers stored as floats are labels too
    labels[12:15, 12:15, 7:9] *= 2
    write_volume(tmp_path / "labels.nii.gz", labels, AFFINE)
    result = _quantify(images, tmp_path / "labels.nii.gz", tmp_path / "q")
    assert result.exit_code == 0, result.output
    assert "2 lesion(s)" in result.output and "binarised" not in result.output


@pytest.mark.parametrize("threshold", ["0", "-0.5", "nan"])
def test_threshold_must_be_positive(images: dict[str, Path], tmp_path: Path, threshold: str) -> None:
    line = _one_error_line(_quantify(images, images["mask"], tmp_path / "q", "--threshold", threshold))
    assert "--threshold must be a number > 0" in line
    assert not (tmp_path / "q").exists()


def test_quantify_probability_adds_the_confidence_columns(images: dict[str, Path], tmp_path: Path) -> None:
    mask = read_volume(images["mask"], dtype=None).array
    prob = np.where(mask > 0, 0.7, 0.02).astype(np.float32)
    prob[3, 3, 2] = 0.95  # the big lesion's maximum
    bits = np.where(mask > 0, 0xFF, 0).astype(np.uint8)
    bits[12:15, 12:15, 7] = 0x0F  # flips 4-7 find 9 of the small lesion's 18 voxels
    for name, arr in (("prob", prob), ("bits", bits), ("bad", prob * 2), ("moved", prob)):
        write_volume(
            tmp_path / f"{name}.nii.gz", arr, AFFINE if name != "moved" else np.diag([2.0, 2.0, 4.0, 1.0])
        )
    base = ["quantify", "--pet", str(images["suv"]), "--mask", str(images["mask"])]
    out = tmp_path / "q"
    extra = ["--probability", str(tmp_path / "prob.nii.gz"), "--flip-masks", str(tmp_path / "bits.nii.gz")]
    result = runner.invoke(app, [*base, *extra, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["voxels"]: r for r in csv.DictReader((out / "lesions.csv").open())}
    big, small = rows["48"], rows["18"]
    assert float(big["prob_mean"]) == pytest.approx((47 * 0.7 + 0.95) / 48)
    assert float(big["prob_max"]) == pytest.approx(0.95) and big["tta_volume_cv"] == "0"
    v = np.array([18] * 4 + [9] * 4, float)
    assert float(small["tta_volume_cv"]) == pytest.approx(v.std() / v.mean())
    result = runner.invoke(app, [*base, "--probability", str(tmp_path / "bad.nii.gz"), "--out", str(out)])
    assert result.exit_code == 2 and "bad.nii.gz" in result.output and "outside [0, 1]" in result.output
    result = runner.invoke(app, [*base, "--probability", str(tmp_path / "moved.nii.gz"), "--out", str(out)])
    assert result.exit_code == 2 and "moved.nii.gz" in result.output
    assert "probability-map grid" in result.output and "mask grid" in result.output.replace("\n", " ")
