"""A tiny synthetic patient at two time points with known lesion correspondences.

The patient is defined in **baseline world** mm: a body (soft tissue), a spine (bone), a lung (air), a
liver (SUV ~2 with a fixed pattern, so its SD is not 0) and spherical lesions. The follow-up is the same
patient moved by a known rigid transform (baseline world -> follow-up world): each follow-up voxel samples
the patient at the baseline point it came from, with the follow-up's lesions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2aseg.data.io import write_volume

SHAPE = (48, 48, 48)
SPACING = 4.0
ORIGIN = (-94.0, -94.0, -94.0)


@dataclass(frozen=True)
class Sphere:
    name: str
    centre: tuple[float, float, float]  # baseline world mm
    radius: float
    suv: float


#: (baseline, follow-up) spheres by name; None = absent at that time point.
LESIONS: dict[str, tuple[Sphere | None, Sphere | None]] = {
    "shrinks": (Sphere("shrinks", (-40, 20, 40), 12, 8.0), Sphere("shrinks", (-40, 20, 40), 8, 4.0)),
    "grows": (Sphere("grows", (40, 20, 40), 8, 6.0), Sphere("grows", (40, 20, 40), 12, 9.0)),
    "vanishes": (Sphere("vanishes", (-40, 10, -40), 8, 5.0), None),
    "new": (None, Sphere("new", (40, 10, -40), 8, 7.0)),
    "stable": (Sphere("stable", (0, 30, 0), 10, 5.0), Sphere("stable", (0, 30, 0), 10, 5.0)),
}
LIVER_CENTRE, LIVER_RADII = (-35.0, -5.0, 0.0), (22.0, 18.0, 26.0)


def affine() -> np.ndarray:
    a = np.diag([SPACING, SPACING, SPACING, 1.0])
    a[:3, 3] = ORIGIN
    return a


def rigid_matrix(angle_deg: float, shift_mm: tuple[float, float, float]) -> np.ndarray:
    """Rotation about z (superior) by ``angle_deg`` about the origin, then ``shift_mm``: 4x4, RAS+."""
    t = math.radians(angle_deg)
    m = np.eye(4)
    m[:2, :2] = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    m[:3, 3] = shift_mm
    return m


def _points(matrix: np.ndarray) -> np.ndarray:
    """Baseline world points ``(*SHAPE, 3)`` of the voxels of a grid moved by ``matrix`` (baseline world ->
    that study's world)."""
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), axis=-1).astype(np.float64)
    world = idx @ affine()[:3, :3].T + affine()[:3, 3]
    inv = np.linalg.inv(matrix)
    return world @ inv[:3, :3].T + inv[:3, 3]


def _inside(p: np.ndarray, centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    return sum(((p[..., k] - centre[k]) / radii[k]) ** 2 for k in range(3)) <= 1.0


def study_arrays(matrix: np.ndarray, time: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CT (HU), SUV, lesion mask and liver mask of time point ``time`` (0 baseline, 1 follow-up) on the
    grid moved by ``matrix``."""
    p = _points(matrix)
    ct = np.full(SHAPE, -1000.0, np.float32)
    suv = np.full(SHAPE, 0.05, np.float32)
    body = _inside(p, (0, 0, 0), (80, 55, 90))
    ct[body], suv[body] = 40.0, 1.0
    lung = _inside(p, (30, -5, 30), (22, 25, 30))
    ct[lung], suv[lung] = -800.0, 0.5
    spine = _inside(p, (0, -40, 0), (10, 10, 85))
    ct[spine] = 700.0
    liver = _inside(p, LIVER_CENTRE, LIVER_RADII)
    ct[liver] = 60.0
    suv[liver] = 2.0 + 0.3 * np.sin(p[..., 0][liver] / 5.0) * np.cos(p[..., 2][liver] / 7.0)
    mask = np.zeros(SHAPE, np.uint8)
    for spheres in LESIONS.values():
        s = spheres[time]
        if s is not None:
            inside = _inside(p, s.centre, (s.radius,) * 3)
            mask[inside], suv[inside] = 1, s.suv
    return ct, suv, mask, liver.astype(np.uint8)


@dataclass(frozen=True)
class StudyFiles:
    folder: Path
    ct: Path
    pet: Path
    mask: Path
    liver: Path


def write_study(folder: Path, matrix: np.ndarray, time: int, mask_name: str = "mask.nii.gz") -> StudyFiles:
    """An AutoPET-like study folder (``CTres.nii.gz``, ``SUV.nii.gz``), its mask and liver mask beside."""
    ct, suv, mask, liver = study_arrays(matrix, time)
    a = affine()
    paths = [
        write_volume(folder / "CTres.nii.gz", ct, a),
        write_volume(folder / "SUV.nii.gz", suv, a),
        write_volume(folder.parent / f"{folder.name}-{mask_name}", mask, a),
        write_volume(folder.parent / f"{folder.name}-liver.nii.gz", liver, a),
    ]
    return StudyFiles(folder, *paths)


def lesion_at(labels: np.ndarray, centre: tuple[float, float, float], matrix: np.ndarray) -> int:
    """The label at the voxel of baseline world point ``centre`` on the grid moved by ``matrix``."""
    q = matrix @ np.array([*centre, 1.0])
    idx = np.round(np.linalg.solve(affine(), q)[:3]).astype(int)
    return int(labels[tuple(idx)])
