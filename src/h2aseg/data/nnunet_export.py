"""nnU-Net v2 as a comparison method: a cohort in any layout -> an nnU-Net v2 *raw* dataset.

:func:`export_nnunet` writes ``<out>/DatasetNNN_NAME/`` (``docs/nnunet.md``):

* ``imagesTr/<identifier>_0000.nii.gz``: the CT on its own grid with its values and data type (only the file
  format may change); ``<identifier>_0001.nii.gz``: the PET (SUV) on the CT grid, resampled through both
  images' affines by :func:`h2aseg.data.geometry.resample_to_grid` as h2aseg's preprocessing does (linear,
  anti-aliased where the CT grid is coarser, SUV 0 outside the PET field of view; a PET already on the CT
  grid is copied); ``labelsTr/<identifier>.nii.gz``: uint8 labels on the CT grid, binary (``label > 0``) or,
  with ``label_mode="multiclass"``, the classes as they are (HECKTOR: 1 = GTVp, 2 = GTVn). The three files
  get the same affine, so nnU-Net's geometry checks see one grid.
* The train and val parts of the split go to ``imagesTr``/``labelsTr``, the test part to ``imagesTs`` and
  ``labelsTs`` (nnU-Net ignores the latter; it is there for ``h2aseg evaluate``).
* ``dataset.json``; ``splits_final.json`` with one fold (fold 0 = the split's train / val parts, so nnU-Net
  trains and validates on the cases ``h2aseg train`` uses): nnU-Net reads it from
  ``$nnUNet_preprocessed/DatasetNNN_NAME/``, where it is written when ``preprocessed`` is given and where
  ``nnUNetv2_plan_and_preprocess`` (nnunetv2 >= 2.5.1) copies the raw folder's copy; ``h2aseg_cases.json``
  (identifier -> case id, patient, part, source files) and ``h2aseg_README.md`` (the next commands).

Identifiers are the case ids with every run of characters other than letters, digits, ``-`` and ``_``
replaced by ``_`` (AutoPET study folders hold spaces); ids that clash after that get a short hash.

Every file is written atomically. ``h2aseg_cases.json`` is written first and ``dataset.json`` last, so an
interrupted export has no ``dataset.json`` and a rerun with the same inputs finishes it, skipping the files
already there (a case whose source files changed since is written again). A folder holding anything else is
refused unless ``force`` (then replaced). Input problems raise :class:`ExportError` or
:class:`~h2aseg.data.io.ImageError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.config import DataConfig
from h2aseg.data.geometry import resample_to_grid
from h2aseg.data.io import (
    Volume,
    check_finite,
    check_label_values,
    check_modalities,
    check_overlap,
    check_same_grid,
    read_volume,
    write_volume,
)
from h2aseg.data.layouts import (
    PAIRED_DIRS,
    WRITE_SUFFIX,
    Case,
    CasePaths,
    detect_layout,
    discover,
    nnunet_case_paths,
)
from h2aseg.data.splits import Split, check_split, load_split, make_split
from h2aseg.errors import InputError
from h2aseg.files import atomic_write_text, read_json

CASES_FILE = "h2aseg_cases.json"
README_FILE = "h2aseg_README.md"
SPLITS_FILE = "splits_final.json"
DATASET_FILE = "dataset.json"
DEFAULT_NAME = "H2ASeg"
CHANNEL_NAMES = {"0": "CT", "1": "PET"}  # "CT": nnU-Net's CT normalisation; anything else: z-score per case
CLASS_NAMES = {1: ("lesion",), 2: ("GTVp", "GTVn")}  # foreground names by class count (2: HECKTOR)
MANIFEST_FORMAT = 1
_TMP_PREFIX = ".tmp-"  # h2aseg.files.atomic_write's temporaries (a killed write leaves one behind)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class ExportError(InputError):
    """The export cannot be done as asked (dataset id/name, split, target folder); the message names it."""


@dataclass(frozen=True)
class ExportCase:
    """One exported study: its nnU-Net identifier, the source case and its part of the split."""

    identifier: str
    case: Case
    part: str  # train | val | test

    def paths(self) -> CasePaths:
        """CT, PET and label paths relative to the dataset folder (``imagesTs``/``labelsTs`` for test)."""
        paths = nnunet_case_paths(self.identifier)
        if self.part != "test":
            return paths
        images, labels = (Path(d) for d in PAIRED_DIRS[1])
        return CasePaths(images / paths.ct.name, images / paths.pet.name, labels / paths.label.name)

    def files(self) -> dict[str, Path]:
        """``{"ct", "pet"[, "label"]: path relative to the dataset folder}`` (no label when it has none)."""
        p = self.paths()
        return {"ct": p.ct, "pet": p.pet, **({"label": p.label} if self.case.label is not None else {})}

    def targets(self, folder: Path) -> dict[str, Path]:
        """:meth:`files` inside ``folder``."""
        return {k: folder / p for k, p in self.files().items()}


@dataclass
class ExportResult:
    """What :func:`export_nnunet` did: the dataset folder, the cases, and the files written or kept."""

    folder: Path
    cases: list[ExportCase]
    written: int = 0
    skipped: int = 0
    unused: list[str] = field(default_factory=list)  # case ids in the dataset but in no part of the split
    splits: list[Path] = field(default_factory=list)  # the splits_final.json files written

    def count(self, part: str) -> int:
        return sum(e.part == part for e in self.cases)


# ------------------------------------------------------------------------------------- naming and plan
def dataset_folder_name(dataset_id: int, name: str = DEFAULT_NAME) -> str:
    """``DatasetNNN_NAME`` (nnU-Net v2's raw folder name); raises :class:`ExportError` on a bad id or name."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ExportError(
            f"dataset id must be an integer from 1 to 999 (nnU-Net's three digits), got {dataset_id}"
        )
    if not _NAME.fullmatch(name):
        raise ExportError(f"dataset name {name!r}: use letters, digits, '-' and '_' only (no spaces)")
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_identifiers(case_ids: Iterable[str]) -> dict[str, str]:
    """Case id -> nnU-Net-safe identifier (see the module docstring); deterministic and one-to-one."""
    ids = list(case_ids)
    base = {cid: _UNSAFE.sub("_", cid).strip("_") or "case" for cid in ids}
    clashes = Counter(base.values())
    out = {
        cid: b if clashes[b] == 1 else f"{b}-{hashlib.sha1(cid.encode()).hexdigest()[:8]}"
        for cid, b in base.items()
    }
    if len(set(out.values())) != len(out):  # pragma: no cover - needs a hash collision
        raise ExportError("case ids give clashing nnU-Net identifiers")
    return out


