"""A synthetic PET/CT phantom: whole-body (AutoPET-like) and head-and-neck (HECKTOR-like) studies.

The anatomy is a set of analytic shapes (ellipsoids, elliptic cross-sections along z, rings, boxes) in world
coordinates (RAS+ mm), rasterised by point sampling on any axis-aligned grid, so one patient can be imaged on
the CT grid and on a different PET grid. A canonical adult (vertex at d = 0 mm to mid-thigh at d = 1000 mm) is
scaled to the grid's physical extent, so a small demo grid still shows a whole body; lesions are sized in real
millimetres. Each tissue has a CT value (HU + texture) and a study-dependent SUV; PET is then blurred by a
Gaussian point-spread function (FWHM 6-7 mm) and given count-dependent, spatially correlated noise. See
``docs/phantom.md`` for what is and is not modelled.

:func:`synth_case` makes one study (arrays + affines + metadata); :func:`write_cohort` writes a cohort in a
real dataset layout (``autopet``, ``autopet-nnunet``, ``hecktor`` or ``csv``) and returns its cases.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from h2aseg.data.io import write_volume
from h2aseg.data.layouts import Case, nnunet_patient_id
from h2aseg.files import atomic_write_text

PHANTOM_VERSION = 1
KINDS = ("wholebody", "headneck")
LAYOUT_KIND = {
    "autopet": "wholebody",
    "autopet-nnunet": "wholebody",
    "csv": "wholebody",
    "hecktor": "headneck",
}
DEFAULT_SHAPE = (128, 128, 160)
DEFAULT_SPACING = {"wholebody": (4.0, 4.0, 5.0), "headneck": (2.0, 2.0, 2.0)}
HECKTOR_CENTRES = ("CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR")


class PhantomError(ValueError):
    """Invalid phantom parameters or output folder; the message says which."""


# ------------------------------------------------------------------------------------------------ tissues
# name: (HU, HU texture amplitude, PET heterogeneity (log-normal sigma)); SUVs are drawn per study.
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, 0.0, 0.0),
    "fat": (-100.0, 10.0, 0.15),
    "muscle": (45.0, 8.0, 0.10),
    "viscera": (5.0, 45.0, 0.45),
    "lung": (-840.0, 35.0, 0.10),
    "mediastinum": (-70.0, 20.0, 0.12),
    "blood": (40.0, 4.0, 0.05),
    "myocardium": (45.0, 5.0, 0.25),
    "liver": (58.0, 5.0, 0.06),
    "spleen": (48.0, 5.0, 0.06),
    "kidney": (35.0, 6.0, 0.10),
    "urine_kidney": (12.0, 3.0, 0.10),
    "bladder": (8.0, 3.0, 0.03),
    "brain_gm": (38.0, 3.0, 0.08),
    "brain_wm": (28.0, 3.0, 0.08),
    "csf": (8.0, 3.0, 0.05),
    "cortical_bone": (1000.0, 120.0, 0.10),
    "marrow": (260.0, 60.0, 0.15),
    "airway": (-950.0, 20.0, 0.05),
    "salivary": (25.0, 6.0, 0.10),
    "tonsil": (45.0, 5.0, 0.12),
    "thyroid": (90.0, 8.0, 0.10),
    "table": (180.0, 40.0, 0.0),
    "eye": (10.0, 3.0, 0.05),
}
TISSUE_NAMES = tuple(TISSUES)
T = {name: i for i, name in enumerate(TISSUE_NAMES)}
_LOW_DENSITY = ("lung", "fat", "mediastinum", "airway", "viscera", "air")
_BONE = ("cortical_bone", "marrow")

# lymph-node stations of the canonical body: (x, y, d) mm, x > 0 = patient's right, y > 0 = anterior
NODE_STATIONS: dict[str, tuple[float, float, float]] = {
    "cervical_r": (42, 10, 252),
    "cervical_l": (-42, 10, 252),
    "supraclavicular_r": (58, 12, 305),
    "supraclavicular_l": (-58, 12, 305),
    "axillary_r": (150, -15, 350),
    "axillary_l": (-150, -15, 350),
    "paratracheal": (14, 22, 420),
    "hilar_r": (45, 5, 455),
    "hilar_l": (-45, 5, 455),
    "paraaortic": (-5, -30, 700),
    "paraaortic_low": (5, -25, 745),
    "mesenteric": (25, 40, 700),
    "iliac_r": (62, -5, 810),
    "iliac_l": (-62, -5, 810),
    "inguinal_r": (85, 45, 905),
    "inguinal_l": (-85, 45, 905),
}
HN_NODE_LEVELS = {"II": (45, 8, 242), "III": (48, 8, 272), "IV": (50, 4, 300)}


# ------------------------------------------------------------------------------------------- geometry
class _Grid:
    """An axis-aligned voxel grid: ``affine`` with a diagonal 3x3 part (signs allowed)."""

    def __init__(self, shape: Sequence[int], affine: np.ndarray):
        self.shape = tuple(int(v) for v in shape)
        self.affine = np.asarray(affine, dtype=np.float64)
        lin = self.affine[:3, :3]
        if not np.allclose(lin, np.diag(np.diag(lin))):
            raise PhantomError("phantom grids must be axis-aligned")
        self.step = np.diag(lin).copy()
        self.origin = self.affine[:3, 3].copy()
        self.spacing = np.abs(self.step)
        self.coords = [
            (self.step[a] * np.arange(n) + self.origin[a]).astype(np.float32)
            for a, n in enumerate(self.shape)
        ]

    def window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index slices and broadcastable world coordinates of the voxels inside the box [lo, hi]."""
        sl, xyz = [], []
        for a in range(3):
            i0 = (lo[a] - self.origin[a]) / self.step[a]
            i1 = (hi[a] - self.origin[a]) / self.step[a]
            start = max(0, math.ceil(min(i0, i1) - 1e-6))
            stop = min(self.shape[a], math.floor(max(i0, i1) + 1e-6) + 1)
            if stop <= start:
                return None
            sl.append(slice(start, stop))
            shp = [1, 1, 1]
            shp[a] = stop - start
            xyz.append(self.coords[a][start:stop].reshape(shp))
        return tuple(sl), xyz


class _Shape:
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


