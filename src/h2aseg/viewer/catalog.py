"""What ``h2aseg view`` shows: the studies of a predictions folder, their files and their lesion tables.

A **study** is a case of the dataset (:func:`h2aseg.data.layouts.discover`) that has a prediction
``<pred>/<case_id>.<ext>`` (:func:`h2aseg.evaluation.matching.mask_folder`, the names ``h2aseg predict``
writes). Its ground truth is ``--gt``'s mask for the case when ``--gt`` is given
(:func:`h2aseg.evaluation.matching.ground_truth_masks`: a plain folder of masks or a layout root), else the
data's own label when the layout has one.

**Lesion table**: the first of ``<pred>/<case_id>_lesions.csv`` (``h2aseg predict --quantify``),
``<pred>/<case_id>/lesions.csv`` (``h2aseg quantify --out``) and the rows of ``<pred>/lesions.csv`` whose
``case_id`` is the study's; without one, it is computed from the mask and the SUV with the project's own
:func:`h2aseg.evaluation.quantify.quantify_volumes` (about half a second for a 128x128x160 study; cached).
Each row gets ``centroid_mm`` (world RAS+ mm, as in ``lesions.csv``, which is NiiVue's world space too) and
``centroid_vox`` (voxel indices in the CT's grid, the viewer's background volume). Rows come most confident
first: by ``prob_mean`` (the network's mean probability in the lesion) descending where the table has it,
rows without one last, else in the table's order.

**MIPs**: coronal and sagittal PET (SUV) maximum-intensity projections with the predicted mask's lesions
outlined and numbered (their ``lesion_id``), the report's own pictures
(:func:`h2aseg.analysis.html_report.mip_images`, the mask mapped onto the PET grid with
:func:`h2aseg.evaluation.quantify.mask_on_suv_grid`); rendered on the server since NiiVue has no MIP mode,
once per study (cached).

Every file must lie inside one of the folders given (resolved, so a symlink out of them is refused);
:class:`Catalog` knows each file's URL below ``/files/<root>/``.
"""

from __future__ import annotations

import csv
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from h2aseg.data.io import NIFTI_SUFFIXES, image_suffix, read_volume
from h2aseg.data.layouts import discover
from h2aseg.errors import InputError

ROOT_KEYS = ("pred", "data", "gt")
CENTROID_COLUMNS = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")
MIP_VIEWS = ("coronal", "sagittal")


class ViewerError(InputError):
    """The folders given to ``h2aseg view`` cannot be shown; the message names the paths."""


@dataclass(frozen=True)
class Study:
    """One study: its ids and the files the page loads (``gt`` ``None`` without a ground truth)."""

    case_id: str
    patient_id: str
    ct: Path
    pet: Path
    mask: Path
    gt: Path | None


def _folder(path: Path) -> Path:
    """The folder whose files may be served for ``path`` (a CSV manifest's folder for a manifest file)."""
    return (path if path.is_dir() else path.parent).resolve()


def _affine(path: Path) -> np.ndarray:
    if image_suffix(path) in NIFTI_SUFFIXES:
        import nibabel as nib

        # the header only; the affine read_volume gives
        return np.asarray(nib.load(str(path)).affine, dtype=np.float64)
    return read_volume(path, dtype=None).affine


def _confidence_order(row: dict[str, Any]) -> tuple[bool, float]:
    """Sort key: ``prob_mean`` descending, rows without a numeric one last."""
    p = row.get("prob_mean")
    numeric = isinstance(p, int | float)
    return (not numeric, -float(p) if numeric else 0.0)


def _number(text: str) -> float | int | str | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return None
    if value.is_integer() and "." not in text and "e" not in text.lower():
        return int(value)
    return value