def dataset_split(cases: Sequence[Case], data: DataConfig) -> Split:
    """The split ``h2aseg train`` makes for ``data``: ``split_file``, else from ``split_ratios``/``_seed``."""
    if data.split_file:
        split = load_split(data.split_file)
        try:
            check_split(split, list(cases))
        except InputError as e:
            raise ExportError(f"{data.split_file}: {e}") from e
        return split
    return make_split(list(cases), tuple(data.split_ratios), data.split_seed)  # type: ignore[arg-type]


def plan_export(cases: Sequence[Case], split: Split) -> tuple[list[ExportCase], list[str]]:
    """The cases of the split with identifiers and parts, and the case ids left out (in no part)."""
    check_split(split, list(cases))
    part_of = {cid: part for part in ("train", "val", "test") for cid in split.part(part)}
    used = [c for c in cases if c.case_id in part_of]
    ids = nnunet_identifiers(c.case_id for c in used)
    plan = [ExportCase(ids[c.case_id], c, part_of[c.case_id]) for c in used]
    for part in ("train", "val"):
        if not any(e.part == part for e in plan):
            raise ExportError(
                f"the split has no {part} cases; nnU-Net's fold 0 needs both train and val cases"
            )
    unlabelled = [e.case.case_id for e in plan if e.part != "test" and e.case.label is None]
    if unlabelled:
        raise ExportError(
            f"{len(unlabelled)} train/val case(s) have no label file (nnU-Net trains on labelled cases): "
            + ", ".join(unlabelled[:8])
        )
    return plan, sorted(c.case_id for c in cases if c.case_id not in part_of)


def label_names(label_mode: str = "binary", num_classes: int = 1) -> dict[str, int]:
    """dataset.json's ``labels``: background and ``lesion`` (binary), or the classes (multiclass)."""
    if label_mode not in ("binary", "multiclass"):
        raise ExportError(f"label mode must be 'binary' or 'multiclass', got {label_mode!r}")
    n = 1 if label_mode == "binary" else int(num_classes)
    names = CLASS_NAMES.get(n, tuple(f"class{i}" for i in range(1, n + 1)))
    return {"background": 0, **{name: i for i, name in enumerate(names, start=1)}}


def splits_final(plan: Sequence[ExportCase]) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: one fold whose train/val are the split's train/val parts."""
    return [{part: [e.identifier for e in plan if e.part == part] for part in ("train", "val")}]