class _Ellipsoid(_Shape):
    """Ellipsoid, axes = columns of ``rot``; optional lobulation ``lobes`` [(unit dir, amp, freq, phase)]."""

    def __init__(
        self,
        center: Sequence[float],
        radii: Sequence[float],
        rot: np.ndarray | None = None,
        lobes: list[tuple[np.ndarray, float, float, float]] | None = None,
    ):
        self.c = np.asarray(center, dtype=np.float64)
        self.r = np.maximum(np.asarray(radii, dtype=np.float64), 1e-3)
        self.rot = rot
        self.lobes = lobes or []
        grow = 1.0 + sum(abs(a) for _, a, _, _ in self.lobes)
        extent = self.r if rot is None else np.sqrt(((rot * self.r[None, :]) ** 2).sum(axis=1))
        half = extent * grow
        self._lo, self._hi = self.c - half, self.c + half

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lo, self._hi

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - np.float32(self.c[0]), y - np.float32(self.c[1]), z - np.float32(self.c[2])
        if self.rot is None:
            u = (dx / self.r[0], dy / self.r[1], dz / self.r[2])
            q = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
        else:
            m = self.rot
            u = tuple((dx * m[0, i] + dy * m[1, i] + dz * m[2, i]) / self.r[i] for i in range(3))
            q = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
        if not self.lobes:
            return q < 1.0
        norm = np.sqrt(q) + 1e-6
        thr = np.ones_like(q)
        for v, amp, freq, phase in self.lobes:
            cosang = np.clip((u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / norm, -1.0, 1.0)
            thr = thr + amp * np.cos(freq * np.arccos(cosang) + phase)
        return norm < thr


class _ZSection(_Shape):
    """Elliptic cross-sections interpolated along z: knots (z, cx, cy, rx, ry), z ascending."""

    def __init__(self, knots: np.ndarray):
        k = np.asarray(knots, dtype=np.float64)
        self.k = k[np.argsort(k[:, 0])]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        k = self.k
        lo = np.array([(k[:, 1] - k[:, 3]).min(), (k[:, 2] - k[:, 4]).min(), k[0, 0]])
        hi = np.array([(k[:, 1] + k[:, 3]).max(), (k[:, 2] + k[:, 4]).max(), k[-1, 0]])
        return lo, hi

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        zz = z.ravel().astype(np.float64)
        shp = z.shape
        p = [np.interp(zz, self.k[:, 0], self.k[:, i]).astype(np.float32).reshape(shp) for i in range(1, 5)]
        rx, ry = np.maximum(p[2], 1e-3), np.maximum(p[3], 1e-3)
        valid = (
            (zz >= self.k[0, 0]) & (zz <= self.k[-1, 0]) & (p[2].ravel() > 0) & (p[3].ravel() > 0)
        ).reshape(shp)
        return ((((x - p[0]) / rx) ** 2 + ((y - p[1]) / ry) ** 2) < 1.0) & valid


class _Ring(_Shape):
    """Elliptic annulus in the axial plane (|z - cz| <= half_h), minus angular wedges (deg, half-width)."""

    def __init__(
        self,
        center: Sequence[float],
        rx: float,
        ry: float,
        thick: float,
        half_h: float,
        exclude: Sequence[tuple[float, float]] = (),
    ):
        self.c = np.asarray(center, dtype=np.float64)
        self.rx, self.ry, self.t, self.h = rx, ry, thick, half_h
        self.exclude = [(math.radians(a), math.radians(w)) for a, w in exclude]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.array([self.rx, self.ry, self.h])
        return self.c - half, self.c + half

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy = x - np.float32(self.c[0]), y - np.float32(self.c[1])
        q_out = (dx / self.rx) ** 2 + (dy / self.ry) ** 2
        q_in = (dx / max(self.rx - self.t, 1e-3)) ** 2 + (dy / max(self.ry - self.t, 1e-3)) ** 2
        m = (q_out < 1.0) & (q_in >= 1.0) & (np.abs(z - np.float32(self.c[2])) <= self.h)
        if self.exclude:
            ang = np.arctan2(dy, dx)
            for a0, w in self.exclude:
                diff = np.abs((ang - a0 + np.pi) % (2 * np.pi) - np.pi)
                m &= diff > w
        return m


class _Box(_Shape):
    def __init__(self, lo: Sequence[float], hi: Sequence[float]):
        self._lo, self._hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lo, self._hi

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        lo, hi = self._lo, self._hi
        return (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])


class _Union(_Shape):
    def __init__(self, parts: list[_Shape]):
        self.parts = parts

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = [p.bounds() for p in self.parts]
        return np.min([lo for lo, _ in b], axis=0), np.max([hi for _, hi in b], axis=0)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        m = self.parts[0].inside(x, y, z)
        for p in self.parts[1:]:
            m = m | p.inside(x, y, z)
        return m


def _mask_on(grid: _Grid, shape: _Shape) -> tuple[tuple[slice, ...], np.ndarray] | None:
    lo, hi = shape.bounds()
    win = grid.window(lo, hi)
    if win is None:
        return None
    sl, (x, y, z) = win
    m = np.broadcast_to(shape.inside(x, y, z), tuple(s.stop - s.start for s in sl))
    return sl, m


def _paint(tissue: np.ndarray, grid: _Grid, shape: _Shape, value: int) -> None:
    r = _mask_on(grid, shape)
    if r is not None:
        sl, m = r
        tissue[sl][m] = value


# ------------------------------------------------------------------------------------------- anatomy
@dataclass
class _Frame:
    """Canonical body coordinates (x, y, d) -> world (RAS mm): scales sx (axial plane) and sz, vertex z."""

    sx: float
    sz: float
    z_vertex: float

    def p(self, x: float, y: float, d: float) -> np.ndarray:
        return np.array([self.sx * x, self.sx * y, self.z_vertex - self.sz * d])

    def r(self, rx: float, ry: float, rz: float) -> np.ndarray:
        return np.array([self.sx * rx, self.sx * ry, self.sz * rz])

    def knots(self, rows: Sequence[Sequence[float]]) -> np.ndarray:
        """Rows (d, cx, cy, rx, ry) in canonical mm -> _ZSection knots in world mm."""
        return np.array(
            [
                [self.z_vertex - self.sz * d, self.sx * cx, self.sx * cy, self.sx * rx, self.sx * ry]
                for d, cx, cy, rx, ry in rows
            ]
        )


@dataclass
class _Anatomy:
    shapes: list[tuple[_Shape, int]]
    organs: dict[str, _Ellipsoid]  # lesion hosts
    vertebrae: list[_Ellipsoid]
    frame: _Frame
    params: dict[str, float] = field(default_factory=dict)


_TRUNK = np.array(
    [  # d, rx, ry, cy (canonical adult)
        (200, 58, 60, -8),
        (270, 60, 62, -10),
        (300, 115, 82, -6),
        (330, 182, 112, 0),
        (420, 172, 118, 0),
        (520, 165, 120, 2),
        (620, 158, 118, 6),
        (720, 162, 116, 6),
        (800, 176, 110, 2),
        (870, 182, 105, 0),
        (895, 170, 95, 0),
    ],
    dtype=np.float64,
)


