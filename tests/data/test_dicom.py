"""DICOM series -> volumes with their geometry, and PET -> body-weight SUV from the tags.

The series are written here with pydicom from the phantom's SUV (and CT) volumes: uint16 PET pixel data
with a RescaleSlope (and intercept) of its own per slice, as scanners store them.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from h2aseg.data.dicom import convert_folder, read_study, sanitise, study_names
from h2aseg.data.dicom_series import (
    DicomError,
    contains_dicom,
    is_dicom_file,
    pick_series,
    read_series,
    scan_folder,
)
from h2aseg.data.io import ImageError
from h2aseg.data.suv import SuvOverrides, parse_injection_time, parse_tm, to_suv
from h2aseg.synth import synth_case

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
PHILIPS = "Philips PET Private Group"
WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = 72.5, 312.0e6, 6586.2
INJECTION, SERIES = "091500", "101730"  # 62.5 min between injection and acquisition start
DELAY_S = 62.5 * 60


# ------------------------------------------------------------------------------------------ DICOM writer
def _ds(v: float) -> str:
    return f"{float(v):.10g}"


@dataclass
class Study:
    """What the writer puts in every file of a study (tags may be changed or removed per test)."""

    study_uid: str = field(default_factory=generate_uid)
    patient_id: str = "PETCT_0af7ffe12a"
    study_date: str = "20230115"


def pet_tags(**changes: Any) -> dict[str, Any]:
    """The PET series' SUV tags; ``None`` removes a tag. ``Radio*`` keys go into the sequence item."""
    tags: dict[str, Any] = {
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY"],
        "PatientWeight": _ds(WEIGHT_KG),
        "SeriesDate": "20230115",
        "SeriesTime": SERIES,
        "AcquisitionDate": "20230115",
        "AcquisitionTime": SERIES,
        "RadionuclideTotalDose": _ds(DOSE_BQ),
        "RadionuclideHalfLife": _ds(HALF_LIFE_S),
        "RadiopharmaceuticalStartTime": INJECTION,
    }
    tags.update(changes)
    return tags


_IN_SEQUENCE = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime")


def _geometry(affine: np.ndarray) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """ImageOrientationPatient, PixelSpacing, first position and slice step (LPS) of a RAS affine."""
    flip = np.diag([-1.0, -1.0, 1.0])
    lps = flip @ affine[:3, :3]
    sc, sr = np.linalg.norm(lps[:, 0]), np.linalg.norm(lps[:, 1])
    iop = [_ds(v) for v in np.concatenate([lps[:, 0] / sc, lps[:, 1] / sr])]
    return iop, [_ds(sr), _ds(sc)], flip @ affine[:3, 3], lps[:, 2]


def _apply_tags(ds: Dataset, tags: dict[str, Any]) -> None:
    item = Dataset()
    for kw, v in tags.items():
        if kw.startswith("Philips"):
            continue
        target = item if kw in _IN_SEQUENCE or kw == "RadiopharmaceuticalStartDateTime" else ds
        if v is not None:
            setattr(target, kw, v)
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    block = None
    for kw, offset in (("PhilipsSuvScale", 0x00), ("PhilipsActivityScale", 0x09)):
        if tags.get(kw) is not None:
            block = block or ds.private_block(0x7053, PHILIPS, create=True)
            block.add_new(offset, "DS", _ds(tags[kw]))