def dataset_json(
    plan: Sequence[ExportCase], labels: Mapping[str, int], folder_name: str, source: str
) -> dict[str, Any]:
    """nnU-Net v2's ``dataset.json`` for ``plan``."""
    return {
        "channel_names": dict(CHANNEL_NAMES),
        "labels": dict(labels),
        "numTraining": sum(e.part != "test" for e in plan),
        "file_ending": WRITE_SUFFIX,
        "name": folder_name,
        "description": f"PET/CT exported by h2aseg export-nnunet from {source}; PET (SUV) on the CT grid",
    }


def _stamp(case: Case) -> str:
    """Size and modification time of a case's source files (a changed file gives another stamp)."""
    parts = []
    for p in (case.ct, case.pet, case.label):
        st = None if p is None else Path(p).stat()
        parts.append(None if st is None else [str(p), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def export_manifest(
    plan: Sequence[ExportCase],
    split: Split,
    *,
    folder_name: str,
    labels: Mapping[str, int],
    source: Mapping[str, Any],
    unused: Sequence[str],
) -> dict[str, Any]:
    """``h2aseg_cases.json``: identifiers -> case ids and source files, and what the export was made from."""
    return {
        "format": MANIFEST_FORMAT,
        "dataset": folder_name,
        "source": dict(source),
        "labels": dict(labels),
        "split": {"seed": split.seed, "ratios": list(split.ratios)},
        "unused": list(unused),
        "cases": {
            e.identifier: {
                "case_id": e.case.case_id,
                "patient_id": e.case.patient_id,
                "part": e.part,
                "ct": str(e.case.ct),
                "pet": str(e.case.pet),
                "label": None if e.case.label is None else str(e.case.label),
                "files": {k: p.as_posix() for k, p in e.files().items()},
            }
            for e in plan
        },
        "stamps": {e.identifier: _stamp(e.case) for e in plan},
    }


def load_case_map(path: str | Path) -> dict[str, str]:
    """nnU-Net identifier -> case id from ``h2aseg_cases.json`` (or the dataset folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / CASES_FILE
    doc = read_json(path)
    if doc is None:
        raise ExportError(f"{path}: not found or not JSON (expected export-nnunet's {CASES_FILE})")
    cases = doc.get("cases") if isinstance(doc, dict) else None
    if not isinstance(cases, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("case_id"), str) for v in cases.values()
    ):
        raise ExportError(
            f"{path}: expected 'cases' mapping identifiers to {{'case_id': ...}} ({CASES_FILE})"
        )
    mapping = {str(k): v["case_id"] for k, v in cases.items()}
    if len(set(mapping.values())) != len(mapping):
        raise ExportError(f"{path}: two identifiers name the same case id")
    return mapping


# ------------------------------------------------------------------------------------------ the images
def ct_array(ct: Volume) -> np.ndarray:
    """The CT's voxels as written: integer types kept, floating point as float32."""
    return ct.array.astype(np.float32) if ct.array.dtype.kind == "f" else ct.array


def pet_on_ct_grid(pet: Volume, ct: Volume) -> np.ndarray:
    """PET (SUV, float32) on the CT grid through both affines; copied when already on that grid."""
    if pet.same_grid(ct):
        return np.asarray(pet.array, dtype=np.float32)
    return resample_to_grid(pet.array, pet.affine, ct.affine, ct.shape, order=1, cval=0.0)


def label_on_ct_grid(label: Volume, ct: Volume, label_mode: str, num_classes: int) -> np.ndarray:
    """uint8 labels checked against the CT grid and ``{0..num_classes}``; binary: ``label > 0``."""
    check_same_grid(label, ct)
    check_label_values(label, range(int(num_classes) + 1))
    return (label.array > 0).astype(np.uint8) if label_mode == "binary" else label.array.astype(np.uint8)


def _write_case(entry: ExportCase, todo: Mapping[str, Path], label_mode: str, num_classes: int) -> None:
    """Read, check and write the ``todo`` outputs of one case (all on the CT's grid and affine)."""
    case = entry.case
    ct = read_volume(case.ct, dtype=None)
    check_finite(ct)
    arrays: dict[str, np.ndarray] = {}
    if "pet" in todo:
        pet = read_volume(case.pet)
        check_finite(pet)
        check_modalities(ct, pet)
        check_overlap(ct, pet)
        arrays["pet"] = pet_on_ct_grid(pet, ct)
    if "label" in todo and case.label is not None:
        arrays["label"] = label_on_ct_grid(read_volume(case.label, dtype=None), ct, label_mode, num_classes)
    if "ct" in todo:
        arrays["ct"] = ct_array(ct)
    inputs = tuple(p for p in (case.ct, case.pet, case.label) if p is not None)
    for key, array in arrays.items():
        write_volume(todo[key], array, ct.affine, protect=inputs)


# ------------------------------------------------------------------------------------- the target folder
def _json_text(doc: Any) -> str:
    return json.dumps(doc, indent=1) + "\n"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_target(folder: Path, dataset_id: int, cases: Sequence[Case], source_root: str | None) -> None:
    """Refuse a dataset folder that holds an input file, lies inside the input dataset folder, or whose id
    another ``DatasetNNN_*`` folder beside it already uses."""
    inside = [p for c in cases for p in (c.ct, c.pet, c.label) if p is not None and _inside(Path(p), folder)]
    if inside:
        raise ExportError(f"{folder}: holds input file(s) such as {inside[0]}; choose another --out")
    root = Path(source_root) if source_root else None
    if root is not None and root.is_dir() and _inside(folder, root):
        raise ExportError(f"{folder}: lies inside the input dataset {root}; choose an --out outside it")
    taken = [p.name for p in folder.parent.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder.name]
    if taken:
        raise ExportError(
            f"{folder.parent}: {taken[0]} already uses dataset id {dataset_id:03d} (nnU-Net finds datasets "
            "by id); choose another --dataset-id or remove it"
        )


def _difference(old: Any, new: Mapping[str, Any]) -> str:
    if not isinstance(old, dict):
        return f"no readable {CASES_FILE}: not an export of h2aseg"
    keys = [k for k in new if k != "stamps" and old.get(k) != new[k]]
    return "a different " + ", ".join(keys) if keys else ""


def _prepare(folder: Path, manifest: dict[str, Any], force: bool) -> dict[str, str]:
    """Make ``folder`` ready; returns the previous export's stamps when this reruns the same export."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return {}
    old = read_json(folder / CASES_FILE)
    why = _difference(old, manifest)
    if not why:
        return dict(old.get("stamps") or {})
    if not force:
        raise ExportError(f"{folder}: holds another dataset ({why}); pass --force to replace it")
    shutil.rmtree(folder)
    return {}


def _check_splits_copy(path: Path, text: str, force: bool) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") != text and not force:
        raise ExportError(f"{path}: holds a different split; pass --force to replace it")


def _clean_temporaries(folder: Path) -> None:
    """Remove what a killed atomic write left behind (nnU-Net would read a hidden ``*.nii.gz`` as a case)."""
    for sub in (folder, *(folder / d for pair in PAIRED_DIRS for d in pair)):
        if sub.is_dir():
            for p in sub.glob(f"{_TMP_PREFIX}*"):
                p.unlink(missing_ok=True)


def readme_text(folder_name: str, dataset_id: int, preprocessed_copy: Path | None) -> str:
    """``h2aseg_README.md``: where splits_final.json goes and the nnU-Net commands (docs/nnunet.md)."""
    where = (
        f"It has been written there ({preprocessed_copy})."
        if preprocessed_copy is not None
        else "`nnUNetv2_plan_and_preprocess` (nnunetv2 >= 2.5.1) copies this folder's copy there; with an "
        f'older nnU-Net: `mkdir -p "$nnUNet_preprocessed/{folder_name}" && cp {SPLITS_FILE} '
        f'"$nnUNet_preprocessed/{folder_name}/"`.'
    )
    return (
        f"# {folder_name} (written by h2aseg export-nnunet)\n\n"
        f"`{SPLITS_FILE}` holds one fold: h2aseg's train/val split. nnU-Net reads it from "
        f"`$nnUNet_preprocessed/{folder_name}/{SPLITS_FILE}` (without it, nnU-Net makes its own 5 folds). "
        f"{where}\n\n"
        "```bash\n"
        f"nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity\n"
        f"nnUNetv2_train {dataset_id} 3d_fullres 0      # fold 0 = h2aseg's train/val split\n"
        f"nnUNetv2_predict -d {dataset_id} -c 3d_fullres -f 0 -i imagesTs -o nnunet_pred\n"
        f"h2aseg evaluate --pred nnunet_pred --gt labelsTs --nnunet-cases {CASES_FILE} --out eval_nnunet\n"
        "```\n\n"
        f"`{CASES_FILE}` maps the identifiers back to h2aseg's case ids and source files; "
        "`imagesTs`/`labelsTs` hold the test part. Channel 0000 = CT, 0001 = PET (SUV) resampled onto the CT "
        "grid. More: docs/nnunet.md in h2aseg.\n"
    )


# ----------------------------------------------------------------------------------------------- export
def export_nnunet(
    cases: Sequence[Case],
    split: Split,
    out: str | Path,
    dataset_id: int,
    name: str = DEFAULT_NAME,
    *,
    label_mode: str = "binary",
    num_label_classes: int = 1,
    source: Mapping[str, Any] | None = None,
    preprocessed: str | Path | None = None,
    force: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> ExportResult:
    """Write ``cases`` (parts from ``split``) as ``out/DatasetNNN_NAME`` (see the module docstring).

    ``num_label_classes``: foreground values allowed in the label files (binary mode merges them).
    ``source`` (e.g. ``{"root": ..., "layout": ...}``) is recorded in ``h2aseg_cases.json``; ``preprocessed``:
    nnU-Net's ``nnUNet_preprocessed`` folder, where ``splits_final.json`` is also written.
    ``progress(done, total, identifier)`` is called after each case.
    """
    folder_name = dataset_folder_name(dataset_id, name)
    folder = Path(out) / folder_name
    labels = label_names(label_mode, num_label_classes)
    plan, unused = plan_export(cases, split)
    src = dict(source or {})
    _check_target(folder, dataset_id, cases, src.get("root"))
    manifest = export_manifest(plan, split, folder_name=folder_name, labels=labels, source=src, unused=unused)
    splits_text = _json_text(splits_final(plan))
    copy = None if preprocessed is None else Path(preprocessed) / folder_name / SPLITS_FILE
    if copy is not None:
        _check_splits_copy(copy, splits_text, force)
    old_stamps = _prepare(folder, manifest, force)

    _clean_temporaries(folder)
    for e in plan:  # a case whose source files changed since it was exported is written again
        if old_stamps.get(e.identifier, manifest["stamps"][e.identifier]) != manifest["stamps"][e.identifier]:
            for p in e.targets(folder).values():
                p.unlink(missing_ok=True)
    (folder / DATASET_FILE).unlink(missing_ok=True)  # written last: its absence marks an unfinished export
    result = ExportResult(folder, plan, unused=unused)
    atomic_write_text(folder / CASES_FILE, _json_text(manifest))
    atomic_write_text(folder / README_FILE, readme_text(folder_name, dataset_id, copy))
    for i, e in enumerate(plan, start=1):
        targets = e.targets(folder)
        todo = {k: p for k, p in targets.items() if not p.is_file()}
        if todo:
            _write_case(e, todo, label_mode, num_label_classes)
        result.written += len(todo)
        result.skipped += len(targets) - len(todo)
        if progress is not None:
            progress(i, len(plan), e.identifier)
    for path in (folder / SPLITS_FILE, copy):
        if path is not None:
            result.splits.append(atomic_write_text(path, splits_text))
    ds = dataset_json(plan, labels, folder_name, _describe(src))
    atomic_write_text(folder / DATASET_FILE, _json_text(ds))
    return result


def _describe(source: Mapping[str, Any]) -> str:
    root, layout = source.get("root"), source.get("layout")
    return f"{root or 'a cohort'}" + (f" ({layout} layout)" if layout else "")


def export_dataset(
    data: DataConfig,
    out: str | Path,
    dataset_id: int,
    name: str = DEFAULT_NAME,
    *,
    preprocessed: str | Path | None = None,
    force: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> ExportResult:
    """:func:`export_nnunet` for ``data`` as ``h2aseg train`` reads it: its root, layout, split and labels."""
    if not data.root:
        raise ExportError("no dataset root given (--data or data.root)")
    root = Path(data.root).resolve()  # absolute source paths: a rerun from another folder is the same export
    layout = detect_layout(root) if data.layout == "auto" else data.layout
    cases = discover(root, layout, swap_channels=data.swap_channels)
    split = dataset_split(cases, data)
    source = {
        "root": str(root),
        "layout": layout,
        "swap_channels": bool(data.swap_channels),
        "split_file": None if not data.split_file else str(Path(data.split_file).resolve()),
    }
    return export_nnunet(
        cases,
        split,
        out,
        dataset_id,
        name,
        label_mode=data.label_mode,
        num_label_classes=data.num_label_classes,
        source=source,
        preprocessed=preprocessed,
        force=force,
        progress=progress,
    )
