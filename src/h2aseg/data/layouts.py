"""Finding PET/CT cases on disk: AutoPET (TCIA NIfTI and nnU-Net releases), HECKTOR 2022, or a CSV manifest.

:func:`discover` returns one :class:`Case` per study, sorted by ``case_id``. Layouts (see
``challenge-metrics-and-layouts.md`` sections 2 and 3):

* ``autopet`` — TCIA/fdat NIfTI release: ``<patient>/<study>/{CTres,SUV,SEG}.nii.gz`` (CTres is the CT already
  resampled onto the PET grid, SUV the PET in SUV). Several studies per patient; the patient id is the
  patient folder, the case id ``<patient>_<study>`` (as nnU-Net's own conversion names it).
* ``autopet-nnunet`` — ``imagesTr/<id>_0000.nii.gz`` (CT), ``<id>_0001.nii.gz`` (PET, SUV),
  ``labelsTr/<id>.nii.gz``; ids ``<tracer>_<patient>_<study>`` (patient = second ``_`` field) or
  ``PETCT_<hash>_<study>``. ``swap_channels=True`` reads ``_0000`` as PET (the autoPET I baseline order).
* ``hecktor`` — ``imagesTr/<ID>__CT.nii.gz``, ``<ID>__PT.nii.gz``, ``labelsTr/<ID>.nii.gz`` (1 = GTVp,
  2 = GTVn), one study per patient.
* ``csv`` — a manifest with columns ``case_id, patient_id, ct, pet, label`` (``label`` optional or empty;
  relative paths are relative to the CSV's folder). ``root`` is the .csv or a folder holding exactly one.

Without label folders / files the cases have ``label=None`` (inference). Any inconsistency (a missing file,
duplicate ids, an empty folder, an unrecognised layout) raises :class:`LayoutError` naming the paths.

The naming rules live here once, for reading and writing: :func:`autopet_case_id`, :func:`nnunet_case_id`,
:func:`hecktor_case_id` build case ids; :func:`autopet_study_paths`, :func:`nnunet_case_paths`,
:func:`hecktor_case_paths` and :func:`csv_case_paths` the relative paths of a case's CT, PET and label (what
:func:`discover` finds back), and :func:`manifest_text` a CSV manifest (:func:`write_manifest` writes one).
The phantom (:mod:`h2aseg.synth`) writes its cohorts through them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from h2aseg.data.io import IMAGE_SUFFIXES, image_suffix, strip_image_suffix
from h2aseg.errors import InputError
from h2aseg.files import atomic_write_text

LAYOUTS = ("autopet", "autopet-nnunet", "hecktor", "csv")
AUTOPET_FILES = {"ct": "CTres", "pet": "SUV", "label": "SEG"}
NNUNET_SEPARATOR, NNUNET_CHANNELS = "_", ("0000", "0001")  # CT, PET (``swap_channels``: PET, CT)
HECKTOR_SEPARATOR, HECKTOR_CHANNELS = "__", ("CT", "PT")
PAIRED_DIRS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))
CSV_DIRS = ("images", "labels")
CSV_COLUMNS = ("case_id", "patient_id", "ct", "pet", "label")
WRITE_SUFFIX = ".nii.gz"
_MAX_LISTED = 8


class LayoutError(InputError):
    """A dataset folder cannot be read as the requested layout; the message names the offending paths."""


@dataclass(frozen=True)
class Case:
    """One PET/CT study: ids and the paths of its CT, PET (SUV) and label (``None`` when unlabelled)."""

    case_id: str
    patient_id: str
    ct: Path
    pet: Path
    label: Path | None


def _listing(paths: Iterable[object]) -> str:
    items = [str(p) for p in paths]
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _visible(p) and image_suffix(p))


def _image_dirs(root: Path) -> tuple[Path, Path] | None:
    """(images, labels) folders of an nnU-Net-style tree: imagesTr/labelsTr, else imagesTs/labelsTs."""
    for img, lab in PAIRED_DIRS:
        if (root / img).is_dir():
            return root / img, root / lab
    return None


def _suffixes(separator: str, channels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{separator}{ch}" for ch in channels)


# ------------------------------------------------------------------------------ naming (read and write)
class CasePaths(NamedTuple):
    """Paths of one case's CT, PET and label, relative to the dataset root."""

    ct: Path
    pet: Path
    label: Path


def autopet_case_id(patient: str, study: str) -> str:
    """AutoPET TCIA case id: ``<patient folder>_<study folder>`` (as nnU-Net's own conversion names it)."""
    return f"{patient}_{study}"