class Catalog:
    """The studies of ``pred`` matched with ``data`` (and ``gt``); see the module docstring."""

    def __init__(self, pred: Path, data: Path, gt: Path | None = None, layout: str = "auto") -> None:
        from h2aseg.evaluation.matching import EvaluationError, ground_truth_masks, mask_folder

        pred, data = Path(pred), Path(data)
        if not pred.is_dir():
            raise ViewerError(f"{pred}: the predictions folder does not exist")
        self.roots: dict[str, Path] = {"pred": pred.resolve(), "data": _folder(data)}
        try:
            masks = mask_folder(pred)
            gts = {} if gt is None else ground_truth_masks(gt)
        except EvaluationError as e:
            raise ViewerError(str(e)) from e
        if gt is not None:
            self.roots["gt"] = _folder(Path(gt))
        cases = discover(data, layout)
        studies = []
        for case in cases:
            if case.case_id not in masks:
                continue
            label = gts.get(case.case_id) if gt is not None else case.label
            studies.append(
                Study(case.case_id, case.patient_id, case.ct, case.pet, masks[case.case_id], label)
            )
        if not studies:
            raise ViewerError(
                f"{pred}: no prediction is named after a case of {data} "
                f"({len(cases)} case(s), e.g. {cases[0].case_id!r}; predictions: {len(masks)} file(s))"
            )
        self.studies: dict[str, Study] = {s.case_id: s for s in studies}
        self._urls: dict[Path, str] = {}
        for s in studies:
            for f in (s.ct, s.pet, s.mask, s.gt):
                if f is not None:
                    self._urls[Path(f)] = self._url(Path(f))
        self._lesions: dict[str, dict[str, Any]] = {}
        self._world_to_voxel: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._mips: dict[str, dict[str, bytes]] = {}
        self._mip_lock = threading.Lock()  # apart from _lock: a MIP being drawn does not hold up lesions

    # ----------------------------------------------------------------------------------------- files
    def _url(self, path: Path) -> str:
        resolved = path.resolve()
        for key in ROOT_KEYS:
            root = self.roots.get(key)
            if root is not None and resolved.is_relative_to(root):
                return f"/files/{key}/" + quote(resolved.relative_to(root).as_posix())
        raise ViewerError(
            f"{path}: outside the folders given to the viewer ({', '.join(map(str, self.roots.values()))}); "
            "it serves only files inside them (a symlink pointing out of them counts as outside)"
        )

    def url(self, path: Path | None) -> str | None:
        return None if path is None else self._urls[Path(path)]

    # ------------------------------------------------------------------------------------------- API
    def study_list(self) -> list[dict[str, Any]]:
        return [
            {
                "case_id": s.case_id,
                "patient_id": s.patient_id,
                "has_gt": s.gt is not None,
                "page": "/study/" + quote(s.case_id, safe=""),
                "api": "/api/study/" + quote(s.case_id, safe=""),
            }
            for s in self.studies.values()
        ]

    def study(self, case_id: str) -> dict[str, Any]:
        s = self.studies[case_id]
        ids = list(self.studies)
        i = ids.index(case_id)
        volumes = {
            key: None if f is None else {"url": self.url(f), "name": Path(f).name}
            for key, f in (("ct", s.ct), ("pet", s.pet), ("mask", s.mask), ("gt", s.gt))
        }
        return {
            "case_id": s.case_id,
            "patient_id": s.patient_id,
            "index": i,
            "count": len(ids),
            "prev": ids[i - 1] if i > 0 else None,
            "next": ids[i + 1] if i + 1 < len(ids) else None,
            "volumes": volumes,
            "ct_world_to_voxel": self.world_to_voxel(case_id).tolist(),
            "lesions": self.lesions(case_id),
            "mips": {view: self.mip_url(case_id, view) for view in MIP_VIEWS},
        }

    def world_to_voxel(self, case_id: str) -> np.ndarray:
        """The inverse of the study's CT affine (world RAS+ mm to CT voxel indices); read once, cached."""
        inv = self._world_to_voxel.get(case_id)
        if inv is None:  # two threads may both read it: the same matrix either way
            inv = self._world_to_voxel[case_id] = np.linalg.inv(_affine(self.studies[case_id].ct))
        return inv

    # ------------------------------------------------------------------------------------------ MIPs
    @staticmethod
    def mip_url(case_id: str, view: str) -> str:
        return f"/api/mip/{quote(case_id, safe='')}/{view}.png"

    def mip_png(self, case_id: str, view: str) -> bytes:
        """The study's PET MIP ``view`` (one of :data:`MIP_VIEWS`) as PNG; both views drawn once, cached.

        ``KeyError`` for an unknown study or view; a file that cannot be read raises (not cached).
        """
        if view not in MIP_VIEWS:
            raise KeyError(view)
        s = self.studies[case_id]
        with self._mip_lock:  # the page asks for both views at once: the second waits and finds them
            if case_id not in self._mips:
                self._mips[case_id] = self._draw_mips(s)
            return self._mips[case_id][view]

    @staticmethod
    def _draw_mips(s: Study) -> dict[str, bytes]:
        from h2aseg.analysis.html_report import mip_images
        from h2aseg.evaluation.quantify import mask_on_suv_grid

        suv = read_volume(s.pet, dtype=None)
        mask = mask_on_suv_grid(read_volume(s.mask, dtype=None), suv)
        images = mip_images(suv.array, mask.array, suv.affine)
        return {view: png for view, (png, _size) in images.items()}

    # --------------------------------------------------------------------------------------- lesions
    def lesion_csv(self, case_id: str) -> tuple[Path, bool] | None:
        """The lesion table file of a study and whether it holds other cases' rows too."""
        pred = self.roots["pred"]
        for p in (pred / f"{case_id}_lesions.csv", pred / case_id / "lesions.csv"):
            if p.is_file() and p.resolve().is_relative_to(pred):
                return p, False
        shared = pred / "lesions.csv"
        if shared.is_file() and shared.resolve().is_relative_to(pred):
            return shared, True
        return None

    def lesions(self, case_id: str) -> dict[str, Any]:
        """``{"source", "columns", "rows", "error"}`` for a study (see the module docstring); cached."""
        with self._lock:
            if case_id not in self._lesions:
                self._lesions[case_id] = self._load_lesions(self.studies[case_id])
            return self._lesions[case_id]

    def _load_lesions(self, s: Study) -> dict[str, Any]:
        found = self.lesion_csv(s.case_id)
        try:
            if found is not None:
                path, shared = found
                with path.open(newline="") as fh:
                    rows = list(csv.DictReader(fh))
                if shared:
                    rows = [r for r in rows if r.get("case_id") == s.case_id]
                source = f"from {path.relative_to(self.roots['pred']).as_posix()}"
                if shared and not rows:
                    found = None
            if found is None:
                rows, source = self._compute(s), "computed from the mask and SUV (h2aseg quantify)"
            if rows and not set(CENTROID_COLUMNS) <= set(rows[0]):
                raise ViewerError(f"{source}: no {', '.join(CENTROID_COLUMNS)} columns")
            inv = self.world_to_voxel(s.case_id)
        except Exception as e:  # a broken table must not stop the viewer: the page shows the message
            return {"source": None, "columns": [], "rows": [], "error": f"{type(e).__name__}: {e}"}
        columns = [c for c in (rows[0] if rows else {}) if c != "case_id"]
        out = []
        for r in rows:
            row: dict[str, Any] = {c: _number(str(r[c])) for c in columns}
            mm = [float(r[c]) for c in CENTROID_COLUMNS]
            vox = inv @ np.array([*mm, 1.0])
            row["centroid_mm"] = mm
            row["centroid_vox"] = [round(float(v), 3) for v in vox[:3]]
            out.append(row)
        out.sort(key=_confidence_order)  # stable: the table's order without prob_mean
        return {"source": source, "columns": columns, "rows": out, "error": None}

    @staticmethod
    def _compute(s: Study) -> list[dict[str, str]]:
        from h2aseg.evaluation.quantify import lesions_csv, mask_on_suv_grid, quantify_volumes

        suv = read_volume(s.pet, dtype=None)
        mask = mask_on_suv_grid(read_volume(s.mask, dtype=None), suv)
        gt = None if s.gt is None else mask_on_suv_grid(read_volume(s.gt, dtype=None), suv)
        q = quantify_volumes(suv, mask, gt, case_id=s.case_id)
        return list(csv.DictReader(lesions_csv(q).splitlines()))
