"""Body-weight SUV from the tags of a DICOM PET series.

    SUV = activity concentration (Bq/ml) x patient weight (g) / decay-corrected injected dose (Bq)

computed per slice as ``SUV = (stored value x RescaleSlope + RescaleIntercept) x factor``, where the
rescale is each slice's own (it varies per slice on some scanners) and ``factor`` depends on Units
(0054,1001):

* ``BQML`` (values in Bq/ml): ``factor = weight_kg x 1000 / (dose_Bq x decay)``.
* ``CNTS`` (Philips counts): the private "Philips PET Private Group" tags. (7053,1000) "SUV Scale Factor"
  turns rescaled counts into SUVbw directly (the scanner's weight, dose and decay are built in) and is used
  as the factor when present; (7053,1009) "Activity Concentration Scale Factor" turns rescaled counts into
  Bq/ml, after which the BQML rule applies. (7053,1009) is used when (7053,1000) is absent, or when an
  override (weight, dose, injection time) is given, which (7053,1000) cannot honour.
* ``GML`` (g/ml): already SUVbw; ``factor = 1`` (no weight, dose or time is read).
* anything else (e.g. ``CM2ML``, ``PROPCPS``) is an error.

Decay (DecayCorrection (0054,1102)):

* ``START``: the image is decay-corrected to the acquisition start, so the dose is decayed from the injection
  to that time: ``decay = 2 ** (-delay / RadionuclideHalfLife)``, ``delay = start - injection`` (seconds).
* ``ADMIN``: already corrected to the administration time: ``decay = 1`` (no times or half-life needed).
* anything else (``NONE``: per-frame decay) is an error.

Times: the acquisition start is SeriesDate + SeriesTime. Fallbacks (each reported in
:attr:`SuvConversion.notes`): when SeriesTime is missing, the earliest AcquisitionDate + AcquisitionTime
over the slices; when SeriesTime is *after* that earliest acquisition time (a post-processed series, whose
SeriesTime is the reconstruction time), GE's private scan DateTime (0009,100D) "GEMS_PETD_01" if present,
else the earliest acquisition time. Dates missing on a time fall back to AcquisitionDate, then StudyDate.
The injection time is RadiopharmaceuticalStartDateTime (0018,1078), else RadiopharmaceuticalStartTime
(0018,1072) on the acquisition's date (an injection the day before must then come as a DateTime).
Weight is PatientWeight (0010,1030) in kg; dose RadionuclideTotalDose (0018,1074) in Bq (not corrected for
residual activity in the syringe), half-life RadionuclideHalfLife (0018,1075) in s, the last three from
the first item of RadiopharmaceuticalInformationSequence (0054,0016).

Checks, each a :class:`~h2aseg.data.dicom_series.DicomError` naming the tag and the file: a missing or
unparseable tag that the rule needs; weight outside 1-500 kg; dose outside 1-5000 MBq; half-life missing or
not positive; injection after the acquisition start, or more than 10 half-lives before it; unknown Units or
DecayCorrection. :class:`SuvOverrides` (the CLI's ``--weight-kg``, ``--dose-mbq``, ``--injection-time``)
replace the header's value when given (and are checked the same way).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from h2aseg.data.dicom_series import DicomError, SeriesVolume
from h2aseg.data.io import Volume
from h2aseg.errors import InputError

_T = TypeVar("_T")
UNITS = ("BQML", "CNTS", "GML")
WEIGHT_KG = (1.0, 500.0)
DOSE_MBQ = (1.0, 5000.0)
MAX_HALF_LIVES = 10.0
PHILIPS_CREATOR = "Philips PET Private Group"
PHILIPS_SUV_SCALE = (0x7053, 0x00, "SUV Scale Factor (7053,1000)")
PHILIPS_ACTIVITY_SCALE = (0x7053, 0x09, "Activity Concentration Scale Factor (7053,1009)")
GE_CREATOR = "GEMS_PETD_01"
GE_SCAN_DATETIME = (0x0009, 0x0D, "GE scan DateTime (0009,100D)")


@dataclass(frozen=True)
class SuvOverrides:
    """Values that supply or replace the header's (``None``: use the header)."""

    weight_kg: float | None = None
    dose_mbq: float | None = None
    injection_time: time | None = None

    def given(self) -> list[str]:
        """The CLI flags of the overrides that are set."""
        names = (
            ("weight_kg", "--weight-kg"),
            ("dose_mbq", "--dose-mbq"),
            ("injection_time", "--injection-time"),
        )
        return [flag for attr, flag in names if getattr(self, attr) is not None]


