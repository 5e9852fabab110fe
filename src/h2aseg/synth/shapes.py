"""Analytic shapes in world coordinates (RAS+ mm) and their rasterisation on axis-aligned voxel grids.

Shapes are point-sampled: a voxel belongs to a shape when its centre is inside. One patient's shapes can be
rasterised on any grid (the CT grid, a different PET grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from h2aseg.synth.errors import PhantomError


class Grid:
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


class Shape:
    """A solid in world coordinates: a bounding box and a vectorised point-in-shape test."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


class Ellipsoid(Shape):
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


class ZSection(Shape):
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


class Ring(Shape):
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


class Box(Shape):
    """Axis-aligned box [lo, hi]."""

    def __init__(self, lo: Sequence[float], hi: Sequence[float]):
        self._lo, self._hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lo, self._hi

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        lo, hi = self._lo, self._hi
        return (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])


class ShapeUnion(Shape):
    """Union of shapes."""

    def __init__(self, parts: list[Shape]):
        self.parts = parts

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = [p.bounds() for p in self.parts]
        return np.min([lo for lo, _ in b], axis=0), np.max([hi for _, hi in b], axis=0)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        m = self.parts[0].inside(x, y, z)
        for p in self.parts[1:]:
            m = m | p.inside(x, y, z)
        return m


class ShapeIntersection(Shape):
    """Intersection of shapes (the points inside all of them)."""

    def __init__(self, parts: list[Shape]):
        self.parts = parts

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = [p.bounds() for p in self.parts]
        lo = np.max([lo for lo, _ in b], axis=0)
        return lo, np.maximum(np.min([hi for _, hi in b], axis=0), lo)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        m = self.parts[0].inside(x, y, z)
        for p in self.parts[1:]:
            m = m & p.inside(x, y, z)
        return m


class Mapped(Shape):
    """``shape`` carried by the affine map ``p -> matrix @ p + offset`` (world mm to world mm).

    A point is inside when its preimage is inside ``shape``. Terms with a zero coefficient are skipped, so a
    map that keeps z separate (a rotation about the z axis, a scaling) keeps the coordinates broadcastable
    per axis, as the shapes expect.
    """

    def __init__(self, shape: Shape, matrix: np.ndarray, offset: Sequence[float]):
        self.shape = shape
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.offset = np.asarray(offset, dtype=np.float64)
        self.inverse = np.linalg.inv(self.matrix)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shape.bounds()
        corners = np.array([[(lo, hi)[(i >> a) & 1][a] for a in range(3)] for i in range(8)])
        moved = corners @ self.matrix.T + self.offset
        return moved.min(axis=0), moved.max(axis=0)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = (x - np.float32(self.offset[0]), y - np.float32(self.offset[1]), z - np.float32(self.offset[2]))
        pre = []
        for row in self.inverse:
            terms = [np.float32(c) * v for c, v in zip(row, d, strict=True) if c != 0.0]
            pre.append(sum(terms[1:], terms[0]))  # an invertible matrix has no zero row
        return self.shape.inside(*pre)


def mask_on(grid: Grid, shape: Shape) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Index slices of ``shape``'s bounding box on ``grid`` and its mask there (None: off the grid)."""
    lo, hi = shape.bounds()
    win = grid.window(lo, hi)
    if win is None:
        return None
    sl, (x, y, z) = win
    m = np.broadcast_to(shape.inside(x, y, z), tuple(s.stop - s.start for s in sl))
    return sl, m


def paint(tissue: np.ndarray, grid: Grid, shape: Shape, value: int) -> None:
    """Set ``tissue`` (on ``grid``) to ``value`` inside ``shape``."""
    r = mask_on(grid, shape)
    if r is not None:
        sl, m = r
        tissue[sl][m] = value