def _build_anatomy(
    rng: np.random.Generator, frame: _Frame, bladder_fill: float, fov: tuple[np.ndarray, np.ndarray]
) -> _Anatomy:
    """The patient's anatomy as painter's-order shapes (later shapes overwrite earlier ones)."""
    wf, df = rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.08)
    tf = rng.uniform(8.0, 30.0)  # subcutaneous fat thickness (trunk), canonical mm

    def org() -> float:
        return rng.uniform(0.9, 1.1)

    d_k = _TRUNK[:, 0]
    rx_k, ry_k, cy_k = _TRUNK[:, 1] * wf, _TRUNK[:, 2] * df, _TRUNK[:, 3]

    def body(d: float) -> tuple[float, float, float]:
        return float(np.interp(d, d_k, rx_k)), float(np.interp(d, d_k, ry_k)), float(np.interp(d, d_k, cy_k))

    def fat(d: float) -> float:
        return float(np.interp(d, [200, 300, 345], [0.3 * tf, 0.3 * tf, tf]))

    def back(d: float) -> float:
        _, ry, cy = body(d)
        return cy - ry

    def front(d: float) -> float:
        _, ry, cy = body(d)
        return cy + ry

    def spine_y(d: float) -> float:
        return back(d) + fat(d) + float(np.interp(d, [200, 300, 345], [34, 40, 62]))

    F = frame
    shapes: list[tuple[_Shape, int]] = []

    def add(shape: _Shape, tissue: str) -> None:
        shapes.append((shape, T[tissue]))

    def ell(
        c: Sequence[float], r: Sequence[float], rotz: float = 0.0, rot: np.ndarray | None = None
    ) -> _Ellipsoid:
        m = rot if rot is not None else (_rot_z(rotz) if rotz else None)
        return _Ellipsoid(F.p(*c), F.r(*r), m)

    def shell(
        c: Sequence[float],
        r: Sequence[float],
        t: float,
        outer: str,
        inner: str,
        rotz: float = 0.0,
        rot: np.ndarray | None = None,
    ) -> _Ellipsoid:
        e = ell(c, r, rotz, rot)
        add(e, outer)
        add(ell(c, [max(v - t, 0.5) for v in r], rotz, rot), inner)
        return e

    def section(rows: Sequence[Sequence[float]]) -> _ZSection:
        return _ZSection(F.knots(rows))

    # table under the patient (CT only)
    back_min = min(back(d) for d in np.linspace(300, 900, 13))
    (lo, hi) = fov
    ty = F.sx * (back_min - 6)
    add(_Box([lo[0] * 0.85, ty - 12 * F.sx, lo[2] - 10], [hi[0] * 0.85, ty, hi[2] + 10]), "table")
    # body outline: fat, then muscle inset by the fat thickness
    head = (0.0, 8.0, 115.0)
    head_r = np.array([78.0, 98.0, 118.0]) * rng.uniform(0.95, 1.05)
    trunk_rows = [(d, 0.0, cy, rx, ry) for d, rx, ry, cy in zip(d_k, rx_k, ry_k, cy_k, strict=True)]
    thigh_rows = {
        s: [(860, s * 92 * wf, 0, 80 * wf, 88 * df), (1010, s * 96 * wf, 0, 64 * wf, 70 * df)]
        for s in (1, -1)
    }
    add(ell(head, head_r), "fat")
    add(section(trunk_rows), "fat")
    for s in (1, -1):
        add(section(thigh_rows[s]), "fat")
    add(ell(head, head_r - 4), "muscle")
    add(section([(d, cx, cy, rx - fat(d), ry - fat(d)) for d, cx, cy, rx, ry in trunk_rows]), "muscle")
    for s in (1, -1):
        add(
            section([(d, cx, cy, rx - 0.8 * tf, ry - 0.8 * tf) for d, cx, cy, rx, ry in thigh_rows[s]]),
            "muscle",
        )

    # cavities
    def cavity(ds: Sequence[float], wall_x: float, wall_y: float, shift: float) -> list[tuple[float, ...]]:
        rows = []
        for d in ds:
            rx, ry, cy = body(d)
            rows.append((d, 0.0, cy + shift, rx - fat(d) - wall_x, ry - fat(d) - wall_y))
        return rows

    abd_rows = cavity([560, 640, 720, 800, 850], 16, 22, 8)
    abd_rows.append((868, 0.0, body(868)[2] + 12, abd_rows[-1][3] * 0.7, abd_rows[-1][4] * 0.6))
    add(section(abd_rows), "viscera")
    tho_rows = cavity([330, 360, 450, 540, 565], 18, 24, 6)
    tho_rows.insert(0, (318, 0.0, body(318)[2] + 6, tho_rows[0][3] * 0.6, tho_rows[0][4] * 0.75))
    add(section(tho_rows), "mediastinum")
    cav_rx, cav_ry, cav_cy = tho_rows[3][3], tho_rows[3][4], tho_rows[3][2]  # thorax at d = 450
    abd_rx, abd_ry, abd_cy = abd_rows[1][3], abd_rows[1][4], abd_rows[1][2]  # abdomen at d = 640

    organs: dict[str, _Ellipsoid] = {}
    # lungs
    for side, name in ((1, "lung_r"), (-1, "lung_l")):
        size = org()
        e = ell(
            (side * 0.52 * cav_rx, cav_cy - 0.05 * cav_ry, 448 + 4 * side),
            (0.45 * cav_rx * size, 0.9 * cav_ry, 122 * size),
        )
        add(e, "lung")
        organs[name] = e
    # muscles along the spine (paraspinal, psoas)
    for s in (1, -1):
        add(section([(d, s * 30, back(d) + fat(d) + 26, 24, 20) for d in (300, 560, 840)]), "muscle")
        add(
            section(
                [
                    (d, s * x, spine_y(d) - 2, r, r)
                    for d, x, r in ((640, 35, 10), (740, 45, 20), (840, 55, 26))
                ]
            ),
            "muscle",
        )
    # heart and great vessels
    hs = org()
    heart_c = (-0.15 * cav_rx, cav_cy + 0.28 * cav_ry, 505)
    heart_r = (0.42 * cav_rx * hs, 0.5 * cav_ry * hs, 58 * hs)
    shell(heart_c, heart_r, 11, "myocardium", "blood", rotz=-25)
    y_desc = spine_y(560) + 33
    y_asc = cav_cy + 0.25 * cav_ry
    add(section([(d, -0.12 * cav_rx, spine_y(d) + 33, 12, 12) for d in (425, 560, 700, 800)]), "blood")
    add(section([(418, 0.02 * cav_rx, y_asc, 14, 14), (470, 0.02 * cav_rx, y_asc, 14, 14)]), "blood")
    a0 = np.array([0.02 * cav_rx, y_asc]) * F.sx
    a1 = np.array([-0.12 * cav_rx, y_desc]) * F.sx
    mid = (a0 + a1) / 2
    ang = math.degrees(math.atan2(a1[1] - a0[1], a1[0] - a0[0]))
    arch = _Ellipsoid(
        [mid[0], mid[1], F.z_vertex - F.sz * 420],
        [np.linalg.norm(a1 - a0) / 2 + 12 * F.sx, 12 * F.sx, 12 * F.sz],
        _rot_z(ang),
    )
    add(arch, "blood")
    add(section([(d, 0.14 * abd_rx, spine_y(d) + 33, 11, 11) for d in (560, 700, 800)]), "blood")  # IVC
    # abdominal organs
    ls = org()
    liver = ell(
        (0.42 * abd_rx, abd_cy + 0.08 * abd_ry, 612),
        (0.56 * abd_rx * ls, 0.8 * abd_ry * ls, 80 * ls),
        rotz=-15,
    )
    add(liver, "liver")
    add(
        ell((-0.05 * abd_rx, abd_cy + 0.45 * abd_ry, 592), (0.4 * abd_rx * ls, 0.35 * abd_ry, 42 * ls)),
        "liver",
    )
    organs["liver"] = liver
    ss = org()
    add(
        ell(
            (-0.7 * abd_rx, abd_cy - 0.35 * abd_ry, 598),
            (0.22 * abd_rx * ss, 0.3 * abd_ry * ss, 50 * ss),
            rotz=30,
        ),
        "spleen",
    )
    for s in (1, -1):
        ks = org()
        kc = (s * 0.48 * abd_rx, spine_y(665) + 8, 668 if s > 0 else 655)
        kr = (0.19 * abd_rx * ks, 0.25 * abd_ry * ks, 52 * ks)
        add(ell(kc, kr, rotz=s * 20), "kidney")
        add(
            ell(
                (kc[0] - s * 0.3 * kr[0], kc[1] + 0.2 * kr[1], kc[2]),
                (0.35 * kr[0], 0.35 * kr[1], 0.4 * kr[2]),
            ),
            "urine_kidney",
        )
    f = bladder_fill ** (1 / 3)
    add(
        ell(
            (0, abd_rows[-2][2] + 0.25 * abd_rows[-2][4], 842), (0.36 * abd_rx * f, 0.4 * abd_ry * f, 32 * f)
        ),
        "bladder",
    )
    # neck: airway, thyroid, salivary glands, tonsils
    ya = [(d, spine_y(d) + 38) for d in (180, 235, 300, 445)]
    add(
        section([(d, 0, y, rx, ry) for (d, y), rx, ry in zip(ya, (16, 12, 9, 9), (8, 9, 9, 8), strict=True)]),
        "airway",
    )
    for s in (1, -1):
        add(ell((s * 16, spine_y(310) + 48, 310), (8, 11, 20)), "thyroid")
        add(ell((s * 0.7 * head_r[0], 0.0, 190), (12, 18, 22)), "salivary")
        add(ell((s * 36, 30, 228), (11, 11, 10)), "salivary")
        add(ell((s * 13, spine_y(205) + 44, 205), (7, 7, 10)), "tonsil")
    add(
        _Ring(F.p(0, 12, 220), 48 * F.sx, 62 * F.sx, 8 * F.sx, 11 * F.sz, exclude=[(-90, 95)]),
        "cortical_bone",
    )
    # skull and brain
    sk_c, sk_r = (0.0, 5.0, 92.0), head_r * np.array([72 / 78, 90 / 98, 84 / 118])
    add(ell(sk_c, sk_r), "cortical_bone")
    add(ell(sk_c, sk_r - 7), "csf")
    add(ell(sk_c, sk_r - 9), "brain_gm")
    add(ell((0, 3, 95), (sk_r - 9) * 0.72), "brain_wm")
    for s in (1, -1):
        add(ell((s * 8, 5, 86), (5, 18, 12)), "csf")
        add(ell((s * 32, 72, 118), (12, 12, 12)), "eye")
    # spine: spinal canal, vertebral bodies (cortical shell + marrow), spinous processes
    vertebrae: list[_Ellipsoid] = []
    d = 228.0
    while d < 805:
        h = float(np.interp(d, [228, 330, 560, 800], [13, 17, 23, 27]))
        disc = float(np.interp(d, [228, 800], [4, 9]))
        rx = float(np.interp(d, [228, 330, 800], [14, 16, 25]))
        ry = float(np.interp(d, [228, 330, 800], [12, 13, 19]))
        yc = spine_y(d + h / 2)
        add(section([(d, 0, yc, rx, ry), (d + h, 0, yc, rx, ry)]), "cortical_bone")
        add(
            section([(d + 1.5, 0, yc, rx - 2.5, ry - 2.5), (d + h - 1.5, 0, yc, rx - 2.5, ry - 2.5)]),
            "marrow",
        )
        add(ell((0, yc - ry - 24, d + h / 2), (5, 13, h * 0.45)), "cortical_bone")
        for s in (1, -1):
            add(ell((s * 10, yc - ry - 10, d + h / 2), (6, 7, h * 0.4)), "cortical_bone")
        vertebrae.append(ell((0, yc, d + h / 2), (rx, ry, h / 2)))
        d += h + disc
    add(
        section(
            [
                (dd, 0, spine_y(dd) - float(np.interp(dd, [228, 800], [12, 19])) - 10, 7, 7)
                for dd in (228, 330, 560, 805)
            ]
        ),
        "csf",
    )
    # ribs, sternum, clavicles, scapulae
    for dr in np.arange(338, 566, 23):
        rx, ry, cy = body(dr)
        add(
            _Ring(
                F.p(0, cy, dr),
                (rx - fat(dr) - 5) * F.sx,
                (ry - fat(dr) - 5) * F.sx,
                9 * F.sx,
                4.5 * F.sz,
                exclude=[(90, 40), (-90, 14)],
            ),
            "cortical_bone",
        )
    add(section([(dd, 0, front(dd) - fat(dd) - 9, 15, 6) for dd in (338, 500)]), "marrow")
    for s in (1, -1):
        add(ell((s * 72, front(305) - fat(305) - 16, 308), (70, 8, 8), rotz=-s * 20), "cortical_bone")
        add(
            ell((s * 0.62 * body(390)[0], back(390) + fat(390) + 18, 392), (58, 7, 72), rotz=s * 32),
            "cortical_bone",
        )
    # pelvis and femora
    for s in (1, -1):
        shell(
            (s * 0.62 * body(775)[0], back(775) + fat(775) + 48, 775),
            (20, 62, 55),
            5,
            "cortical_bone",
            "marrow",
            rotz=-s * 40,
        )
        shell(
            (s * 30, front(885) - fat(885) - 20, 885), (28, 10, 14), 3, "cortical_bone", "marrow", rotz=s * 20
        )
        shell((s * 60, back(895) + fat(895) + 58, 895), (15, 22, 22), 3, "cortical_bone", "marrow")
        fh = shell((s * 0.52 * body(872)[0], 0.0, 872), (24, 24, 24), 3, "cortical_bone", "marrow")
        organs[f"femoral_head_{'r' if s > 0 else 'l'}"] = fh
        fx = s * 95 * wf
        add(section([(880, fx, 0, 14, 14), (1010, fx * 1.04, 0, 13, 13)]), "cortical_bone")
        add(section([(884, fx, 0, 8, 8), (1010, fx * 1.04, 0, 7, 7)]), "marrow")
        organs[f"iliac_{'r' if s > 0 else 'l'}"] = ell(
            (s * 0.62 * body(775)[0], back(775) + fat(775) + 48, 775), (20, 62, 55), rotz=-s * 40
        )
    shell((0, spine_y(800) - 8, 822), (42, 18, 45), 4, "cortical_bone", "marrow", rot=_rot_x(25))
    params = {"width_factor": wf, "depth_factor": df, "fat_mm": tf}
    return _Anatomy(shapes, organs, vertebrae, frame, params)