def autopet_study_paths(patient: str, study: str) -> CasePaths:
    """``<patient>/<study>/{CTres,SUV,SEG}.nii.gz`` (AutoPET TCIA NIfTI release)."""
    d = Path(patient) / study
    return CasePaths(*(d / f"{AUTOPET_FILES[k]}{WRITE_SUFFIX}" for k in ("ct", "pet", "label")))


def nnunet_case_id(tracer: str, patient: str, study: str) -> str:
    """AutoPET nnU-Net case id ``<tracer>_<patient>_<study>``; :func:`nnunet_patient_id` parses it back."""
    return f"{tracer}_{patient}_{study}"


def _paired_paths(case_id: str, separator: str, channels: tuple[str, str]) -> CasePaths:
    images, labels = (Path(d) for d in PAIRED_DIRS[0])
    ct, pet = (images / f"{case_id}{separator}{ch}{WRITE_SUFFIX}" for ch in channels)
    return CasePaths(ct, pet, labels / f"{case_id}{WRITE_SUFFIX}")


def nnunet_case_paths(case_id: str) -> CasePaths:
    """``imagesTr/<id>_0000.nii.gz`` (CT), ``imagesTr/<id>_0001.nii.gz`` (PET), ``labelsTr/<id>.nii.gz``."""
    return _paired_paths(case_id, NNUNET_SEPARATOR, NNUNET_CHANNELS)


def hecktor_case_id(centre: str, number: int) -> str:
    """HECKTOR case id ``<CENTRE>-<NNN>`` (e.g. ``CHUM-001``)."""
    return f"{centre}-{int(number):03d}"


def hecktor_case_paths(case_id: str) -> CasePaths:
    """``imagesTr/<ID>__CT.nii.gz``, ``imagesTr/<ID>__PT.nii.gz``, ``labelsTr/<ID>.nii.gz``."""
    return _paired_paths(case_id, HECKTOR_SEPARATOR, HECKTOR_CHANNELS)


def csv_case_paths(case_id: str) -> CasePaths:
    """``images/<id>_ct.nii.gz``, ``images/<id>_pet.nii.gz``, ``labels/<id>.nii.gz`` (for a manifest)."""
    images, labels = (Path(d) for d in CSV_DIRS)
    return CasePaths(
        images / f"{case_id}_ct{WRITE_SUFFIX}",
        images / f"{case_id}_pet{WRITE_SUFFIX}",
        labels / f"{case_id}{WRITE_SUFFIX}",
    )


def manifest_text(cases: Iterable[Case], base: str | Path | None = None) -> str:
    """A CSV manifest (:data:`CSV_COLUMNS`) of ``cases``; paths relative to ``base`` (its folder), or
    absolute (resolved) without one. A missing label is an empty cell."""
    root = None if base is None else Path(base)

    def cell(q: Path | None) -> str:
        if q is None:
            return ""
        return str(Path(q).resolve() if root is None else Path(q).relative_to(root))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cases:
        w.writerow([c.case_id, c.patient_id, *(cell(q) for q in (c.ct, c.pet, c.label))])
    return buf.getvalue()


def write_manifest(cases: Iterable[Case], path: str | Path, base: str | Path | None = None) -> Path:
    """Write :func:`manifest_text` of ``cases`` to ``path``, atomically (absolute paths unless ``base``);
    ``discover(path, "csv")`` reads the cases back. Returns the path."""
    return atomic_write_text(path, manifest_text(cases, base))


