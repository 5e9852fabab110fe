"""DICOM files on disk -> studies and series -> 3D volumes with their geometry.

* :func:`scan_folder` walks a folder (nested folders, any file names) and groups the DICOM files by
  StudyInstanceUID and SeriesInstanceUID. A file is DICOM when it carries the Part 10 preamble (``DICM`` at
  byte 128); other files, unreadable files and files without a SeriesInstanceUID (a DICOMDIR) are skipped
  quietly.
* :func:`pick_series` chooses a study's CT (Modality ``CT``) or PET (Modality ``PT``) series: localizers
  (ImageType ``LOCALIZER``) and single-file series are never candidates; among several PET series the one
  whose CorrectedImage holds ``ATTN`` is taken when it is the only one. Otherwise :class:`DicomError`
  lists every series of the study (modality, description, number of files, SeriesInstanceUID).
* :func:`read_series` reads one series as a :class:`~h2aseg.data.io.Volume`: slices sorted by the projection
  of ImagePositionPatient on the slice normal (row x column direction of ImageOrientationPatient), uniform
  spacing checked, each slice's own RescaleSlope/RescaleIntercept applied. Array axes are (column, row,
  slice); the affine is converted from DICOM's LPS to RAS. Pixel data pydicom cannot decode (e.g. JPEG
  without a plugin) are read through SimpleITK/GDCM instead.

Every problem raises :class:`DicomError` (an :class:`~h2aseg.data.io.ImageError`) naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from h2aseg.data.io import ImageError, Volume

MODALITIES = {"ct": "CT", "pet": "PT"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SCAN_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "PatientID",
    "StudyDate",
    "ImageType",
    "CorrectedImage",
]
_SPACING_RTOL = 0.01  # relative variation of the slice spacing tolerated (DS rounding, table jitter)


class DicomError(ImageError):
    """A DICOM folder, series or tag cannot be used; the message names the tag and the file."""


@dataclass
class SeriesFiles:
    """The files of one series and what is needed to choose it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    image_type: tuple[str, ...]
    corrected: tuple[str, ...]
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """``PT 'WB AC' (311 files, series 1.2.3)`` for listings."""
        return (
            f"{self.modality or '?'} {self.description!r} ({len(self.files)} files, series {self.series_uid})"
        )


@dataclass
class StudyFiles:
    """One study: its ids and its series, in order of SeriesInstanceUID."""

    study_uid: str
    patient_id: str
    study_date: str
    series: list[SeriesFiles] = field(default_factory=list)

    def listing(self) -> str:
        return "; ".join(s.describe() for s in self.series) or "no series"


@dataclass
class SeriesVolume:
    """A series read as a volume; ``headers`` are the slices' datasets (no pixel data), in volume order."""

    volume: Volume
    headers: list[Dataset]
    files: list[Path]


