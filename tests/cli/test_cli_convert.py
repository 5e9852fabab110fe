"""``h2aseg convert`` (DICOM -> AutoPET layout) and ``h2aseg predict --input DICOMDIR``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.geometry import resample_to_grid
from h2aseg.data.layouts import discover
from h2aseg.synth import synth_case

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from test_dicom import WEIGHT_KG, Study, pet_tags, stored_pet, write_series
from training_fixtures import save_tiny_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def headneck() -> dict[str, Any]:
    """CT (16x16x8, 2 mm) and a coarser, larger, shifted PET grid, as in HECKTOR and real scanners."""
    return synth_case("headneck", seed=5, shape=(16, 16, 8))


def write_study(root: Path, case: dict[str, Any], study: Study, **tag_changes: Any) -> None:
    """A PET and a CT series of one study under ``root/<StudyInstanceUID>/``."""
    tags = pet_tags(**tag_changes)
    folder = root / study.study_uid
    values = stored_pet(case["pet"], pet_tags())
    write_series(folder / "pet", values, case["pet_affine"], "PT", study, tags=tags, description="PET AC")
    write_series(folder / "ct", case["ct"].astype(np.float32), case["ct_affine"], "CT", study)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def test_convert_writes_suv_ctres_and_ct(headneck: dict[str, Any], tmp_path: Path) -> None:
    study = Study(patient_id="PETCT_1", study_uid="1.2.3.4.5.123456789")
    write_study(tmp_path / "dicom", headneck, study)
    out = tmp_path / "nifti"
    result = runner.invoke(app, ["convert", "--input", str(tmp_path / "dicom"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "written PETCT_1/20230115-23456789" in result.output
    folder = out / "PETCT_1" / "20230115-23456789"
    suv, suv_aff = _load(folder / "SUV.nii.gz")
    ctres, ctres_aff = _load(folder / "CTres.nii.gz")
    ct, ct_aff = _load(folder / "CT.nii.gz")
    np.testing.assert_allclose(suv, headneck["pet"], rtol=1e-3, atol=1e-3 * float(headneck["pet"].max()))
    np.testing.assert_allclose(suv_aff, headneck["pet_affine"], atol=1e-4)
    assert ctres.shape == suv.shape and np.allclose(ctres_aff, suv_aff, atol=1e-6)  # CTres on the PET grid
    expected = resample_to_grid(
        headneck["ct"].astype(np.float32),
        headneck["ct_affine"],
        headneck["pet_affine"],
        headneck["pet"].shape,
        order=1,
        cval=-1024.0,
        antialias=False,
    )
    np.testing.assert_allclose(ctres, expected, atol=0.05)
    assert (ctres == -1024).any()  # the PET field of view is larger than the CT's
    assert ct.dtype == np.int16 and np.array_equal(ct, headneck["ct"])
    np.testing.assert_allclose(ct_aff, headneck["ct_affine"], atol=1e-4)
    (case,) = discover(out)
    assert case.case_id == "PETCT_1_20230115-23456789" and case.ct.name == "CTres.nii.gz"


def test_existing_outputs_are_kept_unless_overwrite(headneck: dict[str, Any], tmp_path: Path) -> None:
    write_study(tmp_path / "dicom", headneck, Study())
    args = ["convert", "--input", str(tmp_path / "dicom"), "--out", str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    (suv,) = (tmp_path / "out").glob("*/*/SUV.nii.gz")
    stamp = suv.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "skipped" in again.output and suv.stat().st_mtime_ns == stamp
    forced = runner.invoke(app, [*args, "--overwrite"])
    assert forced.exit_code == 0 and "1 written" in forced.output and suv.stat().st_mtime_ns != stamp


def test_a_failed_study_is_reported_and_the_others_go_on(headneck: dict[str, Any], tmp_path: Path) -> None:
    good, bad = Study(patient_id="GOOD"), Study(patient_id="BAD")
    write_study(tmp_path / "dicom", headneck, good)
    write_study(tmp_path / "dicom", headneck, bad, PatientWeight=None)
    args = ["convert", "--input", str(tmp_path / "dicom"), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "failed BAD/" in result.output and "PatientWeight (0010,1030) is missing" in result.output
    assert len(list((tmp_path / "out" / "GOOD").glob("*/SUV.nii.gz"))) == 1
    assert not list((tmp_path / "out").glob("BAD/*/SUV.nii.gz"))
    fixed = runner.invoke(app, [*args, "--weight-kg", str(WEIGHT_KG)])  # the override supplies the weight
    assert fixed.exit_code == 0, fixed.output
    (suv,) = (tmp_path / "out" / "BAD").glob("*/SUV.nii.gz")
    np.testing.assert_allclose(
        _load(suv)[0], headneck["pet"], rtol=1e-3, atol=1e-3 * float(headneck["pet"].max())
    )


def test_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no DICOM here")
    args = ["convert", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no DICOM files" in result.output and "Traceback" not in result.output
    bad_time = [*args, "--injection-time", "9:15"]
    result = runner.invoke(app, bad_time)
    assert result.exit_code == 2 and "HH:MM:SS" in result.output


def test_predict_on_a_dicom_folder(headneck: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt")
    write_study(tmp_path / "dicom", headneck, Study(patient_id="P1"))
    write_study(tmp_path / "dicom", headneck, Study(patient_id="P2"), PatientWeight=None)
    out = tmp_path / "pred"
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(tmp_path / "dicom"),
        "--out-dir",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # P2 has no weight: reported, P1 still predicted
    assert "failed P2/" in result.output and "PatientWeight" in result.output
    (mask,) = out.glob("P1_*.nii.gz")
    (suv,) = (out / ".dicom" / "P1").glob("*/SUV.nii.gz")
    assert mask.name == f"P1_{suv.parent.name}.nii.gz"
    img = nib.load(mask)
    assert img.shape == headneck["pet"].shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, headneck["pet_affine"], atol=1e-4)
    again = runner.invoke(app, [*args, "--weight-kg", str(WEIGHT_KG)])
    assert again.exit_code == 0, again.output
    assert sorted(p.name.split("_")[0] for p in out.glob("*.nii.gz")) == ["P1", "P2"]


def test_dicom_variants_to_mask_lesions_and_report(headneck: dict[str, Any], tmp_path: Path) -> None:
    """BQML+START, BQML+ADMIN and CNTS with a scale factor: DICOM in, mask, lesions.csv and HTML out."""
    variants = {
        "START": pet_tags(),
        "ADMIN": pet_tags(DecayCorrection="ADMIN"),
        "CNTS": pet_tags(Units="CNTS", PhilipsActivityScale=0.8125),
    }
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt")
    for name, tags in variants.items():
        study = Study(patient_id=f"P{name}")
        folder = tmp_path / "dicom" / study.study_uid
        values = stored_pet(headneck["pet"], tags)
        pet_affine = headneck["pet_affine"]
        write_series(folder / "pet", values, pet_affine, "PT", study, tags=tags, description="PET")
        write_series(folder / "ct", headneck["ct"].astype(np.float32), headneck["ct_affine"], "CT", study)
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "dicom")]
    args += ["--out-dir", str(out)]
    result = runner.invoke(app, [*args, "--report", "--no-progress"])
    assert result.exit_code == 0, result.output
    for name in variants:
        (suv_path,) = (out / ".dicom" / f"P{name}").glob("*/SUV.nii.gz")
        np.testing.assert_allclose(nib.load(suv_path).get_fdata(), headneck["pet"], rtol=1e-3, atol=1e-3)
        case = f"P{name}_{suv_path.parent.name}"
        assert (out / f"{case}.nii.gz").is_file()
        assert (out / f"{case}_lesions.csv").read_text().startswith("case_id,lesion_id,")
        page = (out / "report" / f"{case}.html").read_text()
        assert case in page and "data:image/png;base64," in page
    index = (out / "report" / "index.html").read_text()
    assert all(f"P{name}_" in index for name in variants)


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("where", ["inside", "same", "through a symlink"])
def test_an_output_folder_inside_the_input_is_refused(
    headneck: dict[str, Any], tmp_path: Path, where: str
) -> None:
    """Nothing is written into the user's DICOM export; the error names both folders (symlinks resolved)."""
    dicom = tmp_path / "dicom"
    write_study(dicom, headneck, Study())
    (tmp_path / "link").symlink_to(dicom, target_is_directory=True)
    out = {"inside": dicom / "nifti", "same": dicom, "through a symlink": tmp_path / "link" / "nifti"}[where]
    before = _snapshot(dicom)
    result = runner.invoke(app, ["convert", "--input", str(dicom), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert f"output folder {out}" in line and f"inside the DICOM input folder {dicom}" in line
    if where == "through a symlink":
        assert f"(= {(dicom / 'nifti').resolve()})" in line
    assert _snapshot(dicom) == before and not (dicom / "nifti").exists()


def test_an_output_folder_beside_the_input_is_fine(headneck: dict[str, Any], tmp_path: Path) -> None:
    """Only inside is refused: a sibling whose name starts like the input's, or the input's parent."""
    dicom = tmp_path / "dicom"
    write_study(dicom, headneck, Study())
    for out in (tmp_path / "dicom-nifti", tmp_path):
        result = runner.invoke(app, ["convert", "--input", str(dicom), "--out", str(out)])
        assert result.exit_code == 0, result.output