# ------------------------------------------------------------------------------------------- reading
def detect_layout(root: str | Path) -> str:
    """Guess the layout of ``root`` (see the module docstring); raises :class:`LayoutError` naming it."""
    root = Path(root)
    if not root.exists():
        raise LayoutError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise LayoutError(f"{root}: is a file; expected a dataset folder or a .csv manifest")
    entries = [p for p in root.iterdir() if _visible(p)]
    if not entries:
        raise LayoutError(f"{root}: folder is empty")
    dirs = _image_dirs(root)
    if dirs is not None:
        names = [p.name for p in _images_in(dirs[0])]
        if any(strip_image_suffix(n).endswith(_suffixes(HECKTOR_SEPARATOR, HECKTOR_CHANNELS)) for n in names):
            return "hecktor"
        if any(strip_image_suffix(n).endswith(_suffixes(NNUNET_SEPARATOR, NNUNET_CHANNELS)) for n in names):
            return "autopet-nnunet"
        raise LayoutError(
            f"{dirs[0]}: no '<id>__CT'/'<id>__PT' (HECKTOR) or '<id>_0000'/'<id>_0001' (nnU-Net) images found"
        )
    for sub in sorted(p for p in entries if p.is_dir()):
        for study in sorted(p for p in sub.iterdir() if p.is_dir() and _visible(p)):
            if any(
                (study / f"{AUTOPET_FILES[k]}{s}").exists()
                for k in ("ct", "pet")
                for s in (".nii.gz", ".nii")
            ):
                return "autopet"
    csvs = sorted(p for p in entries if p.is_file() and p.suffix.lower() == ".csv")
    if len(csvs) == 1:
        return "csv"
    raise LayoutError(
        f"{root}: unrecognised dataset layout; expected <patient>/<study>/{{CTres,SUV,SEG}}.nii.gz "
        "(autopet), imagesTr/<id>_0000.nii.gz (autopet-nnunet), imagesTr/<ID>__CT.nii.gz (hecktor) "
        "or one manifest .csv"
        + (f" (found {len(csvs)} .csv files: {_listing(csvs)})" if len(csvs) > 1 else "")
    )


