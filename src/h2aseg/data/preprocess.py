"""From CT/PET/label files to normalised arrays on one grid, and back to the original CT grid.

Steps of :func:`preprocess_images`:

1. Read CT, PET (SUV) and label with their geometry and check them (finite voxels, CT/PET overlap in physical
   space, channel order, label grid == CT grid, label values in ``{0..num_label_classes}``); every error is an
   :class:`~h2aseg.data.io.ImageError` naming the file.
2. Reorient the CT (and label) to the closest RAS+ axis order (a permutation / flip, no interpolation).
3. The working grid is that reoriented CT grid, or, with ``cfg.target_spacing``, a grid of that spacing
   covering the same physical extent (CT linear with anti-aliasing, labels nearest); a CT whose voxels already
   have that spacing (within 1 micrometre) keeps its own grid, uninterpolated.
4. The PET is resampled onto the working grid through both images' physical geometry (affines), so PET and CT
   on different grids, spacings and origins (HECKTOR) line up; outside the PET field of view SUV = 0.
5. Intensities: CT clipped to ``cfg.ct_window`` (HU) and PET to ``cfg.pet_window`` (SUV), each scaled to
   [0, 1]; the un-normalised SUV is kept for SUV-threshold baselines. Labels binary (``label > 0``) unless
   ``cfg.label_mode == "multiclass"``.

:func:`restore_to_ct_grid` puts an array from the working grid back onto the original CT file's grid
(``geometry.ct_shape`` / ``geometry.ct_affine``). :class:`CaseCache` stores preprocessed cases as ``.npz``
keyed by the preprocessing settings and the input files' identity.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from h2aseg.config import ConfigError, DataConfig
from h2aseg.data.geometry import reorient, resample_to_grid
from h2aseg.data.io import (
    ImageError,
    check_finite,
    check_label_values,
    check_modalities,
    check_overlap,
    check_same_grid,
    read_volume,
)
from h2aseg.data.layouts import Case
from h2aseg.files import atomic_write

CACHE_VERSION = 1
_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)
_SUV_MAX_PLAUSIBLE = 500.0


@dataclass
class CaseGeometry:
    """Everything needed to put a prediction on the working grid back onto the original CT grid.

    ``ct_affine``/``ct_shape``: the original CT file; ``ornt``: its nibabel orientation (file axes -> RAS);
    ``canonical_affine``/``canonical_shape``: the CT reoriented to RAS; ``grid_affine``/``grid_shape``: the
    working (preprocessed) grid.
    """

    ct_affine: np.ndarray
    ct_shape: tuple[int, int, int]
    ornt: np.ndarray
    canonical_affine: np.ndarray
    canonical_shape: tuple[int, int, int]
    grid_affine: np.ndarray
    grid_shape: tuple[int, int, int]
    ct_path: str | None = None
    pet_path: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the working grid."""
        s = nib.affines.voxel_sizes(self.grid_affine)
        return (float(s[0]), float(s[1]), float(s[2]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ct_affine": np.asarray(self.ct_affine).tolist(),
            "ct_shape": list(self.ct_shape),
            "ornt": np.asarray(self.ornt).tolist(),
            "canonical_affine": np.asarray(self.canonical_affine).tolist(),
            "canonical_shape": list(self.canonical_shape),
            "grid_affine": np.asarray(self.grid_affine).tolist(),
            "grid_shape": list(self.grid_shape),
            "ct_path": self.ct_path,
            "pet_path": self.pet_path,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseGeometry:
        return cls(
            ct_affine=np.asarray(d["ct_affine"], dtype=np.float64),
            ct_shape=tuple(int(v) for v in d["ct_shape"]),  # type: ignore[arg-type]
            ornt=np.asarray(d["ornt"], dtype=np.float64),
            canonical_affine=np.asarray(d["canonical_affine"], dtype=np.float64),
            canonical_shape=tuple(int(v) for v in d["canonical_shape"]),  # type: ignore[arg-type]
            grid_affine=np.asarray(d["grid_affine"], dtype=np.float64),
            grid_shape=tuple(int(v) for v in d["grid_shape"]),  # type: ignore[arg-type]
            ct_path=d.get("ct_path"),
            pet_path=d.get("pet_path"),
        )


@dataclass
class PreprocessedCase:
    """A case on the working grid.

    ``image``: float32 (2, X, Y, Z), channel 0 = CT, channel 1 = PET, both scaled to [0, 1];
    ``label``: uint8 (X, Y, Z) or ``None``; ``suv``: float32 (X, Y, Z) PET in SUV (not normalised).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    suv: np.ndarray
    geometry: CaseGeometry


def case_nbytes(pc: PreprocessedCase) -> int:
    """Bytes of the arrays of ``pc`` (image, SUV, label): what keeping it in memory costs."""
    label = 0 if pc.label is None else pc.label.nbytes
    return int(pc.image.nbytes + pc.suv.nbytes + label)


def resampled_shape(
    shape: Sequence[int], voxel_size: Sequence[float], spacing: Sequence[float]
) -> tuple[int, ...]:
    """The shape of a grid of ``spacing`` (mm) over the extent of ``shape`` voxels of ``voxel_size``: what
    preprocessing resamples a study to under ``data.target_spacing``."""
    return tuple(max(1, round(n * o / s)) for n, o, s in zip(shape, voxel_size, spacing, strict=True))


def _target_grid(
    canon_affine: np.ndarray, canon_shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Grid with the canonical CT's axes and ``spacing`` covering the same physical extent."""
    old = nib.affines.voxel_sizes(canon_affine)
    new = np.asarray(spacing, dtype=np.float64)
    ratio = new / old
    shape = resampled_shape(canon_shape, old, new)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(ratio)
    scale[:3, 3] = (ratio - 1.0) / 2.0  # first voxel's edge stays at the CT's first edge
    return canon_affine @ scale, shape  # type: ignore[return-value]


def on_spacing(affine: np.ndarray, spacing: Sequence[float], tol_mm: float = 1e-3) -> bool:
    """Whether the grid of ``affine`` already has voxels of ``spacing`` (mm, per axis, within ``tol_mm``):
    such images are used as they are instead of being interpolated onto an identical grid."""
    have = nib.affines.voxel_sizes(np.asarray(affine, dtype=np.float64))
    return bool(np.all(np.abs(have - np.asarray(spacing, dtype=np.float64)) <= tol_mm))


def _scale(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    out = np.clip(array, lo, hi, dtype=np.float32)
    out -= lo
    out *= np.float32(1.0 / (hi - lo))
    return out


def pet_channel(suv: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The normalised PET channel (SUV clipped to ``cfg.pet_window`` and scaled to [0, 1])."""
    return _scale(suv, cfg.pet_window)


def check_data_config(cfg: DataConfig) -> None:
    """The intensity windows, label mode and target spacing of ``cfg`` (a ConfigError naming the field)."""
    for name in ("ct_window", "pet_window"):
        lo, hi = getattr(cfg, name)
        if not hi > lo:
            raise ConfigError(f"data.{name} must be (low, high) with high > low, got {(lo, hi)}")
    if cfg.label_mode not in ("binary", "multiclass"):
        raise ConfigError(f"data.label_mode must be 'binary' or 'multiclass', got {cfg.label_mode!r}")
    if cfg.target_spacing is not None and any(s <= 0 for s in cfg.target_spacing):
        raise ConfigError(f"data.target_spacing must be positive, got {cfg.target_spacing}")


# ------------------------------------------------------------------------------------------- preprocessing
def preprocess_images(
    ct_path: str | Path,
    pet_path: str | Path,
    cfg: DataConfig,
    label_path: str | Path | None = None,
    case_id: str = "case",
) -> PreprocessedCase:
    """Read, check, align and normalise one CT/PET(/label) triple (see the module docstring)."""
    check_data_config(cfg)
    ct = read_volume(ct_path)
    pet = read_volume(pet_path)
    check_finite(ct)
    check_finite(pet)
    check_modalities(ct, pet)
    check_overlap(ct, pet)
    pet_max = float(pet.array.max())
    if pet_max > _SUV_MAX_PLAUSIBLE:
        warnings.warn(
            f"{pet.path}: PET values up to {pet_max:.0f} look like activity (Bq/ml), not SUV", stacklevel=2
        )
    label = None
    if label_path is not None:
        label = read_volume(label_path, dtype=None)
        check_same_grid(label, ct)
        check_label_values(label, range(int(cfg.num_label_classes) + 1))

    ornt = nib.orientations.io_orientation(ct.affine)
    ct_arr, canon_aff = reorient(ct.array, ct.affine, ornt)
    canon_shape = tuple(int(v) for v in ct_arr.shape)
    lab_arr = reorient(label.array, label.affine, ornt)[0] if label is not None else None
    lab_arr = lab_arr.astype(np.uint8) if lab_arr is not None else None

    if cfg.target_spacing is None or on_spacing(canon_aff, cfg.target_spacing):
        grid_aff, grid_shape = canon_aff, canon_shape  # already on the working grid: no interpolation
    else:
        grid_aff, grid_shape = _target_grid(canon_aff, canon_shape, tuple(cfg.target_spacing))  # type: ignore[arg-type]
        ct_arr = resample_to_grid(ct_arr, canon_aff, grid_aff, grid_shape, order=1, mode="nearest")
        if lab_arr is not None:
            lab_arr = resample_to_grid(lab_arr, canon_aff, grid_aff, grid_shape, order=0, mode="nearest")

    suv = resample_to_grid(pet.array, pet.affine, grid_aff, grid_shape, order=1, cval=0.0)
    image = np.stack([_scale(ct_arr, cfg.ct_window), pet_channel(suv, cfg)])
    if lab_arr is not None and cfg.label_mode == "binary":
        lab_arr = (lab_arr > 0).astype(np.uint8)
    geometry = CaseGeometry(
        ct_affine=ct.affine.copy(),
        ct_shape=ct.shape,
        ornt=ornt,
        canonical_affine=canon_aff,
        canonical_shape=canon_shape,  # type: ignore[arg-type]
        grid_affine=grid_aff,
        grid_shape=tuple(int(v) for v in grid_shape),  # type: ignore[arg-type]
        ct_path=str(ct_path),
        pet_path=str(pet_path),
    )
    return PreprocessedCase(case_id, image, lab_arr, suv.astype(np.float32, copy=False), geometry)


def preprocess_case(case: Case, cfg: DataConfig) -> PreprocessedCase:
    """:func:`preprocess_images` for a discovered :class:`~h2aseg.data.layouts.Case`."""
    return preprocess_images(case.ct, case.pet, cfg, label_path=case.label, case_id=case.case_id)


def restore_to_ct_grid(array: np.ndarray, geometry: CaseGeometry, *, order: int = 0) -> np.ndarray:
    """Map ``array`` (working grid, optionally with leading channel axes) onto the original CT file's grid.

    Nearest (``order=0``, masks; dtype kept) or linear (``order=1``, probabilities; float32). The result has
    shape ``(..., *geometry.ct_shape)`` and, with ``geometry.ct_affine``, overlays the input CT exactly.
    """
    array = np.asarray(array)
    if tuple(array.shape[-3:]) != tuple(geometry.grid_shape):
        raise ValueError(
            f"array of shape {tuple(array.shape)} is not on the preprocessed grid "
            f"{tuple(geometry.grid_shape)}"
        )
    if array.ndim > 3:
        lead = array.shape[:-3]
        flat = array.reshape((-1, *array.shape[-3:]))
        out = np.stack([restore_to_ct_grid(a, geometry, order=order) for a in flat])
        return out.reshape((*lead, *out.shape[1:]))
    same = tuple(geometry.grid_shape) == tuple(geometry.canonical_shape) and np.allclose(
        geometry.grid_affine, geometry.canonical_affine, atol=1e-6
    )
    canon = (
        array
        if same
        else resample_to_grid(
            array,
            geometry.grid_affine,
            geometry.canonical_affine,
            geometry.canonical_shape,
            order=order,
            mode="nearest",
            antialias=False,
        )
    )
    back = nib.orientations.ornt_transform(_RAS, np.asarray(geometry.ornt))
    out = np.ascontiguousarray(nib.orientations.apply_orientation(canon, back))
    if tuple(out.shape) != tuple(geometry.ct_shape):  # pragma: no cover - guards the orientation algebra
        raise RuntimeError(f"restored shape {out.shape} != CT shape {geometry.ct_shape}")
    return out


# ------------------------------------------------------------------------------------------------- caching
def preprocess_settings(cfg: DataConfig) -> dict[str, Any]:
    """The :class:`DataConfig` fields that change the preprocessed arrays (the cache key's settings part)."""
    return {
        "version": CACHE_VERSION,
        "target_spacing": None if cfg.target_spacing is None else [float(v) for v in cfg.target_spacing],
        "ct_window": [float(v) for v in cfg.ct_window],
        "pet_window": [float(v) for v in cfg.pet_window],
        "label_mode": cfg.label_mode,
        "num_label_classes": int(cfg.num_label_classes),
    }


def _file_identity(path: Path | None) -> list[Any] | None:
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ImageError(f"{p}: file not found") from e
    return [str(p.resolve()), int(st.st_size), int(st.st_mtime_ns)]


class CaseCache:
    """Preprocessed cases stored as ``<cache_dir>/<case_id>-<key>.npz``.

    The key hashes :func:`preprocess_settings` and each input file's (resolved path, size, mtime), so a
    changed setting or a replaced file never reads a stale entry. Entries are written atomically; an
    unreadable entry is recomputed. ``memory_bytes`` > 0 also keeps loaded cases in this process, up to
    that many bytes of arrays, dropping the least recently used case first (``None``: every case).
    """

    def __init__(self, cache_dir: str | Path, cfg: DataConfig, *, memory_bytes: int | None = 0):
        if memory_bytes is not None and memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0 or None, got {memory_bytes}")
        self.cache_dir = Path(cache_dir)
        self.cfg = cfg
        self.memory_bytes = memory_bytes
        self._mem: OrderedDict[str, PreprocessedCase] = OrderedDict()
        self._mem_used = 0

    @property
    def memory_used(self) -> int:
        """Bytes of case arrays held in this process's memory."""
        return self._mem_used

    def key(self, case: Case) -> str:
        """Hex digest identifying ``case`` preprocessed with this cache's settings."""
        payload = {
            "settings": preprocess_settings(self.cfg),
            "case_id": case.case_id,
            "ct": _file_identity(case.ct),
            "pet": _file_identity(case.pet),
            "label": _file_identity(case.label),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def path(self, case: Case) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case.case_id)[:80]
        return self.cache_dir / f"{safe}-{self.key(case)}.npz"

    def get(self, case: Case) -> PreprocessedCase:
        """The preprocessed case, from the cache when a valid entry exists, else computed and stored."""
        path = self.path(case)
        key = str(path)
        if key in self._mem:
            self._mem.move_to_end(key)
            return self._mem[key]
        pc = self._load(path) if path.exists() else None
        if pc is None:
            pc = preprocess_case(case, self.cfg)
            self._save(path, pc)
        self._remember(key, pc)
        return pc

    def _remember(self, key: str, pc: PreprocessedCase) -> None:
        """Keep ``pc`` in memory if it fits the budget, dropping least recently used cases to make room."""
        size = case_nbytes(pc)
        limit = self.memory_bytes
        if limit is not None and size > limit:
            return
        while limit is not None and self._mem and self._mem_used + size > limit:
            _, old = self._mem.popitem(last=False)
            self._mem_used -= case_nbytes(old)
        self._mem[key] = pc
        self._mem_used += size

    def _load(self, path: Path) -> PreprocessedCase | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                ct = z["ct"]
                suv = z["suv"]
                label = z["label"] if "label" in z.files else None
        except Exception:  # a truncated/corrupt entry is simply recomputed
            return None
        image = np.stack([ct, pet_channel(suv, self.cfg)])
        return PreprocessedCase(meta["case_id"], image, label, suv, CaseGeometry.from_dict(meta["geometry"]))

    def _save(self, path: Path, pc: PreprocessedCase) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"case_id": pc.case_id, "geometry": pc.geometry.to_dict()})
        arrays: dict[str, np.ndarray] = {"ct": pc.image[0], "suv": pc.suv, "meta": np.array(meta)}
        if pc.label is not None:
            arrays["label"] = pc.label

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, write)
