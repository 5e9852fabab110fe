"""Repositioning of a patient between two studies: a rigid motion of the anatomy and lesions (world RAS+ mm).

A follow-up study images the baseline's patient lying slightly differently on the table:
``x_followup = R @ (x_baseline - centre_mm) + centre_mm + translation_mm`` with
``R = Rz(rz) @ Ry(ry) @ Rx(rx)``, ``rotation_deg = (rx, ry, rz)``: right-handed turns about the world x
(towards the patient's right), y (anterior) and z (superior) axes through ``centre_mm``. The scanner table
stays where it is. Values are rounded before use, so the recorded numbers reproduce the motion exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from h2aseg.synth.anatomy import Anatomy
from h2aseg.synth.errors import PhantomError
from h2aseg.synth.lesions import Lesion
from h2aseg.synth.shapes import Ellipsoid, Mapped, Shape, rot_x, rot_y, rot_z
from h2aseg.synth.tissues import T

Vec3 = tuple[float, float, float]
# the draw: a turn about the body (z) axis and a shift, the front-back shift kept small (the table)
MAX_ROTATION_DEG = 3.0
MAX_TRANSLATION_MM: Vec3 = (10.0, 3.0, 10.0)
CONVENTION = (
    "x_followup = R @ (x_baseline - centre_mm) + centre_mm + translation_mm; "
    "R = Rz(rotation_deg[2]) @ Ry(rotation_deg[1]) @ Rx(rotation_deg[0]); world RAS+ mm; "
    "matrix: the same map as a 4x4 affine"
)


def _vec3(values: Sequence[float]) -> Vec3:
    return (float(values[0]), float(values[1]), float(values[2]))


@dataclass(frozen=True)
class Repositioning:
    """A rigid motion from a baseline's world coordinates to its follow-up's (RAS+ mm)."""

    rotation_deg: Vec3
    translation_mm: Vec3
    centre_mm: Vec3

    @property
    def rotation(self) -> np.ndarray:
        rx, ry, rz = self.rotation_deg
        return rot_z(rz) @ rot_y(ry) @ rot_x(rx)

    @property
    def offset(self) -> np.ndarray:
        """``b`` of ``x -> R x + b``."""
        c = np.asarray(self.centre_mm)
        return c - self.rotation @ c + np.asarray(self.translation_mm)

    def matrix(self) -> np.ndarray:
        """The motion as a 4x4 affine (baseline world -> follow-up world)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.offset
        return m

    def apply(self, points: np.ndarray | Sequence[float]) -> np.ndarray:
        """Baseline world points ``(..., 3)`` in the follow-up's world."""
        return np.asarray(points, dtype=np.float64) @ self.rotation.T + self.offset

    def move_shape(self, shape: Shape) -> Shape:
        return Mapped(shape, self.rotation, self.offset)

    def move_ellipsoid(self, e: Ellipsoid) -> Ellipsoid:
        """``e`` moved exactly (still an ellipsoid: its axes turn with the body)."""
        rot = self.rotation if e.rot is None else self.rotation @ e.rot
        return Ellipsoid(self.apply(e.c), e.r, rot, e.lobes)

    def move_anatomy(self, anat: Anatomy) -> Anatomy:
        """The patient moved: every shape but the scanner table, the lesion hosts and vertebrae."""
        shapes = [(s if v == T["table"] else self.move_shape(s), v) for s, v in anat.shapes]
        organs = {k: self.move_ellipsoid(e) for k, e in anat.organs.items()}
        vertebrae = [self.move_ellipsoid(e) for e in anat.vertebrae]
        return Anatomy(shapes, organs, vertebrae, anat.frame, dict(anat.params))

    def move_lesion(self, les: Lesion) -> Lesion:
        return replace(les, shape=self.move_shape(les.shape), center=self.apply(les.center))

    def record(self) -> dict[str, Any]:
        """For ``phantom.json``: the parameters, the 4x4 matrix and the convention that links them."""
        return {
            "rotation_deg": list(self.rotation_deg),
            "translation_mm": list(self.translation_mm),
            "centre_mm": list(self.centre_mm),
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix()],
            "convention": CONVENTION,
        }

    @classmethod
    def from_record(cls, rec: Any, where: str) -> Repositioning:
        """The motion of a ``phantom.json`` record; :class:`PhantomError` naming ``where`` if malformed."""
        try:
            vals = {k: _vec3(rec[k]) for k in ("rotation_deg", "translation_mm", "centre_mm")}
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise PhantomError(
                f"{where}: repositioning needs rotation_deg, translation_mm and centre_mm, three numbers "
                f"each ({type(e).__name__}: {e})"
            ) from e
        if not all(np.isfinite(v).all() for v in vals.values()):
            raise PhantomError(f"{where}: repositioning values must be finite numbers, got {vals}")
        return cls(**vals)


def draw_repositioning(rng: np.random.Generator, centre_mm: Sequence[float]) -> Repositioning:
    """A turn of up to :data:`MAX_ROTATION_DEG` about the body axis through ``centre_mm`` and a shift of up
    to :data:`MAX_TRANSLATION_MM` per axis (uniform); rounded to 0.01 degree and 0.01 mm."""
    rz = round(float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)), 2)
    t = [round(float(rng.uniform(-m, m)), 2) for m in MAX_TRANSLATION_MM]
    return Repositioning((0.0, 0.0, rz), _vec3(t), _vec3([round(float(v), 2) for v in centre_mm]))
