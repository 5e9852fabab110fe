"""DICOM PET/CT studies -> the AutoPET NIfTI layout, as the AutoPET release was made from its DICOM.

For each study found under a folder (:func:`~h2aseg.data.dicom_series.scan_folder`: any file names, nested
folders, non-DICOM files skipped), :func:`convert_folder` writes

* ``<patient>/<study>/SUV.nii.gz``: the PET series in body-weight SUV on its own grid (float32);
* ``<patient>/<study>/CTres.nii.gz``: the CT resampled onto the PET grid through both images' world geometry
  (trilinear, no smoothing; outside the CT -1024 HU; float32);
* ``<patient>/<study>/CT.nii.gz``: the CT as read (int16 when its rescaled values are integers).

SUV (the full rules, fallbacks and checks are in :mod:`h2aseg.data.suv`):
``SUV = activity concentration (Bq/ml) x weight (g) / decay-corrected dose (Bq)``, with the activity
concentration from each slice's RescaleSlope/RescaleIntercept (Units BQML; Philips CNTS through the private
scale factors (7053,1000)/(7053,1009); GML is already SUV), the dose decayed from the injection
(RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime) to the acquisition start
(SeriesDate/SeriesTime, else the earliest AcquisitionTime) when DecayCorrection is START, and not decayed
when it is ADMIN. A missing or implausible tag is a :class:`DicomError` naming the tag and the file;
:class:`SuvOverrides` supply or replace weight, dose and injection time.

Folder names: ``<patient>`` is the sanitised PatientID (``UNKNOWN`` when empty), ``<study>`` the StudyDate
and the last 8 digits of the StudyInstanceUID (``20230115-40212345``; all its digits when two studies of a
patient would share a name); the case id is :func:`~h2aseg.data.layouts.autopet_case_id`. Writes are
atomic; existing outputs are kept unless ``overwrite``; an output folder inside the input folder is refused
before anything is written (:func:`check_output_outside`). One study's failure is reported in its
:class:`StudyResult` and the others go on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from h2aseg.data.dicom_series import (
    DicomError,
    StudyFiles,
    contains_dicom,
    pick_series,
    read_series,
    scan_folder,
)
from h2aseg.data.geometry import resample_to_grid
from h2aseg.data.io import ImageError, Volume, check_overlap, write_volume
from h2aseg.data.layouts import WRITE_SUFFIX, autopet_case_id, autopet_study_paths
from h2aseg.data.suv import SuvConversion, SuvOverrides, to_suv

__all__ = [
    "CT_OUTSIDE_HU",
    "DicomError",
    "StudyResult",
    "SuvOverrides",
    "check_output_outside",
    "contains_dicom",
    "convert_folder",
    "convert_study",
    "ct_on_pet_grid",
    "output_paths",
    "read_study",
    "sanitise",
    "study_names",
]

CT_OUTSIDE_HU = -1024.0
_UID_DIGITS = 8


@dataclass
class StudyResult:
    """What happened to one study: ``status`` is ``written``, ``skipped`` (outputs exist) or ``failed``."""

    study_uid: str
    patient: str
    study: str
    status: str
    paths: dict[str, Path] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    suv: SuvConversion | None = None

    @property
    def case_id(self) -> str:
        return autopet_case_id(self.patient, self.study)


# ------------------------------------------------------------------------------------------------- naming
def sanitise(name: str, fallback: str) -> str:
    """A folder-safe name: runs of characters outside ``[A-Za-z0-9._-]`` become ``_``; never hidden."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._-")
    return clean or fallback


def _study_name(study: StudyFiles, digits: int | None) -> str:
    uid_digits = re.sub(r"\D", "", study.study_uid)
    suffix = (uid_digits[-digits:] if digits else uid_digits) or sanitise(study.study_uid, "study")
    day = sanitise(study.study_date, "")
    return f"{day}-{suffix}" if day else suffix


def study_names(studies: list[StudyFiles]) -> dict[str, tuple[str, str]]:
    """StudyInstanceUID -> (patient folder, study folder); all UID digits where 8 would collide."""
    names = {s.study_uid: (sanitise(s.patient_id, "UNKNOWN"), _study_name(s, _UID_DIGITS)) for s in studies}
    counts: dict[tuple[str, str], int] = {}
    for pair in names.values():
        counts[pair] = counts.get(pair, 0) + 1
    for s in studies:
        if counts[names[s.study_uid]] > 1:
            names[s.study_uid] = (names[s.study_uid][0], _study_name(s, None))
    return names