def discover(root: str | Path, layout: str = "auto", *, swap_channels: bool = False) -> list[Case]:
    """Find all cases under ``root`` in ``layout`` (``auto`` guesses it); returns them sorted by case id.

    ``swap_channels`` applies to ``autopet-nnunet`` only: ``_0000`` is then read as PET and ``_0001`` as CT.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    if not root.exists():
        raise LayoutError(f"{root}: no such file or folder")
    if layout == "csv":
        cases = _discover_csv(root)
    else:
        if not root.is_dir():
            raise LayoutError(f"{root}: expected a folder for layout {layout!r}")
        if not any(_visible(p) for p in root.iterdir()):
            raise LayoutError(f"{root}: folder is empty")
        if layout == "autopet":
            cases = _discover_autopet(root)
        elif layout == "autopet-nnunet":
            cases = _discover_nnunet(root, swap_channels)
        else:
            cases = _discover_hecktor(root)
    if not cases:
        raise LayoutError(f"{root}: no cases found for layout {layout!r}")
    _check_unique(cases, root)
    return sorted(cases, key=lambda c: c.case_id)


def _check_unique(cases: list[Case], root: Path) -> None:
    seen: dict[str, Case] = {}
    dups: list[str] = []
    for c in cases:
        if c.case_id in seen:
            dups.append(f"{c.case_id!r} ({seen[c.case_id].ct} and {c.ct})")
        seen[c.case_id] = c
    if dups:
        raise LayoutError(f"{root}: duplicate case id(s): {_listing(dups)}")


def _find(folder: Path, stem: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    return None


def _discover_autopet(root: Path) -> list[Case]:
    cases: list[Case] = []
    missing: list[Path] = []
    unlabelled: list[Case] = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        studies = sorted(p for p in patient.iterdir() if p.is_dir() and _visible(p))
        if not studies:
            missing.append(patient / "<study>")
            continue
        for study in studies:
            found = {k: _find(study, stem) for k, stem in AUTOPET_FILES.items()}
            for k in ("ct", "pet"):
                if found[k] is None:
                    missing.append(study / f"{AUTOPET_FILES[k]}.nii.gz")
            if found["ct"] is None or found["pet"] is None:
                continue
            case = Case(
                autopet_case_id(patient.name, study.name),
                patient.name,
                found["ct"],
                found["pet"],
                found["label"],
            )
            cases.append(case)
            if case.label is None:
                unlabelled.append(case)
    if unlabelled and len(unlabelled) < len(cases):  # labelled dataset with some labels missing
        missing += [c.ct.parent / f"{AUTOPET_FILES['label']}.nii.gz" for c in unlabelled]
    if missing:
        raise LayoutError(f"{root}: missing file(s) in the AutoPET layout: {_listing(missing)}")
    return cases


def nnunet_patient_id(case_id: str) -> str:
    """Patient id encoded in an AutoPET nnU-Net case id.

    ``fdg_<patient>_<study>`` / ``psma_<patient>_<study>`` give ``<patient>`` (``name.split("_")[1]``, as the
    challenge's fold script groups them); ``PETCT_<hash>_<study>`` (nnU-Net's Dataset221) gives
    ``PETCT_<hash>``; any other id is its own patient.
    """
    parts = case_id.split("_")
    if len(parts) >= 3 and parts[0].lower() in ("fdg", "psma"):
        return parts[1]
    if len(parts) >= 3 and parts[0] == "PETCT":
        return f"PETCT_{parts[1]}"
    return case_id


def _discover_paired(
    root: Path,
    layout: str,
    title: str,
    separator: str,
    channels: tuple[str, str],
    example: str,
    make_case: Callable[[str, dict[str, Path], Path | None], Case],
) -> list[Case]:
    """Cases from ``imagesTr/<id><separator><channel>`` files (one per channel) and ``labelsTr/<id>``."""
    dirs = _image_dirs(root)
    if dirs is None:
        raise LayoutError(f"{root}: no imagesTr (or imagesTs) folder for the {layout} layout")
    images, labels = dirs
    found: dict[str, dict[str, Path]] = {}
    for p in _images_in(images):
        cid, sep, ch = strip_image_suffix(p.name).rpartition(separator)
        if not sep or ch not in channels:
            raise LayoutError(f"{p}: not {title} image name ({example})")
        if ch in found.setdefault(cid, {}):
            raise LayoutError(f"{images}: duplicate case id {cid!r} ({found[cid][ch]} and {p})")
        found[cid][ch] = p
    have_labels = labels.is_dir()
    cases, missing = [], []
    for cid, files in sorted(found.items()):
        missing += [images / f"{cid}{separator}{need}.nii.gz" for need in channels if need not in files]
        lab = _find(labels, cid) if have_labels else None
        if have_labels and lab is None:
            missing.append(labels / f"{cid}.nii.gz")
        if all(need in files for need in channels):
            cases.append(make_case(cid, files, lab))
    if missing:
        raise LayoutError(f"{root}: missing file(s) in the {layout} layout: {_listing(missing)}")
    return cases


def _discover_nnunet(root: Path, swap_channels: bool) -> list[Case]:
    c_ch, p_ch = NNUNET_CHANNELS[::-1] if swap_channels else NNUNET_CHANNELS

    def make(cid: str, ch: dict[str, Path], lab: Path | None) -> Case:
        return Case(cid, nnunet_patient_id(cid), ch[c_ch], ch[p_ch], lab)

    return _discover_paired(
        root,
        "autopet-nnunet",
        "an nnU-Net",
        NNUNET_SEPARATOR,
        NNUNET_CHANNELS,
        "<id>_0000.nii.gz / <id>_0001.nii.gz",
        make,
    )


def _discover_hecktor(root: Path) -> list[Case]:
    def make(cid: str, m: dict[str, Path], lab: Path | None) -> Case:
        return Case(cid, cid, m[HECKTOR_CHANNELS[0]], m[HECKTOR_CHANNELS[1]], lab)

    return _discover_paired(
        root,
        "hecktor",
        "a HECKTOR",
        HECKTOR_SEPARATOR,
        HECKTOR_CHANNELS,
        "<ID>__CT.nii.gz / <ID>__PT.nii.gz",
        make,
    )


def _discover_csv(root: Path) -> list[Case]:
    if root.is_dir():
        csvs = sorted(p for p in root.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() == ".csv")
        if len(csvs) != 1:
            raise LayoutError(
                f"{root}: expected exactly one manifest .csv, found {len(csvs)}"
                + (f": {_listing(csvs)}" if csvs else "")
            )
        manifest = csvs[0]
    else:
        manifest = root
    base = manifest.parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LayoutError(f"{manifest}: cannot be read as CSV ({e})") from e
    needed = [c for c in ("case_id", "ct", "pet") if c not in header]
    if needed:
        raise LayoutError(
            f"{manifest}: missing column(s) {', '.join(needed)}; expected columns {', '.join(CSV_COLUMNS)}"
        )
    cases, missing = [], []
    for n, row in enumerate(rows, start=2):
        cid = row.get("case_id", "")
        if not cid:
            raise LayoutError(f"{manifest}: line {n}: empty case_id")
        paths: dict[str, Path | None] = {}
        for col in ("ct", "pet", "label"):
            val = row.get(col, "")
            if not val:
                if col != "label":
                    raise LayoutError(f"{manifest}: line {n} ({cid}): empty '{col}' path")
                paths[col] = None
                continue
            p = Path(val).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                missing.append(p)
            paths[col] = p
        cases.append(Case(cid, row.get("patient_id") or cid, paths["ct"], paths["pet"], paths["label"]))  # type: ignore[arg-type]
    if missing:
        raise LayoutError(f"{manifest}: missing file(s) listed in the manifest: {_listing(missing)}")
    return cases