# ------------------------------------------------------------------------------------------- rendering
def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, corr_mm: float
) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~``corr_mm`` (coarse noise, upsampled)."""
    f = np.maximum(1.0, corr_mm / spacing)
    cshape = tuple(math.ceil(n / fi) + 2 for n, fi in zip(shape, f, strict=True))
    c = ndimage.gaussian_filter(rng.standard_normal(cshape).astype(np.float32), 0.8)
    c /= max(float(c.std()), 1e-6)
    out = c
    for axis, n in enumerate(shape):
        pos = (np.arange(n, dtype=np.float32) + 0.5) / f[axis] + 0.5
        i0 = np.clip(np.floor(pos).astype(int), 0, cshape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        wshape = [1] * len(shape)
        wshape[axis] = n
        w = w.reshape(wshape)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
    return np.ascontiguousarray(out, dtype=np.float32)


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox > 0.05:
        n = ndimage.gaussian_filter(n, sigma_vox, mode="wrap")
        n /= max(float(n.std()), 1e-6)
    return n


@dataclass
class _Lesion:
    shape: _Shape
    site: str
    label: int
    suv: float
    diameter_mm: float
    center: np.ndarray
    ct_delta: float  # HU added in soft tissue (negative: hypodense)
    bone_delta: float  # HU added in bone (sclerotic > 0, lytic < 0)
    necrosis: float  # uptake factor of the necrotic core (1 = none)

    def meta(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "label": self.label,
            "suv": round(self.suv, 3),
            "diameter_mm": round(self.diameter_mm, 2),
            "center_mm": [round(float(v), 2) for v in self.center],
            "necrotic": self.necrosis < 1.0,
        }


def _lesion_shape(rng: np.random.Generator, center: np.ndarray, diameter: float) -> _Shape:
    """An irregular lesion: a lobulated, rotated ellipsoid plus up to two satellite blobs."""
    r = diameter / 2
    axes = rng.uniform(0.75, 1.25, 3)
    axes /= np.prod(axes) ** (1 / 3)
    lobes = [
        (
            v / np.linalg.norm(v),
            float(rng.uniform(0.04, 0.12)),
            float(rng.integers(2, 5)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for v in rng.standard_normal((int(rng.integers(1, 4)), 3))
    ]
    parts: list[_Shape] = [_Ellipsoid(center, r * axes, _random_rotation(rng), lobes)]
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        parts.append(
            _Ellipsoid(center + v * r * rng.uniform(0.55, 0.85), np.full(3, r * rng.uniform(0.35, 0.6)))
        )
    return _Union(parts) if len(parts) > 1 else parts[0]


def _inside_point(rng: np.random.Generator, e: _Ellipsoid, frac: float) -> np.ndarray:
    v = rng.standard_normal(3)
    v /= np.linalg.norm(v)
    local = v * e.r * frac * rng.uniform(0, 1) ** (1 / 3)
    return e.c + (local if e.rot is None else e.rot @ local)


def _wholebody_lesions(rng: np.random.Generator, anat: _Anatomy, n: int, min_spacing: float) -> list[_Lesion]:
    F = anat.frame
    s_mean = math.sqrt(F.sx * F.sz)
    d_lo = max(5.0, 1.5 * min_spacing)
    d_hi = max(d_lo + 1.0, 50.0 * float(np.clip(s_mean / 0.7, 0.6, 1.0)))
    d_mid = min(max(d_lo + 2.0, 12.0), d_hi)
    lesions = []
    for _ in range(n):
        site = str(rng.choice(["node", "lung", "liver", "bone"], p=[0.45, 0.2, 0.2, 0.15]))
        if rng.random() < 0.3:  # small lesions (partial-volume loss), log-uniform
            diam = float(math.exp(rng.uniform(math.log(d_lo), math.log(d_mid))))
        else:
            diam = float(rng.uniform(d_mid, d_hi))
        if site == "node":
            name = str(rng.choice(sorted(NODE_STATIONS)))
            c = F.p(*NODE_STATIONS[name]) + rng.normal(0, 5 * s_mean, 3)
            diam = min(diam, 45.0 * max(s_mean, 0.7))
            site = f"node:{name}"
        elif site == "lung":
            e = anat.organs[str(rng.choice(["lung_r", "lung_l"]))]
            c = _inside_point(rng, e, 0.6)
            diam = min(diam, 0.9 * float(e.r.min()))
        elif site == "liver":
            e = anat.organs["liver"]
            c = _inside_point(rng, e, 0.6)
            diam = min(diam, 1.0 * float(e.r.min()))
        else:
            if rng.random() < 0.7:
                e = anat.vertebrae[int(rng.integers(len(anat.vertebrae)))]
            else:
                e = anat.organs[str(rng.choice(["iliac_r", "iliac_l", "femoral_head_r", "femoral_head_l"]))]
            c = _inside_point(rng, e, 0.3)
            diam = min(diam, 2.2 * float(e.r[:2].min()))
        diam = max(diam, d_lo)
        if rng.random() < 0.25:
            suv = rng.uniform(2.0, 3.5)  # faint
        else:
            suv = float(np.clip(rng.lognormal(math.log(6.0), 0.45), 3.0, 15.0))
        necrosis = float(rng.uniform(0.25, 0.5)) if diam > 30 and rng.random() < 0.4 else 1.0
        lesions.append(
            _Lesion(
                _lesion_shape(rng, c, diam),
                site,
                1,
                float(suv),
                diam,
                c,
                ct_delta=float(rng.uniform(8, 18)) * (-2.0 if site == "liver" else 1.0),
                bone_delta=float(rng.choice([1, -1]) * rng.uniform(150, 400)),
                necrosis=necrosis,
            )
        )
    return lesions


def _headneck_lesions(rng: np.random.Generator, anat: _Anatomy, min_spacing: float) -> list[_Lesion]:
    F = anat.frame
    s = math.sqrt(F.sx * F.sz)
    lesions = []
    has_primary = rng.random() < 0.9
    side = 1 if rng.random() < 0.5 else -1
    n_nodes = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.2, 0.15]))
    if not has_primary:
        n_nodes = max(1, n_nodes)
    levels = sorted(HN_NODE_LEVELS)
    for _ in range(n_nodes):
        lv = str(rng.choice(levels))
        sd = side if rng.random() < 0.8 else -side
        x, y, d = HN_NODE_LEVELS[lv]
        c = F.p(sd * x, y, d) + rng.normal(0, 4 * s, 3)
        d_lo = max(8.0, 1.5 * min_spacing)
        diam = float(math.exp(rng.uniform(math.log(d_lo), math.log(max(d_lo + 1, 30.0 * min(1.0, s))))))
        suv = float(np.clip(rng.lognormal(math.log(5.0), 0.45), 2.5, 14.0))
        lesions.append(
            _Lesion(
                _lesion_shape(rng, c, diam),
                f"node:level_{lv}",
                2,
                suv,
                diam,
                c,
                ct_delta=float(rng.uniform(5, 15)),
                bone_delta=0.0,
                necrosis=1.0,
            )
        )
    if has_primary:
        c = F.p(side * rng.uniform(0, 12), rng.uniform(25, 40), rng.uniform(215, 255))
        diam = float(rng.uniform(max(15.0, 1.5 * min_spacing), max(16.0, 45.0 * min(1.0, s))))
        suv = float(np.clip(rng.lognormal(math.log(9.0), 0.4), 4.0, 22.0))
        necrosis = float(rng.uniform(0.3, 0.6)) if diam > 30 and rng.random() < 0.3 else 1.0
        lesions.append(
            _Lesion(
                _lesion_shape(rng, c, diam),
                "primary:oropharynx",
                1,
                suv,
                diam,
                c,
                ct_delta=float(rng.uniform(8, 20)),
                bone_delta=0.0,
                necrosis=necrosis,
            )
        )
    return lesions


def _study_suvs(rng: np.random.Generator, prng: np.random.Generator) -> dict[str, float]:
    """SUV per tissue: patient-level (``prng``) and study-level (``rng``) physiology."""
    liver = prng.uniform(1.9, 2.5)
    gm = rng.uniform(6.0, 10.0)
    return {
        "air": 0.0,
        "fat": 0.35,
        "muscle": 0.75,
        "viscera": rng.uniform(1.0, 1.6),
        "lung": 0.45,
        "mediastinum": 0.6,
        "blood": rng.uniform(1.4, 2.0),
        "myocardium": 1.5 + 6.5 * rng.uniform(0, 1) ** 1.5,
        "liver": liver,
        "spleen": liver * prng.uniform(0.8, 0.92),
        "kidney": rng.uniform(3.0, 6.0),
        "urine_kidney": rng.uniform(4.0, 15.0),
        "bladder": float(math.exp(rng.uniform(math.log(5.0), math.log(30.0)))),
        "brain_gm": gm,
        "brain_wm": 0.45 * gm,
        "csf": 0.3,
        "cortical_bone": 0.35,
        "marrow": prng.uniform(1.0, 1.6),
        "airway": 0.05,
        "salivary": rng.uniform(1.5, 3.5),
        "tonsil": rng.uniform(2.0, 5.0),
        "thyroid": rng.uniform(1.0, 2.0),
        "table": 0.0,
        "eye": 0.3,
    }


def _rasterise(grid: _Grid, anat: _Anatomy) -> np.ndarray:
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    for shape, value in anat.shapes:
        _paint(tissue, grid, shape, value)
    return tissue


_LUT_HU = np.array([TISSUES[n][0] for n in TISSUE_NAMES], dtype=np.float32)
_LUT_TEX = np.array([TISSUES[n][1] for n in TISSUE_NAMES], dtype=np.float32)
_LUT_HET = np.array([TISSUES[n][2] for n in TISSUE_NAMES], dtype=np.float32)
_IS_LOW = np.array([n in _LOW_DENSITY for n in TISSUE_NAMES])
_IS_BONE = np.array([n in _BONE for n in TISSUE_NAMES])
_IS_BODY = np.array([n not in ("air", "table") for n in TISSUE_NAMES])


def _render_ct(
    rng: np.random.Generator,
    grid: _Grid,
    tissue: np.ndarray,
    lesions: list[_Lesion],
    noise_hu: float,
    blur_vox: float,
) -> np.ndarray:
    tex = _smooth_noise(rng, grid.shape, grid.spacing, 10.0)
    hu = _LUT_HU[tissue] + _LUT_TEX[tissue] * tex
    for les in lesions:
        r = _mask_on(grid, les.shape)
        if r is None:
            continue
        sl, m = r
        t = tissue[sl]
        m = m & _IS_BODY[t]
        sub = hu[sl]
        soft = np.where(_IS_BONE[t], sub + les.bone_delta, sub + les.ct_delta)
        sub[m] = np.where(_IS_LOW[t], 35.0 + 6.0 * tex[sl], soft)[m]
    if blur_vox > 0:
        hu = ndimage.gaussian_filter(hu, blur_vox)
    hu += noise_hu * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def _render_pet(
    rng: np.random.Generator,
    grid: _Grid,
    tissue: np.ndarray,
    lesions: list[_Lesion],
    suvs: dict[str, float],
    fwhm_mm: float,
    count_k: float,
) -> np.ndarray:
    lut = np.array([suvs[n] for n in TISSUE_NAMES], dtype=np.float32)
    tex = _smooth_noise(rng, grid.shape, grid.spacing, 15.0)
    het = _LUT_HET[tissue]
    act = lut[tissue] * np.exp(het * tex - 0.5 * het * het)
    for les in lesions:
        r = _mask_on(grid, les.shape)
        if r is None:
            continue
        sl, m = r
        m = m & _IS_BODY[tissue[sl]]
        host = float(np.median(act[sl][m])) if m.any() else 0.0
        val = max(les.suv, 1.25 * host) * np.exp(0.15 * tex[sl] - 0.011)
        if les.necrosis < 1.0:
            lo, _ = les.shape.bounds()
            x, y, z = grid.window(lo, les.shape.bounds()[1])[1]  # type: ignore[index]
            dist = np.sqrt((x - les.center[0]) ** 2 + (y - les.center[1]) ** 2 + (z - les.center[2]) ** 2)
            val = np.where(dist < 0.3 * les.diameter_mm, val * les.necrosis, val)
        act[sl][m] = np.broadcast_to(val, m.shape)[m]
    sigma = fwhm_mm / 2.3548 / grid.spacing
    act = ndimage.gaussian_filter(act, sigma, mode="constant")
    scale = count_k * 64.0 / float(np.prod(grid.spacing))  # variance per SUV for this voxel size
    noise = _correlated_noise(rng, grid.shape, 0.6)
    act += np.sqrt(np.maximum(act, 0.0) * scale + 1e-4) * noise
    return np.maximum(act, 0.0).astype(np.float32)


def _axis_aligned_affine(
    shape: Sequence[int], spacing: Sequence[float], center: Sequence[float]
) -> np.ndarray:
    """LPS-ordered voxels (as from DICOM): i -> patient's left (-x in RAS), j -> posterior, k -> superior."""
    a = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])
    a[:3, 3] = np.asarray(center, dtype=np.float64) - a[:3, :3] @ (
        (np.asarray(shape, dtype=np.float64) - 1) / 2
    )
    return a