# ------------------------------------------------------------------------------------------ finding files
def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_dicom_files(root: str | Path) -> Iterator[Path]:
    """Every DICOM file under ``root`` (nested folders, any names), in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = Path(folder) / name
            if is_dicom_file(p):
                yield p


def contains_dicom(root: str | Path) -> bool:
    """True when ``root`` is a folder holding at least one DICOM file (stops at the first)."""
    return Path(root).is_dir() and next(iter_dicom_files(root), None) is not None


def _text(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    return "" if v is None else str(v).strip()


def _multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    v = ds.get(keyword)
    if v is None or v == "":
        return ()
    items = [v] if isinstance(v, str) else list(v)
    return tuple(str(x).strip().upper() for x in items)


def scan_folder(root: str | Path) -> list[StudyFiles]:
    """Group the DICOM files under ``root`` into studies and series (sorted by UID)."""
    studies: dict[str, StudyFiles] = {}
    series: dict[tuple[str, str], SeriesFiles] = {}
    for path in iter_dicom_files(root):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
        except Exception:  # corrupt or not an image: skipped like any other non-DICOM file
            continue
        st_uid, se_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
        if not st_uid or not se_uid:
            continue
        study = studies.setdefault(st_uid, StudyFiles(st_uid, _text(ds, "PatientID"), _text(ds, "StudyDate")))
        key = (st_uid, se_uid)
        if key not in series:
            series[key] = SeriesFiles(
                st_uid,
                se_uid,
                _text(ds, "Modality").upper(),
                _text(ds, "SeriesDescription"),
                _multi(ds, "ImageType"),
                _multi(ds, "CorrectedImage"),
            )
            study.series.append(series[key])
        series[key].files.append(path)
    out = sorted(studies.values(), key=lambda s: s.study_uid)
    for s in out:
        s.series.sort(key=lambda x: x.series_uid)
    return out


# -------------------------------------------------------------------------------------- choosing a series
def pick_series(study: StudyFiles, kind: str) -> SeriesFiles:
    """The study's ``ct`` or ``pet`` series; :class:`DicomError` listing the series when none or ambiguous."""
    modality = MODALITIES[kind]
    found = [s for s in study.series if s.modality == modality]
    usable = [s for s in found if "LOCALIZER" not in s.image_type and len(s.files) > 1]
    if len(usable) > 1 and kind == "pet":
        corrected = [s for s in usable if "ATTN" in s.corrected]
        if len(corrected) == 1:
            usable = corrected
    if len(usable) == 1:
        return usable[0]
    where = f"study {study.study_uid} (patient {study.patient_id or '?'})"
    files = study.series[0].files[0] if study.series else ""
    if not usable:
        why = f"no {kind.upper()} series (Modality {modality}, more than one file, not a localizer)"
    else:
        why = f"{len(usable)} {kind.upper()} series (Modality {modality}) and no way to choose one"
    raise DicomError(f"{files}: {where}: {why}; series found: {study.listing()}")


# ---------------------------------------------------------------------------------------- reading volumes
def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    v = ds.get(keyword)
    try:
        arr = np.asarray([float(x) for x in v], dtype=np.float64) if v is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DicomError(f"{path}: {keyword} is missing or invalid ({v!r}); expected {n} numbers")
    return arr


def _check_image(ds: Dataset, path: Path) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError(
            f"{path}: NumberOfFrames is {frames}; multi-frame (enhanced) images are not supported"
        )
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DicomError(f"{path}: SamplesPerPixel is {spp}; expected a grey-scale image (1)")
    for kw in ("Rows", "Columns"):
        if not ds.get(kw):
            raise DicomError(f"{path}: {kw} is missing")