def _save(ds: FileDataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _slice_encoding(values: np.ndarray, modality: str, k: int) -> tuple[np.ndarray, float, float]:
    """Stored uint16 pixels and the slice's own slope/intercept (PET), or HU + 1024 (CT)."""
    if modality == "CT":
        intercept = min(-1024.0, float(values.min()))
        return np.round(values - intercept).astype(np.uint16), 1.0, intercept
    intercept = -0.25 * k * float(values.max()) / 20000.0  # a per-slice intercept, just in case
    slope = float(_ds(max(float(values.max()) - intercept, 1e-6) / (60000.0 - 1500.0 * k)))
    return np.round((values - intercept) / slope).astype(np.uint16), slope, float(_ds(intercept))


def write_series(
    folder: Path,
    values: np.ndarray,
    affine: np.ndarray,
    modality: str,
    study: Study,
    *,
    tags: dict[str, Any] | None = None,
    description: str = "",
    series_uid: str | None = None,
    name: Callable[[int], str] = lambda k: f"slice{k:03d}.dcm",
) -> list[Path]:
    """One file per slice (axis 2 of ``values``, indexed (column, row, slice)); returns the paths."""
    iop, spacing, first, step = _geometry(affine)
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(values.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_STORAGE if modality == "CT" else PET_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / name(k)
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study.study_uid, series_uid, modality
        ds.PatientID, ds.StudyDate, ds.SeriesDescription = study.patient_id, study.study_date, description
        ds.InstanceNumber = values.shape[2] - k  # reversed: the reader must sort by position
        ds.ImageOrientationPatient, ds.PixelSpacing = iop, spacing
        ds.ImagePositionPatient = [_ds(v) for v in first + k * step]
        raw, slope, intercept = _slice_encoding(values[:, :, k].T, modality, k)
        ds.Rows, ds.Columns = raw.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        if modality == "PT":
            _apply_tags(ds, tags if tags is not None else pet_tags())
        ds.PixelData = np.ascontiguousarray(raw).tobytes()
        _save(ds, path)
        paths.append(path)
    return paths


def stored_pet(suv: np.ndarray, tags: dict[str, Any]) -> np.ndarray:
    """What the scanner would store for ``suv`` under ``tags`` (the inverse of the SUV rules)."""
    if tags["Units"] == "GML":
        return suv
    if tags.get("PhilipsActivityScale") is None and tags.get("PhilipsSuvScale") is not None:
        return suv / float(tags["PhilipsSuvScale"])
    decay = 2.0 ** (-DELAY_S / HALF_LIFE_S) if tags["DecayCorrection"] == "START" else 1.0
    bqml = suv * DOSE_BQ * decay / (WEIGHT_KG * 1000.0)
    return bqml / float(tags.get("PhilipsActivityScale") or 1.0)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def phantom() -> dict[str, Any]:
    """A tiny whole-body study: rows != columns and anisotropic pixels, to catch swapped axes."""
    return synth_case("wholebody", seed=3, shape=(16, 12, 8), spacing=(4.0, 3.0, 5.0), n_lesions=2)


def _expect_suv(read: np.ndarray, suv: np.ndarray) -> None:
    np.testing.assert_allclose(read, suv, rtol=1e-3, atol=1e-3 * float(suv.max()))


def _expect_geometry(affine: np.ndarray, expected: np.ndarray) -> None:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, np.linalg.norm(expected[:3, :3], axis=0), rtol=1e-6)
    np.testing.assert_allclose(affine[:3, 3], expected[:3, 3], atol=1e-4)  # origin
    np.testing.assert_allclose(affine[:3, :3] / spacing, expected[:3, :3] / spacing, atol=1e-6)  # direction


def _write_pet(root: Path, phantom: dict[str, Any], tags: dict[str, Any], study: Study | None = None) -> Path:
    folder = root / "pet"
    write_series(
        folder, stored_pet(phantom["pet"], tags), phantom["pet_affine"], "PT", study or Study(), tags=tags
    )
    return folder


def _read_pet(root: Path, overrides: SuvOverrides | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    (study,) = scan_folder(root)
    vol, conv = to_suv(read_series(pick_series(study, "pet")), overrides)
    return vol.array, vol.affine, conv


# ------------------------------------------------------------------------------------------- round trips
CASES = {
    "bqml-start": pet_tags(),
    "bqml-admin": pet_tags(DecayCorrection="ADMIN"),
    "cnts-activity-scale": pet_tags(Units="CNTS", PhilipsActivityScale=0.8125),
    "cnts-suv-scale": pet_tags(Units="CNTS", PhilipsSuvScale=3.125e-4),
    "gml": pet_tags(Units="GML", PatientWeight=None, RadionuclideTotalDose=None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_suv_round_trip(phantom: dict[str, Any], tmp_path: Path, case: str) -> None:
    _write_pet(tmp_path, phantom, CASES[case])
    suv, affine, conv = _read_pet(tmp_path)
    assert suv.shape == phantom["pet"].shape and suv.dtype == np.float32
    _expect_suv(suv, phantom["pet"])
    _expect_geometry(affine, phantom["pet_affine"])
    if case == "bqml-start":
        assert conv.delay_s == pytest.approx(DELAY_S)
        assert conv.decay == pytest.approx(math.exp(-math.log(2) * DELAY_S / HALF_LIFE_S))
        assert conv.notes == []
    if case == "bqml-admin":
        assert conv.decay == 1.0 and conv.delay_s is None


def test_rescale_applied_per_slice(phantom: dict[str, Any], tmp_path: Path) -> None:
    folder = _write_pet(tmp_path, phantom, pet_tags())
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    slopes = {float(h.RescaleSlope) for h in headers}
    intercepts = {float(h.RescaleIntercept) for h in headers}
    assert len(slopes) == len(headers) and len(intercepts) == len(headers)
    _expect_suv(_read_pet(tmp_path)[0], phantom["pet"])


def test_oblique_geometry(phantom: dict[str, Any], tmp_path: Path) -> None:
    a, b = math.radians(20.0), math.radians(-8.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ phantom["pet_affine"][:3, :3]
    affine[:3, 3] = [-31.5, 12.25, -140.0]
    write_series(tmp_path / "pet", stored_pet(phantom["pet"], pet_tags()), affine, "PT", Study())
    suv, read_affine, _ = _read_pet(tmp_path)
    _expect_geometry(read_affine, affine)
    _expect_suv(suv, phantom["pet"])


def test_shuffled_names_nested_folders_and_other_files(phantom: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(4)
    names = [f"{'abc'[k % 3]}/{rng.randrange(10**6):06d}/IM{rng.randrange(10**8)}" for k in range(8)]
    rng.shuffle(names)
    write_series(
        tmp_path,
        stored_pet(phantom["pet"], pet_tags()),
        phantom["pet_affine"],
        "PT",
        Study(),
        name=lambda k: names[k],
    )
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "b" / "empty").parent.mkdir(exist_ok=True)
    (tmp_path / "b" / "empty").write_bytes(b"")
    (tmp_path / "a" / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    (study,) = scan_folder(tmp_path)
    assert [len(s.files) for s in study.series] == [8]
    suv, affine, _ = _read_pet(tmp_path)
    _expect_suv(suv, phantom["pet"])
    _expect_geometry(affine, phantom["pet_affine"])


def test_detection_of_dicom_files(phantom: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "SUV.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 300)
    assert not contains_dicom(tmp_path) and not contains_dicom(tmp_path / "missing")
    paths = write_series(
        tmp_path / "deep" / "er", phantom["ct"].astype(np.float32), phantom["ct_affine"], "CT", Study()
    )
    assert is_dicom_file(paths[0]) and not is_dicom_file(tmp_path / "nifti" / "SUV.nii.gz")
    assert contains_dicom(tmp_path)


def test_ct_series_in_hounsfield_units(phantom: dict[str, Any], tmp_path: Path) -> None:
    write_series(tmp_path, phantom["ct"].astype(np.float32), phantom["ct_affine"], "CT", Study())
    (study,) = scan_folder(tmp_path)
    vol = read_series(pick_series(study, "ct")).volume
    np.testing.assert_array_equal(vol.array, phantom["ct"].astype(np.float32))
    _expect_geometry(vol.affine, phantom["ct_affine"])


def test_undecodable_pixels_read_through_simpleitk(
    phantom: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_pet(tmp_path, phantom, pet_tags())

    def no_decoder(self: Dataset) -> np.ndarray:
        raise NotImplementedError("no pixel data handler for this transfer syntax")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoder))
    _expect_suv(_read_pet(tmp_path)[0], phantom["pet"])


# ---------------------------------------------------------------------------------------- choosing series
def test_two_pet_series_are_listed(phantom: dict[str, Any], tmp_path: Path) -> None:
    study = Study()
    values = stored_pet(phantom["pet"], pet_tags())
    write_series(tmp_path / "s1", values, phantom["pet_affine"], "PT", study, description="WB 3D MAC")
    write_series(tmp_path / "s2", values, phantom["pet_affine"], "PT", study, description="WB 3D MAC 2min")
    write_series(
        tmp_path / "s3",
        phantom["ct"].astype(np.float32),
        phantom["ct_affine"],
        "CT",
        study,
        description="CT WB 5.0 B30f",
    )
    (found,) = scan_folder(tmp_path)
    with pytest.raises(DicomError) as e:
        pick_series(found, "pet")
    msg = str(e.value)
    assert "2 PET series" in msg and "no way to choose" in msg
    for text in ("PT 'WB 3D MAC' (8 files", "PT 'WB 3D MAC 2min' (8 files", "CT 'CT WB 5.0 B30f' (8 files"):
        assert text in msg
    assert all(s.series_uid in msg for s in found.series)
    assert pick_series(found, "ct").description == "CT WB 5.0 B30f"


def test_attenuation_corrected_pet_is_chosen(phantom: dict[str, Any], tmp_path: Path) -> None:
    study = Study()
    values = stored_pet(phantom["pet"], pet_tags())
    write_series(tmp_path / "ac", values, phantom["pet_affine"], "PT", study, description="AC")
    write_series(
        tmp_path / "nac",
        values,
        phantom["pet_affine"],
        "PT",
        study,
        description="NAC",
        tags=pet_tags(CorrectedImage=["DECY"]),
    )
    (found,) = scan_folder(tmp_path)
    assert pick_series(found, "pet").description == "AC"


def test_missing_ct_series_is_listed(phantom: dict[str, Any], tmp_path: Path) -> None:
    _write_pet(tmp_path, phantom, pet_tags())
    (found,) = scan_folder(tmp_path)
    with pytest.raises(DicomError, match=r"no CT series .* series found: PT '' \(8 files"):
        pick_series(found, "ct")


def test_missing_or_duplicate_slices(phantom: dict[str, Any], tmp_path: Path) -> None:
    folder = _write_pet(tmp_path, phantom, pet_tags())
    (folder / "slice003.dcm").unlink()
    with pytest.raises(DicomError, match="non-uniform slice spacing"):
        _read_pet(tmp_path)
    shutil.copy(folder / "slice004.dcm", folder / "slice003.dcm")
    with pytest.raises(DicomError, match="same ImagePositionPatient"):
        _read_pet(tmp_path)


# ------------------------------------------------------------------------------------------- tag errors
TAG_ERRORS = {
    "weight-missing": ({"PatientWeight": None}, r"PatientWeight \(0010,1030\) is missing"),
    "weight-too-low": ({"PatientWeight": "0.5"}, r"PatientWeight \(0010,1030\) = 0.5 kg is implausible"),
    "weight-too-high": ({"PatientWeight": "650"}, r"PatientWeight \(0010,1030\) = 650 kg is implausible"),
    "dose-missing": ({"RadionuclideTotalDose": None}, r"RadionuclideTotalDose \(0018,1074\) in Radio"),
    "dose-too-low": (
        {"RadionuclideTotalDose": "500000"},
        r"RadionuclideTotalDose \(0018,1074\).*implausible",
    ),
    "dose-too-high": ({"RadionuclideTotalDose": "6e9"}, r"RadionuclideTotalDose \(0018,1074\).*implausible"),
    "half-life-missing": ({"RadionuclideHalfLife": None}, r"RadionuclideHalfLife \(0018,1075\) .*missing"),
    "injection-after-start": (
        {"RadiopharmaceuticalStartTime": "103000"},
        r"injection \(RadiopharmaceuticalStartTime .*\) is after the acquisition start",
    ),
    "injection-missing": (
        {"RadiopharmaceuticalStartTime": None},
        r"RadiopharmaceuticalStartTime \(0018,1072\)",
    ),
    "injection-malformed": (
        {"RadiopharmaceuticalStartTime": "9h15"},
        r"RadiopharmaceuticalStartTime .* malformed",
    ),
    "units-unknown": ({"Units": "PROPCPS"}, r"Units \(0054,1001\) is 'PROPCPS'"),
    "units-missing": ({"Units": None}, r"Units \(0054,1001\) is missing"),
    "decay-none": ({"DecayCorrection": "NONE"}, r"DecayCorrection \(0054,1102\) is 'NONE'"),
    "decay-missing": ({"DecayCorrection": None}, r"DecayCorrection \(0054,1102\) is missing"),
    "times-missing": ({"SeriesTime": None, "AcquisitionTime": None}, r"SeriesTime \(0008,0031\) and Acq"),
    "cnts-without-scale": ({"Units": "CNTS"}, r"Units \(0054,1001\) is CNTS but neither .*\(7053,1000\)"),
}


@pytest.mark.parametrize("case", list(TAG_ERRORS))
def test_tag_errors_name_tag_and_file(phantom: dict[str, Any], tmp_path: Path, case: str) -> None:
    changes, pattern = TAG_ERRORS[case]
    folder = _write_pet(tmp_path, phantom, pet_tags(**changes))
    with pytest.raises(DicomError, match=pattern) as e:
        _read_pet(tmp_path)
    assert str(e.value).startswith(str(folder / "slice000.dcm"))  # the first slice in volume order
    assert isinstance(e.value, ImageError)


# -------------------------------------------------------------------------------- overrides and fallbacks
def test_overrides_supply_a_missing_weight(phantom: dict[str, Any], tmp_path: Path) -> None:
    _write_pet(tmp_path, phantom, pet_tags(PatientWeight=None))
    suv, _, conv = _read_pet(tmp_path, SuvOverrides(weight_kg=WEIGHT_KG))
    _expect_suv(suv, phantom["pet"])
    assert "--weight-kg replaces the header's value" in conv.notes
    with pytest.raises(DicomError, match=r"--weight-kg = 900 kg is implausible"):
        _read_pet(tmp_path, SuvOverrides(weight_kg=900.0))


def test_overrides_replace_dose_and_injection_time(phantom: dict[str, Any], tmp_path: Path) -> None:
    tags = pet_tags()
    values = stored_pet(phantom["pet"], tags)
    wrong = pet_tags(RadionuclideTotalDose=_ds(2 * DOSE_BQ), RadiopharmaceuticalStartTime="080000")
    write_series(tmp_path / "pet", values, phantom["pet_affine"], "PT", Study(), tags=wrong)
    fixed = SuvOverrides(dose_mbq=DOSE_BQ / 1e6, injection_time=parse_injection_time("09:15:00"))
    suv, _, conv = _read_pet(tmp_path, fixed)
    _expect_suv(suv, phantom["pet"])
    assert conv.delay_s == pytest.approx(DELAY_S) and "injection time from --injection-time" in conv.notes


def test_philips_suv_scale_refuses_overrides(phantom: dict[str, Any], tmp_path: Path) -> None:
    _write_pet(tmp_path, phantom, CASES["cnts-suv-scale"])
    with pytest.raises(DicomError, match=r"--weight-kg cannot be applied.*\(7053,1000\)"):
        _read_pet(tmp_path, SuvOverrides(weight_kg=70.0))


@pytest.mark.parametrize(
    ("changes", "note"),
    [
        ({"SeriesTime": None}, "AcquisitionDate/AcquisitionTime (SeriesTime missing)"),
        ({"SeriesTime": "134500"}, "AcquisitionDate/AcquisitionTime (SeriesTime is after it"),
        ({"SeriesDate": None}, None),
    ],
)
def test_acquisition_time_fallbacks(
    phantom: dict[str, Any], tmp_path: Path, changes: dict, note: str | None
) -> None:
    _write_pet(tmp_path, phantom, pet_tags(**changes))
    suv, _, conv = _read_pet(tmp_path)
    _expect_suv(suv, phantom["pet"])
    assert conv.delay_s == pytest.approx(DELAY_S)
    if note:
        assert any(note in n for n in conv.notes), conv.notes


def test_injection_datetime_comes_first(phantom: dict[str, Any], tmp_path: Path) -> None:
    tags = pet_tags(
        RadiopharmaceuticalStartTime="070000", RadiopharmaceuticalStartDateTime="20230115091500.00+0100"
    )
    write_series(
        tmp_path / "pet",
        stored_pet(phantom["pet"], pet_tags()),
        phantom["pet_affine"],
        "PT",
        Study(),
        tags=tags,
    )
    _expect_suv(_read_pet(tmp_path)[0], phantom["pet"])


def test_time_parsing() -> None:
    assert parse_tm("101730.5") == time(10, 17, 30, 500000)
    assert parse_tm("1017") == time(10, 17) and parse_tm("10:17:30") == time(10, 17, 30)
    assert parse_injection_time("09:15:00") == time(9, 15)
    for bad in ("9:15", "091500", "25:00:00"):
        with pytest.raises(ValueError):
            parse_injection_time(bad)


# ----------------------------------------------------------------------------------------- whole studies
def test_read_study_and_folder_names(phantom: dict[str, Any], tmp_path: Path) -> None:
    study = Study(patient_id="Doe^John / 42", study_uid="1.2.826.0.1.3680043.8.498.12345678901")
    _write_pet(tmp_path, phantom, pet_tags(), study)
    write_series(tmp_path / "ct", phantom["ct"].astype(np.float32), phantom["ct_affine"], "CT", study)
    (found,) = scan_folder(tmp_path)
    ct, suv, _ = read_study(found)
    assert ct.shape == phantom["ct"].shape and suv.shape == phantom["pet"].shape
    assert study_names([found]) == {found.study_uid: ("Doe_John_42", "20230115-45678901")}
    assert sanitise("..", "UNKNOWN") == "UNKNOWN" and sanitise(" .hidden", "x") == "hidden"


def test_study_name_collisions_use_the_whole_uid(tmp_path: Path) -> None:
    from h2aseg.data.dicom_series import StudyFiles

    a = StudyFiles("1.2.3.4.99912345678", "P1", "20230115")
    b = StudyFiles("1.2.3.5.99912345678", "P1", "20230115")
    names = study_names([a, b])
    assert names[a.study_uid] == ("P1", "20230115-123499912345678")
    assert names[b.study_uid] == ("P1", "20230115-123599912345678")


def test_convert_folder_without_dicom_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("hello")
    with pytest.raises(DicomError, match="no DICOM files"):
        convert_folder(tmp_path / "in", tmp_path / "out")