@dataclass
class SuvConversion:
    """How a PET series becomes SUV: ``factors`` per slice (SUV = rescaled value x factor) and provenance."""

    factors: np.ndarray
    units: str
    weight_kg: float | None = None
    dose_mbq: float | None = None
    decay_correction: str | None = None
    delay_s: float | None = None
    decay: float = 1.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"Units {self.units}"]
        if self.weight_kg is not None:
            parts.append(f"weight {self.weight_kg:g} kg, dose {self.dose_mbq:g} MBq")
        if self.decay_correction:
            parts.append(f"DecayCorrection {self.decay_correction}")
        if self.delay_s is not None:
            parts.append(f"injection {self.delay_s / 60:.1f} min before start, decay {self.decay:.4f}")
        return ", ".join(parts)


# ------------------------------------------------------------------------------------------ parsing tags
def tag_name(keyword: str) -> str:
    """``PatientWeight (0010,1030)``."""
    t = tag_for_keyword(keyword)
    return keyword if t is None else f"{keyword} ({t >> 16:04X},{t & 0xFFFF:04X})"


_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DT = re.compile(r"^(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?$")


def parse_tm(text: str) -> time:
    """DICOM TM (``HHMMSS.FFFFFF``, shorter forms, or ``HH:MM:SS``); ``ValueError`` when malformed."""
    m = _TM.match(text.strip().replace(":", ""))
    if not m:
        raise ValueError(f"not a time: {text!r}")
    h, mi, s = (int(g) if g else 0 for g in m.groups()[:3])
    frac = int((m.group(4) or "0").ljust(6, "0"))
    return time(h, mi, min(s, 59), frac)


def parse_da(text: str) -> date:
    """DICOM DA (``YYYYMMDD``; the old ``YYYY.MM.DD`` too)."""
    s = text.strip().replace(".", "").replace("-", "")
    if not re.fullmatch(r"\d{8}", s):
        raise ValueError(f"not a date: {text!r}")
    return date(int(s[:4]), int(s[4:6]), int(s[6:]))


def parse_dt(text: str) -> datetime:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF``, shorter forms); a ``+HHMM``/``-HHMM`` offset is ignored."""
    s = re.sub(r"[+-]\d{4}$", "", text.strip())
    m = _DT.match(s)
    if not m:
        raise ValueError(f"not a date-time: {text!r}")
    return datetime.combine(parse_da(m.group(1)), parse_tm(m.group(2)) if m.group(2) else time())


def parse_injection_time(text: str) -> time:
    """The CLI's ``--injection-time HH:MM:SS``; malformed: :class:`~h2aseg.errors.InputError`."""
    if not re.fullmatch(r"\d{2}:\d{2}:\d{2}", text.strip()):
        raise InputError(f"--injection-time must be HH:MM:SS, got {text!r}")
    try:
        return parse_tm(text)
    except ValueError as e:  # e.g. 25:00:00
        raise InputError(f"--injection-time {text!r} is not a time of day ({e})") from None


def _raw(ds: Dataset | None, keyword: str) -> str:
    v = None if ds is None else ds.get(keyword)
    return "" if v is None else str(v).strip()


def _number(ds: Dataset | None, keyword: str, path: Path) -> float | None:
    text = _raw(ds, keyword)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DicomError(f"{path}: {tag_name(keyword)} is not a number ({text!r})") from None
    if not math.isfinite(value):
        raise DicomError(f"{path}: {tag_name(keyword)} is not finite ({text!r})")
    return value