def _sorted_slices(
    headers: list[Dataset], files: list[Path]
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Slice order along the normal, the in-plane direction cosines (2, 3), pixel spacing and the step."""
    iop = _floats(headers[0], "ImageOrientationPatient", 6, files[0])
    spacing = _floats(headers[0], "PixelSpacing", 2, files[0])
    shape = (int(headers[0].Rows), int(headers[0].Columns))
    pos = []
    for ds, p in zip(headers, files, strict=True):
        _check_image(ds, p)
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, p), iop, atol=1e-4):
            raise DicomError(f"{p}: ImageOrientationPatient differs from {files[0]}'s within one series")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, p), spacing, rtol=1e-4):
            raise DicomError(f"{p}: PixelSpacing differs from {files[0]}'s within one series")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DicomError(f"{p}: Rows/Columns differ from {files[0]}'s within one series")
        pos.append(_floats(ds, "ImagePositionPatient", 3, p))
    cosines = iop.reshape(2, 3)
    normal = np.cross(cosines[0], cosines[1])
    positions = np.asarray(pos)
    dist = positions @ normal
    if len(dist) < 2:
        raise DicomError(f"{files[0]}: a series of one slice is not a 3D volume")
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    gaps = np.diff(dist[order])
    mean = float(dist[order[-1]] - dist[order[0]]) / (len(order) - 1)
    if np.any(gaps <= 1e-3 * max(mean, 1e-6)):
        i = int(np.argmin(gaps))
        raise DicomError(
            f"{files[order[i + 1]]}: same ImagePositionPatient as {files[order[i]]}; the series "
            "holds several images per position (time frames, gates or a second reconstruction)"
        )
    if np.max(np.abs(gaps - mean)) > _SPACING_RTOL * mean:
        raise DicomError(
            f"{files[order[0]]}: non-uniform slice spacing in series (from {gaps.min():.4g} to "
            f"{gaps.max():.4g} mm along the normal); slices missing?"
        )
    step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    return order, cosines, spacing, step


def _affine(cosines: np.ndarray, spacing: np.ndarray, step: np.ndarray, first: np.ndarray) -> np.ndarray:
    """RAS affine of (column, row, slice) indices. PixelSpacing is (between rows, between columns)."""
    lps = np.column_stack([cosines[0] * spacing[1], cosines[1] * spacing[0], step])
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ lps
    affine[:3, 3] = _LPS_TO_RAS @ first
    return affine


def _rescale(ds: Dataset, path: Path) -> tuple[float, float]:
    out = []
    for kw, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        v = ds.get(kw)
        try:
            out.append(default if v is None or str(v).strip() == "" else float(v))
        except (TypeError, ValueError):
            raise DicomError(f"{path}: {kw} is not a number ({v!r})") from None
    return out[0], out[1]


def slice_values(path: Path, header: Dataset) -> np.ndarray:
    """One slice's rescaled values (stored * RescaleSlope + RescaleIntercept), float32 (rows, columns)."""
    try:
        raw = pydicom.dcmread(path).pixel_array
    except Exception as e:  # no decoder for the transfer syntax, or broken pixel data
        return _slice_values_sitk(path, header, e)
    shape = (int(header.Rows), int(header.Columns))
    if raw.shape != shape:
        raise DicomError(f"{path}: pixel data of shape {raw.shape}, expected Rows x Columns {shape}")
    slope, intercept = _rescale(header, path)
    return (raw.astype(np.float64) * slope + intercept).astype(np.float32)


def _slice_values_sitk(path: Path, header: Dataset, cause: Exception) -> np.ndarray:
    """Fallback decoder: GDCM (through SimpleITK) applies the slice's rescale itself."""
    import SimpleITK as sitk

    shape = (int(header.Rows), int(header.Columns))
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except Exception as e:
        raise DicomError(
            f"{path}: pixel data cannot be decoded (pydicom: {type(cause).__name__}: {cause}; "
            f"SimpleITK: {type(e).__name__}); decompress the series first (e.g. gdcmconv --raw)"
        ) from e
    if arr.size != shape[0] * shape[1]:
        raise DicomError(f"{path}: pixel data of shape {arr.shape}, expected Rows x Columns {shape}")
    return arr.reshape(shape).astype(np.float32)


def read_series(series: SeriesFiles) -> SeriesVolume:
    """Read a series as a volume (see the module docstring); pixel data are read once, in slice order."""
    files = list(series.files)
    headers = []
    for p in files:
        try:
            headers.append(pydicom.dcmread(p, stop_before_pixels=True))
        except Exception as e:
            raise DicomError(f"{p}: cannot be read as DICOM ({type(e).__name__}: {e})") from e
    order, cosines, spacing, step = _sorted_slices(headers, files)
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    array = np.empty((cols, rows, len(files)), dtype=np.float32)
    for k, (p, ds) in enumerate(zip(files, headers, strict=True)):
        array[:, :, k] = slice_values(p, ds).T
    first = _floats(headers[0], "ImagePositionPatient", 3, files[0])
    volume = Volume(array=array, affine=_affine(cosines, spacing, step, first), path=str(files[0]))
    return SeriesVolume(volume, headers, files)