def _check_shape_spacing(
    shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    if len(shape) != 3 or any(int(v) < 8 for v in shape):
        raise PhantomError(f"shape must be three sizes >= 8 voxels, got {tuple(shape)}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise PhantomError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), sp


def synth_case(
    kind: str = "wholebody",
    *,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    pet_spacing: Sequence[float] | None = None,
    patient_seed: int | None = None,
    lesion_free: bool | None = None,
    n_lesions: int | None = None,
) -> dict[str, Any]:
    """Synthesise one PET/CT study.

    ``kind``: ``wholebody`` (AutoPET-like: CT and PET on the same grid ``shape``/``spacing``, default
    4x4x5 mm) or ``headneck`` (HECKTOR-like: CT on ``shape``/``spacing``, default 2 mm; PET on a coarser,
    differently placed grid, ``pet_spacing`` default 2x the CT's). ``seed`` drives the study (lesions,
    physiological uptake, noise, positioning); ``patient_seed`` (default ``seed``) the anatomy, so studies of
    one patient share it. Whole body: ``lesion_free`` (default: a coin flip) and ``n_lesions`` (default 1-8).

    Returns ``ct`` (int16 HU), ``ct_affine``, ``pet`` (float32 SUV), ``pet_affine``, ``label`` (uint8 on the
    CT grid; whole body 0/1, head-and-neck 1 = primary, 2 = nodes), ``label_affine``, ``tissue`` (uint8 tissue
    index on the CT grid, names in ``meta["tissues"]``) and ``meta`` (lesions, SUVs, scales, PET settings).
    """
    if kind not in KINDS:
        raise PhantomError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    shp, sp = _check_shape_spacing(shape, DEFAULT_SPACING[kind] if spacing is None else spacing)
    rng = np.random.default_rng([int(seed), 1])
    prng = np.random.default_rng([int(seed if patient_seed is None else patient_seed), 2])
    fov = sp * np.asarray(shp)
    shift = rng.normal(0.0, 4.0, 3)  # study positioning
    if kind == "wholebody":
        sz = fov[2] * 0.96 / 1000.0
        sx = float(np.clip(min(fov[0] * 0.85 / 410.0, fov[1] * 0.8 / 290.0), 0.75 * sz, 1.25 * sz))
        center = np.array([0.0, -0.06 * fov[1], 0.0]) + shift
        z_vertex = fov[2] / 2 - 0.02 * fov[2]
    else:
        sz = fov[2] / 300.0
        sx = sz = float(min(sz, fov[0] * 0.9 / 240.0, 1.2))
        center = np.array([0.0, 0.0, 0.0]) + shift
        z_vertex = fov[2] / 2 + 40.0 * sz
    frame = _Frame(sx=float(sx), sz=float(sz), z_vertex=float(z_vertex))
    ct_affine = _axis_aligned_affine(shp, sp, center)
    ct_grid = _Grid(shp, ct_affine)
    lo = ct_grid.origin + np.minimum(ct_grid.step * (np.asarray(shp) - 1), 0)
    hi = ct_grid.origin + np.maximum(ct_grid.step * (np.asarray(shp) - 1), 0)
    anat = _build_anatomy(prng, frame, bladder_fill=float(rng.uniform(0.6, 1.3)), fov=(lo, hi))
    tissue = _rasterise(ct_grid, anat)
    suvs = _study_suvs(rng, prng)
    fwhm = float(rng.uniform(6.0, 7.0))
    count_k = float(rng.uniform(0.02, 0.05))
    noise_hu = float(rng.uniform(10.0, 20.0))

    if kind == "wholebody":
        if lesion_free is None:
            lesion_free = bool(rng.random() < 0.5)
        n = (
            0
            if lesion_free
            else (int(n_lesions) if n_lesions is not None else int(rng.choice([1, 2, 2, 3, 3, 4, 5, 6, 8])))
        )
        for _ in range(10):  # a planned lesion study keeps at least one lesion inside the body
            lesions = _wholebody_lesions(rng, anat, n, float(sp.min()))
            label, lesions = _label_map(ct_grid, tissue, lesions)
            if lesions or n == 0:
                break
        pet_grid, pet_tissue = ct_grid, tissue
    else:
        label, lesions = _label_map(ct_grid, tissue, _headneck_lesions(rng, anat, float(sp.min())))
        psp = 2.0 * sp if pet_spacing is None else np.asarray(pet_spacing, dtype=np.float64)
        _check_shape_spacing((8, 8, 8), psp)
        pshape = tuple(math.ceil(v) + 1 for v in fov * np.array([1.2, 1.2, 1.05]) / psp)
        pcenter = center + rng.uniform(-0.5, 0.5, 3) * psp + np.array([0.0, 0.0, 0.25 * psp[2]])
        pet_grid = _Grid(pshape, _axis_aligned_affine(pshape, psp, pcenter))
        pet_tissue = _rasterise(pet_grid, anat)

    ct = _render_ct(rng, ct_grid, tissue, lesions, noise_hu, 0.5 if kind == "wholebody" else 0.3)
    pet = _render_pet(rng, pet_grid, pet_tissue, lesions, suvs, fwhm, count_k)
    lesion_meta = []
    for les in lesions:
        md = les.meta()
        md["voxels"] = int(_count(ct_grid, les, label))
        lesion_meta.append(md)
    meta = {
        "kind": kind,
        "seed": int(seed),
        "patient_seed": int(seed if patient_seed is None else patient_seed),
        "phantom_version": PHANTOM_VERSION,
        "ct_spacing": [float(v) for v in sp],
        "pet_spacing": [float(v) for v in pet_grid.spacing],
        "scale_xy": round(frame.sx, 4),
        "scale_z": round(frame.sz, 4),
        "pet_fwhm_mm": round(fwhm, 3),
        "pet_count_factor": round(count_k, 4),
        "ct_noise_hu": round(noise_hu, 2),
        "suv": {k: round(float(v), 3) for k, v in suvs.items()},
        "lesion_free": len(lesions) == 0,
        "lesions": lesion_meta,
        "anatomy": {k: round(float(v), 3) for k, v in anat.params.items()},
        "tissues": list(TISSUE_NAMES),
    }
    return {
        "ct": ct,
        "ct_affine": ct_affine,
        "pet": pet,
        "pet_affine": pet_grid.affine.copy(),
        "label": label,
        "label_affine": ct_affine.copy(),
        "tissue": tissue,
        "meta": meta,
    }


def _label_map(grid: _Grid, tissue: np.ndarray, lesions: list[_Lesion]) -> tuple[np.ndarray, list[_Lesion]]:
    """Lesion labels on ``grid`` (inside the body only) and the lesions that have voxels there."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    kept = []
    for les in lesions:
        r = _mask_on(grid, les.shape)
        if r is None:
            continue
        sl, m = r
        m = m & _IS_BODY[tissue[sl]]
        if m.any():
            label[sl][m] = les.label
            kept.append(les)
    return label, kept


def _count(grid: _Grid, les: _Lesion, label: np.ndarray) -> int:
    r = _mask_on(grid, les.shape)
    if r is None:
        return 0
    sl, m = r
    return int((m & (label[sl] == les.label)).sum())


# ------------------------------------------------------------------------------------------- cohorts
def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[int(v)] for v in rng.integers(0, 16, n))


def _study_name(rng: np.random.Generator, year: int) -> str:
    return (
        f"{int(rng.integers(1, 29)):02d}-{int(rng.integers(1, 13)):02d}-{year}-NA-PET-CT Ganzkoerper  "
        f"primaer mit KM-{int(rng.integers(10000, 100000))}"
    )


def cohort_plan(n_cases: int, layout: str, seed: int) -> list[dict[str, Any]]:
    """Ids, patient grouping, seeds and lesion-free flags of a cohort, without synthesising anything."""
    if layout not in LAYOUT_KIND:
        raise PhantomError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_KIND)}")
    if n_cases < 1:
        raise PhantomError(f"the number of cases must be >= 1, got {n_cases}")
    rng = np.random.default_rng([int(seed), 7])
    kind = LAYOUT_KIND[layout]
    plan: list[dict[str, Any]] = []
    if kind == "headneck":
        counts: dict[str, int] = {}
        for i in range(n_cases):
            centre = HECKTOR_CENTRES[i % len(HECKTOR_CENTRES)]
            counts[centre] = counts.get(centre, 0) + 1
            cid = f"{centre}-{counts[centre]:03d}"
            plan.append({"case_id": cid, "patient_id": cid, "patient_index": i, "study_index": 0})
    else:
        n_patient = 0
        while len(plan) < n_cases:
            left = n_cases - len(plan)
            k = 2 if left >= 2 and ((n_patient == 0 and n_cases >= 3) or rng.random() < 0.25) else 1
            pid_hex = _hex(rng, 10)
            year = int(rng.integers(2002, 2011))
            for j in range(k):
                study = _study_name(rng, year + j)
                if layout == "autopet":
                    pid, cid = f"PETCT_{pid_hex}", f"PETCT_{pid_hex}_{study}"
                elif layout == "autopet-nnunet":
                    cid = f"fdg_{pid_hex}_{study}"
                    pid = nnunet_patient_id(cid)
                else:
                    pid, cid = f"patient_{n_patient:04d}", f"case_{len(plan):04d}"
                plan.append(
                    {
                        "case_id": cid,
                        "patient_id": pid,
                        "patient_index": n_patient,
                        "study_index": j,
                        "study": study,
                        "patient_folder": f"PETCT_{pid_hex}",
                    }
                )
            n_patient += 1
        free = set(rng.permutation(n_cases)[: n_cases // 2].tolist())
        for i, p in enumerate(plan):
            p["lesion_free"] = i in free
    for p in plan:
        ss = np.random.SeedSequence([int(seed), 11, int(p["patient_index"]), int(p["study_index"])])
        ps = np.random.SeedSequence([int(seed), 13, int(p["patient_index"])])
        p["seed"] = int(ss.generate_state(1)[0])
        p["patient_seed"] = int(ps.generate_state(1)[0])
    return plan


def _paths(out: Path, layout: str, p: dict[str, Any]) -> tuple[Path, Path, Path]:
    cid = p["case_id"]
    if layout == "autopet":
        d = out / p["patient_folder"] / p["study"]
        return d / "CTres.nii.gz", d / "SUV.nii.gz", d / "SEG.nii.gz"
    if layout == "autopet-nnunet":
        return (
            out / "imagesTr" / f"{cid}_0000.nii.gz",
            out / "imagesTr" / f"{cid}_0001.nii.gz",
            out / "labelsTr" / f"{cid}.nii.gz",
        )
    if layout == "hecktor":
        return (
            out / "imagesTr" / f"{cid}__CT.nii.gz",
            out / "imagesTr" / f"{cid}__PT.nii.gz",
            out / "labelsTr" / f"{cid}.nii.gz",
        )
    return (
        out / "images" / f"{cid}_ct.nii.gz",
        out / "images" / f"{cid}_pet.nii.gz",
        out / "labels" / f"{cid}.nii.gz",
    )


def check_output_dir(out: str | Path, overwrite: bool = False) -> None:
    """Raise :class:`PhantomError` unless ``out`` is absent, an empty folder, or ``overwrite`` is set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PhantomError(f"{out}: folder is not empty (choose another output folder or allow overwriting)")


def write_cohort(
    out: str | Path,
    n_cases: int,
    layout: str,
    seed: int,
    *,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Case]:
    """Write ``n_cases`` phantom studies under ``out`` in ``layout`` and return them as cases (sorted by id).

    ``autopet``/``autopet-nnunet``/``csv``: whole-body studies, about half lesion-free, some patients with two
    studies; ``hecktor``: head-and-neck studies (CT and PET on different grids). Also writes ``phantom.json``
    (per-case ground truth: lesions, SUVs) and, for nnU-Net, ``dataset.json``; for ``csv``, ``manifest.csv``.
    The same arguments always give byte-identical files. ``out`` must be empty or absent unless ``overwrite``.
    ``progress(done, total, case_id)`` is called after each case.
    """
    out = Path(out)
    plan = cohort_plan(int(n_cases), layout, seed)
    kind = LAYOUT_KIND[layout]
    shp = tuple(DEFAULT_SHAPE if shape is None else shape)
    sp = tuple(DEFAULT_SPACING[kind] if spacing is None else spacing)
    _check_shape_spacing(shp, sp)
    check_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    cases, records = [], []
    for i, p in enumerate(plan):
        res = synth_case(
            kind,
            seed=p["seed"],
            patient_seed=p["patient_seed"],
            shape=shp,
            spacing=sp,
            lesion_free=p.get("lesion_free"),
        )
        ct_p, pet_p, lab_p = _paths(out, layout, p)
        write_volume(ct_p, res["ct"], res["ct_affine"])
        write_volume(pet_p, res["pet"], res["pet_affine"])
        write_volume(lab_p, res["label"], res["label_affine"])
        cases.append(Case(p["case_id"], p["patient_id"], ct_p, pet_p, lab_p))
        records.append({"case_id": p["case_id"], "patient_id": p["patient_id"], **res["meta"]})
        if progress is not None:
            progress(i + 1, len(plan), p["case_id"])
    if layout == "autopet-nnunet":
        ds = {
            "channel_names": {"0": "CT", "1": "PET"},
            "labels": {"background": 0, "tumor": 1},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": "h2aseg phantom",
        }
        atomic_write_text(out / "dataset.json", json.dumps(ds, indent=1))
    if layout == "csv":
        rows = [["case_id", "patient_id", "ct", "pet", "label"]]
        rows += [
            [c.case_id, c.patient_id, *(str(q.relative_to(out)) for q in (c.ct, c.pet, c.label))]  # type: ignore[union-attr]
            for c in cases
        ]
        atomic_write_text(out / "manifest.csv", "".join(",".join(r) + "\n" for r in rows))
    doc = {
        "generator": "h2aseg.data.phantom",
        "phantom_version": PHANTOM_VERSION,
        "layout": layout,
        "seed": int(seed),
        "shape": list(shp),
        "spacing": [float(v) for v in sp],
        "cases": records,
    }
    atomic_write_text(out / "phantom.json", json.dumps(doc, indent=1, sort_keys=True))
    return sorted(cases, key=lambda c: c.case_id)