def _when(ds: Dataset | None, keyword: str, path: Path, parser: Callable[[str], _T]) -> _T | None:
    text = _raw(ds, keyword)
    if not text:
        return None
    try:
        return parser(text)
    except ValueError:
        raise DicomError(f"{path}: {tag_name(keyword)} is malformed ({text!r})") from None


def _as_float(value: Any) -> float:
    """A private tag's value: DS text, a number, or (VR UN) bytes holding text or a little-endian double."""
    if isinstance(value, bytes | bytearray):
        try:
            return float(value.decode("ascii").strip("\0 ").split("\\")[0])
        except (UnicodeDecodeError, ValueError):
            if len(value) == 8:
                return float(struct.unpack("<d", value)[0])
            if len(value) == 4:
                return float(struct.unpack("<f", value)[0])
            raise ValueError(f"cannot read {value!r} as a number") from None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _private(ds: Dataset, group: int, offset: int, creator: str) -> Any:
    """A private element by creator; by its usual tag (block 0x10) when the file has no such creator."""
    try:
        return ds.get_private_item(group, offset, creator).value
    except KeyError:
        pass
    if creator in ds.private_creators(group):
        return None
    elem = ds.get((group, 0x1000 + offset))
    return None if elem is None else elem.value


def _philips(headers: Sequence[Dataset], spec: tuple[int, int, str], path: Path) -> np.ndarray | None:
    """Per-slice values of a Philips scale factor, or ``None`` when no slice has it."""
    group, offset, name = spec
    raw = [_private(ds, group, offset, PHILIPS_CREATOR) for ds in headers]
    if all(v is None for v in raw):
        return None
    try:
        values = np.asarray([_as_float(v) if v is not None else np.nan for v in raw], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DicomError(f"{path}: Philips {name} is not a number ({e})") from None
    if not np.all(np.isfinite(values) & (values > 0)):
        raise DicomError(f"{path}: Philips {name} is missing in some slices or not positive")
    return values


def _in_sequence(keyword: str) -> str:
    return f"{tag_name(keyword)} in {tag_name('RadiopharmaceuticalInformationSequence')}"


def _radiopharmaceutical(ds: Dataset) -> Dataset | None:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else None


# ---------------------------------------------------------------------------------------- weight and dose
def _weight_kg(ds: Dataset, path: Path, overrides: SuvOverrides) -> float:
    if overrides.weight_kg is not None:
        value, source = float(overrides.weight_kg), "--weight-kg"
    else:
        value, source = _number(ds, "PatientWeight", path), tag_name("PatientWeight")
        if value is None:
            raise DicomError(f"{path}: {source} is missing or empty; give --weight-kg")
    lo, hi = WEIGHT_KG
    if not lo <= value <= hi:
        raise DicomError(f"{path}: {source} = {value:g} kg is implausible (expected {lo:g}-{hi:g} kg)")
    return value


def _dose_mbq(ds: Dataset, path: Path, overrides: SuvOverrides) -> float:
    if overrides.dose_mbq is not None:
        value, source = float(overrides.dose_mbq), "--dose-mbq"
    else:
        bq = _number(_radiopharmaceutical(ds), "RadionuclideTotalDose", path)
        source = _in_sequence("RadionuclideTotalDose")
        if bq is None:
            raise DicomError(f"{path}: {source} is missing or empty; give --dose-mbq")
        value = bq / 1e6
    lo, hi = DOSE_MBQ
    if not lo <= value <= hi:
        raise DicomError(f"{path}: {source} = {value:g} MBq is implausible (expected {lo:g}-{hi:g} MBq)")
    return value


# ------------------------------------------------------------------------------------------------- times
def _series_date(ds: Dataset, path: Path) -> tuple[date, str]:
    for kw in ("SeriesDate", "AcquisitionDate", "StudyDate"):
        d = _when(ds, kw, path, parse_da)
        if d is not None:
            return d, kw
    raise DicomError(f"{path}: {tag_name('SeriesDate')} (and AcquisitionDate, StudyDate) is missing")


def _earliest_acquisition(headers: Sequence[Dataset], day: date, path: Path) -> datetime | None:
    times = []
    for ds in headers:
        t = _when(ds, "AcquisitionTime", path, parse_tm)
        if t is not None:
            d = _when(ds, "AcquisitionDate", path, parse_da) or day
            times.append(datetime.combine(d, t))
    return min(times) if times else None


def scan_start(headers: Sequence[Dataset], path: Path) -> tuple[datetime, str]:
    """The acquisition start and where it came from (see the module docstring for the fallbacks)."""
    ds = headers[0]
    day, day_source = _series_date(ds, path)
    acquired = _earliest_acquisition(headers, day, path)
    t = _when(ds, "SeriesTime", path, parse_tm)
    if t is not None:
        series = datetime.combine(day, t)
        source = "SeriesDate/SeriesTime" + (
            "" if day_source == "SeriesDate" else f" (date from {day_source})"
        )
        if acquired is None or series <= acquired:
            return series, source
        ge = _private(ds, GE_SCAN_DATETIME[0], GE_SCAN_DATETIME[1], GE_CREATOR)
        if ge is not None:
            text = ge.decode("ascii", "replace") if isinstance(ge, bytes) else str(ge)
            try:
                return parse_dt(
                    text.strip("\0 ")
                ), f"{GE_SCAN_DATETIME[2]} (SeriesTime is after AcquisitionTime)"
            except ValueError:
                raise DicomError(f"{path}: {GE_SCAN_DATETIME[2]} is malformed ({text!r})") from None
        return (
            acquired,
            "earliest AcquisitionDate/AcquisitionTime (SeriesTime is after it: a post-processed series)",
        )
    if acquired is not None:
        return acquired, "earliest AcquisitionDate/AcquisitionTime (SeriesTime missing)"
    raise DicomError(
        f"{path}: {tag_name('SeriesTime')} and {tag_name('AcquisitionTime')} are missing; "
        "the acquisition start is unknown"
    )


def _injection(item: Dataset | None, day: date, path: Path, overrides: SuvOverrides) -> tuple[datetime, str]:
    if overrides.injection_time is not None:
        return datetime.combine(day, overrides.injection_time), "--injection-time"
    dt = _when(item, "RadiopharmaceuticalStartDateTime", path, parse_dt)
    if dt is not None:
        return dt, "RadiopharmaceuticalStartDateTime"
    t = _when(item, "RadiopharmaceuticalStartTime", path, parse_tm)
    if t is not None:
        return datetime.combine(day, t), "RadiopharmaceuticalStartTime (on the acquisition date)"
    raise DicomError(
        f"{path}: {tag_name('RadiopharmaceuticalStartDateTime')} and "
        f"{tag_name('RadiopharmaceuticalStartTime')} are missing; give --injection-time"
    )


def _decay(headers: Sequence[Dataset], path: Path, overrides: SuvOverrides) -> tuple[float, float, list[str]]:
    """(delay s, decay factor, notes) for DecayCorrection START."""
    item = _radiopharmaceutical(headers[0])
    half_life = _number(item, "RadionuclideHalfLife", path)
    if half_life is None or half_life <= 0:
        raise DicomError(
            f"{path}: {_in_sequence('RadionuclideHalfLife')} is missing or not positive "
            f"({_raw(item, 'RadionuclideHalfLife')!r}); needed for DecayCorrection START"
        )
    start, start_source = scan_start(headers, path)
    injected, injection_source = _injection(item, start.date(), path, overrides)
    delay = (start - injected).total_seconds()
    if delay < 0:
        raise DicomError(
            f"{path}: injection ({injection_source} {injected:%Y-%m-%d %H:%M:%S}) is after the acquisition "
            f"start ({start_source} {start:%Y-%m-%d %H:%M:%S})"
        )
    if delay > MAX_HALF_LIVES * half_life:
        raise DicomError(
            f"{path}: injection ({injection_source} {injected:%Y-%m-%d %H:%M:%S}) is {delay / 3600:.1f} h "
            f"before the acquisition start ({start_source}), over {MAX_HALF_LIVES:g} half-lives: implausible"
        )
    notes = [] if start_source == "SeriesDate/SeriesTime" else [f"acquisition start from {start_source}"]
    if injection_source == "--injection-time":
        notes.append("injection time from --injection-time")
    return delay, 2.0 ** (-delay / half_life), notes


# ----------------------------------------------------------------------------------------------- the rule
def _bqml(
    headers: Sequence[Dataset], path: Path, overrides: SuvOverrides, to_bqml: np.ndarray, units: str
) -> SuvConversion:
    ds = headers[0]
    weight = _weight_kg(ds, path, overrides)
    dose = _dose_mbq(ds, path, overrides)
    correction = _raw(ds, "DecayCorrection").upper()
    if correction == "START":
        delay, decay, notes = _decay(headers, path, overrides)
    elif correction == "ADMIN":
        delay, decay, notes = None, 1.0, []
    elif not correction:
        raise DicomError(f"{path}: {tag_name('DecayCorrection')} is missing (expected START or ADMIN)")
    else:
        raise DicomError(f"{path}: {tag_name('DecayCorrection')} is {correction!r}; supported: START, ADMIN")
    notes += [
        f"{flag} replaces the header's value" for flag in overrides.given() if flag != "--injection-time"
    ]
    factors = to_bqml * (weight * 1000.0) / (dose * 1e6 * decay)
    return SuvConversion(factors, units, weight, dose, correction, delay, decay, notes)


def _cnts(headers: Sequence[Dataset], path: Path, overrides: SuvOverrides) -> SuvConversion:
    suv_scale = _philips(headers, PHILIPS_SUV_SCALE, path)
    activity = _philips(headers, PHILIPS_ACTIVITY_SCALE, path)
    if activity is not None and (suv_scale is None or overrides.given()):
        conv = _bqml(headers, path, overrides, activity, "CNTS")
        conv.notes.insert(0, f"counts to Bq/ml by the Philips {PHILIPS_ACTIVITY_SCALE[2]}")
        return conv
    if suv_scale is not None:
        if overrides.given():
            raise DicomError(
                f"{path}: {', '.join(overrides.given())} cannot be applied: Units CNTS with only the Philips "
                f"{PHILIPS_SUV_SCALE[2]}, which already holds the scanner's weight, dose and decay"
            )
        return SuvConversion(suv_scale, "CNTS", notes=[f"SUV from the Philips {PHILIPS_SUV_SCALE[2]}"])
    raise DicomError(
        f"{path}: {tag_name('Units')} is CNTS but neither the Philips {PHILIPS_SUV_SCALE[2]} nor the "
        f"{PHILIPS_ACTIVITY_SCALE[2]} is present"
    )


def suv_conversion(
    headers: Sequence[Dataset], path: str | Path, overrides: SuvOverrides | None = None
) -> SuvConversion:
    """The per-slice SUV factors of a PET series (``headers`` in volume order; ``path`` for messages)."""
    path = Path(path)
    overrides = overrides or SuvOverrides()
    units = _raw(headers[0], "Units").upper()
    if units == "GML":
        notes = [f"{flag} ignored: Units GML are already SUV" for flag in overrides.given()]
        return SuvConversion(np.ones(len(headers)), units, notes=notes)
    if units == "CNTS":
        return _cnts(headers, path, overrides)
    if units == "BQML":
        return _bqml(headers, path, overrides, np.ones(len(headers)), units)
    what = "is missing" if not units else f"is {units!r}"
    raise DicomError(f"{path}: {tag_name('Units')} {what}; supported: {', '.join(UNITS)}")


def to_suv(series: SeriesVolume, overrides: SuvOverrides | None = None) -> tuple[Volume, SuvConversion]:
    """The PET series in SUV (float32, same grid) and how it was converted."""
    conv = suv_conversion(series.headers, series.files[0], overrides)
    suv = series.volume.array * conv.factors.astype(np.float32)[None, None, :]
    return Volume(array=suv.astype(np.float32), affine=series.volume.affine, path=series.volume.path), conv