def output_paths(out_root: Path, patient: str, study: str) -> dict[str, Path]:
    """``{"SUV": ..., "CTres": ..., "CT": ...}`` under ``out_root`` (the AutoPET TCIA layout)."""
    rel = autopet_study_paths(patient, study)
    return {
        "SUV": out_root / rel.pet,
        "CTres": out_root / rel.ct,
        "CT": out_root / rel.ct.parent / f"CT{WRITE_SUFFIX}",
    }


# ---------------------------------------------------------------------------------------------- converting
def read_study(
    study: StudyFiles, overrides: SuvOverrides | None = None
) -> tuple[Volume, Volume, SuvConversion]:
    """(CT as read, PET in SUV, how the SUV was computed) of one study; the PET is read first."""
    pet_series = read_series(pick_series(study, "pet"))
    suv, conv = to_suv(pet_series, overrides)
    ct = read_series(pick_series(study, "ct")).volume
    check_overlap(ct, suv)
    return ct, suv, conv


def ct_on_pet_grid(ct: Volume, pet: Volume) -> np.ndarray:
    """CTres: the CT resampled onto the PET grid (trilinear, no smoothing, -1024 HU outside)."""
    return resample_to_grid(
        ct.array, ct.affine, pet.affine, pet.shape, order=1, cval=CT_OUTSIDE_HU, antialias=False
    )


def _ct_array(ct: Volume) -> np.ndarray:
    arr = ct.array
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if arr.size and np.array_equal(arr, np.round(arr)) and arr.min() >= lo and arr.max() <= hi:
        return arr.astype(np.int16)
    return arr.astype(np.float32)


def convert_study(
    study: StudyFiles,
    out_root: str | Path,
    names: tuple[str, str],
    overrides: SuvOverrides | None = None,
    *,
    overwrite: bool = False,
) -> StudyResult:
    """Write one study's SUV, CTres and CT; errors are returned in the result, not raised."""
    patient, name = names
    paths = output_paths(Path(out_root), patient, name)
    result = StudyResult(study.study_uid, patient, name, "written", paths)
    todo = [k for k, p in paths.items() if overwrite or not p.exists()]
    if not todo:
        result.status = "skipped"
        return result
    try:
        ct, suv, conv = read_study(study, overrides)
        result.suv, result.notes = conv, list(conv.notes)
        arrays = {
            "SUV": lambda: suv.array.astype(np.float32),
            "CTres": lambda: ct_on_pet_grid(ct, suv),
            "CT": lambda: _ct_array(ct),
        }
        for key in todo:
            affine = ct.affine if key == "CT" else suv.affine
            write_volume(paths[key], arrays[key](), affine)
    except ImageError as e:
        result.status, result.error = "failed", str(e)
    except (
        Exception
    ) as e:  # a broken file can raise anything inside pydicom; one study must not stop the rest
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
    return result


def check_output_outside(root: Path, out_root: Path) -> None:
    """Raise :class:`DicomError` naming both folders when ``out_root`` is ``root`` or lies inside it, symlinks
    resolved: the NIfTI files would be written into the user's DICOM export."""
    src, dst = root.resolve(), out_root.resolve()
    if dst.is_relative_to(src):
        raise DicomError(
            f"output folder {_resolved(out_root)} lies inside the DICOM input folder {_resolved(root)}: "
            "nothing written; choose an output folder outside the DICOM export"
        )


def _resolved(path: Path) -> str:
    """``path``, and where it resolves to when that differs (symlinks, ``..``, a relative path)."""
    real = path.resolve()
    return str(path) if real == path else f"{path} (= {real})"


def convert_folder(
    root: str | Path,
    out_root: str | Path,
    overrides: SuvOverrides | None = None,
    *,
    overwrite: bool = False,
    on_study: Callable[[StudyResult], None] | None = None,
) -> list[StudyResult]:
    """Convert every study under ``root`` into ``out_root`` (see the module docstring).

    Raises :class:`DicomError` when ``root`` holds no DICOM study or ``out_root`` lies inside it (before
    anything is written); per-study failures are in the results.
    """
    root = Path(root)
    if not root.is_dir():
        raise DicomError(f"{root}: not a folder")
    check_output_outside(root, Path(out_root))
    studies = scan_folder(root)
    if not studies:
        raise DicomError(f"{root}: no DICOM files (with StudyInstanceUID and SeriesInstanceUID) found")
    names = study_names(studies)
    results = []
    for study in studies:
        result = convert_study(study, out_root, names[study.study_uid], overrides, overwrite=overwrite)
        results.append(result)
        if on_study is not None:
            on_study(result)
    return results
