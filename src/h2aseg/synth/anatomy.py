"""The phantom's anatomy: a canonical adult built from analytic shapes, scaled to the grid's field of view.

A canonical adult runs from the vertex (d = 0 mm) to mid-thigh (d = 1000 mm); x > 0 is the patient's right,
y > 0 anterior. :class:`Frame` maps these canonical millimetres to world coordinates (RAS+ mm).
:func:`build_anatomy` draws one patient (body size, fat, organ sizes) and returns its shapes in painter's
order; :func:`rasterise` paints them onto a grid as a tissue-index map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from h2aseg.synth.shapes import (
    Box,
    Ellipsoid,
    Grid,
    Ring,
    Shape,
    ShapeIntersection,
    ShapeUnion,
    ZSection,
    paint,
    rot_x,
    rot_z,
)
from h2aseg.synth.tissues import T
from h2aseg.synth.variability import Draws, OrganDraw


@dataclass
class Frame:
    """Canonical body coordinates (x, y, d) -> world (RAS mm): scales sx (axial plane) and sz, vertex z."""

    sx: float
    sz: float
    z_vertex: float

    def p(self, x: float, y: float, d: float) -> np.ndarray:
        return np.array([self.sx * x, self.sx * y, self.z_vertex - self.sz * d])

    def r(self, rx: float, ry: float, rz: float) -> np.ndarray:
        return np.array([self.sx * rx, self.sx * ry, self.sz * rz])

    def knots(self, rows: Sequence[Sequence[float]]) -> np.ndarray:
        """Rows (d, cx, cy, rx, ry) in canonical mm -> ZSection knots in world mm."""
        return np.array(
            [
                [self.z_vertex - self.sz * d, self.sx * cx, self.sx * cy, self.sx * rx, self.sx * ry]
                for d, cx, cy, rx, ry in rows
            ]
        )


@dataclass
class Anatomy:
    """One patient: shapes in painter's order (tissue index each), lesion hosts, vertebrae, frame."""

    shapes: list[tuple[Shape, int]]
    organs: dict[str, Ellipsoid]  # lesion hosts
    vertebrae: list[Ellipsoid]
    frame: Frame
    params: dict[str, float] = field(default_factory=dict)


TRUNK = np.array(
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

Rows = list[tuple[float, ...]]
Vec = tuple[float, float, float]


class _Builder:
    """Draws one patient's body proportions and collects shapes; each ``add_*`` step adds a body part.

    The steps must run in the order of :func:`build_anatomy`: later shapes overwrite earlier ones, and the
    random draws (body size, organ sizes) happen in that order. ``draws`` (variability) replace some of
    these values; today's draws still happen, so the stream stays the same whatever is replaced.
    """

    def __init__(self, rng: np.random.Generator, frame: Frame, draws: Draws | None = None):
        self.rng = rng
        self.F = frame
        self.draws = draws
        wf, df = rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.08)
        tf = rng.uniform(8.0, 30.0)
        self.wf, self.df = self.drawn("width", wf), self.drawn("depth", df)
        self.tf = self.drawn("fat_mm", tf)  # subcutaneous fat thickness (trunk), canonical mm
        self.d_k = TRUNK[:, 0]
        self.rx_k, self.ry_k, self.cy_k = TRUNK[:, 1] * self.wf, TRUNK[:, 2] * self.df, TRUNK[:, 3]
        self.shapes: list[tuple[Shape, int]] = []
        self.organs: dict[str, Ellipsoid] = {}
        self.vertebrae: list[Ellipsoid] = []

    # ------------------------------------------------------------------------ body profile (canonical mm)
    def org(self) -> float:
        """A random organ size factor."""
        return self.rng.uniform(0.9, 1.1)

    def drawn(self, name: str, today: float) -> float:
        """Body factor ``name`` as drawn by the variability, else ``today``'s value."""
        return today if self.draws is None else self.draws.body.get(name, today)

    def organ(self, name: str) -> OrganDraw | None:
        return None if self.draws is None else self.draws.organs.get(name)

    def size(self, name: str) -> float:
        """Organ ``name``'s size factor: today's draw (always made) unless the variability drew one."""
        today = self.org()
        d = self.organ(name)
        return today if d is None or d.scale is None else d.scale

    def place(self, name: str, c: Vec, r: Vec, rotz: float = 0.0) -> tuple[Vec, Vec, float]:
        """Centre, radii and z rotation of organ ``name``, moved and reshaped by its variability draw."""
        d = self.organ(name)
        return (c, r, rotz) if d is None else d.place(c, r, rotz)

    def body(self, d: float) -> tuple[float, float, float]:
        """Trunk half-width, half-depth and centre y at level ``d``."""
        return (
            float(np.interp(d, self.d_k, self.rx_k)),
            float(np.interp(d, self.d_k, self.ry_k)),
            float(np.interp(d, self.d_k, self.cy_k)),
        )

    def fat(self, d: float) -> float:
        return float(np.interp(d, [200, 300, 345], [0.3 * self.tf, 0.3 * self.tf, self.tf]))

    def back(self, d: float) -> float:
        _, ry, cy = self.body(d)
        return cy - ry

    def front(self, d: float) -> float:
        _, ry, cy = self.body(d)
        return cy + ry

    def spine_y(self, d: float) -> float:
        return self.back(d) + self.fat(d) + float(np.interp(d, [200, 300, 345], [34, 40, 62]))

    # ------------------------------------------------------------------------------ shape helpers
    def add(self, shape: Shape, tissue: str, organ: str = "") -> None:
        """Add ``shape`` of ``tissue``; a part of ``organ`` that the variability moved or resized is clipped
        to the organ's room (:meth:`room`), so it cannot reach the body wall or leave the body."""
        if organ and self.organ(organ) is not None:
            shape = ShapeIntersection([shape, self.room(organ)])
        self.shapes.append((shape, T[tissue]))

    def room(self, organ: str) -> Shape:
        """Where ``organ`` may lie: kidneys inside the trunk's muscle wall, the others in its cavities."""
        return self.inner_trunk if organ.startswith("kidney") else self.cavities

    def ell(
        self, c: Sequence[float], r: Sequence[float], rotz: float = 0.0, rot: np.ndarray | None = None
    ) -> Ellipsoid:
        m = rot if rot is not None else (rot_z(rotz) if rotz else None)
        return Ellipsoid(self.F.p(*c), self.F.r(*r), m)

    def shell(
        self,
        c: Sequence[float],
        r: Sequence[float],
        t: float,
        outer: str,
        inner: str,
        rotz: float = 0.0,
        rot: np.ndarray | None = None,
        organ: str = "",
    ) -> Ellipsoid:
        """An ellipsoid of ``outer`` tissue filled with ``inner`` (wall ``t`` mm); returns the outer one."""
        e = self.ell(c, r, rotz, rot)
        self.add(e, outer, organ)
        self.add(self.ell(c, [max(v - t, 0.5) for v in r], rotz, rot), inner, organ)
        return e

    def section(self, rows: Sequence[Sequence[float]]) -> ZSection:
        return ZSection(self.F.knots(rows))

    def cavity(self, ds: Sequence[float], wall_x: float, wall_y: float, shift: float) -> Rows:
        rows: Rows = []
        for d in ds:
            rx, ry, cy = self.body(d)
            rows.append((d, 0.0, cy + shift, rx - self.fat(d) - wall_x, ry - self.fat(d) - wall_y))
        return rows

    # ------------------------------------------------------------------------------------- steps
    def add_table(self, fov: tuple[np.ndarray, np.ndarray]) -> None:
        """The scanner table under the patient (CT only)."""
        F = self.F
        back_min = min(self.back(d) for d in np.linspace(300, 900, 13))
        (lo, hi) = fov
        ty = F.sx * (back_min - 6)
        self.add(Box([lo[0] * 0.85, ty - 12 * F.sx, lo[2] - 10], [hi[0] * 0.85, ty, hi[2] + 10]), "table")

    def add_outline(self) -> None:
        """Body outline: fat, then muscle inset by the fat thickness (head, trunk, thighs)."""
        wf, df, tf = self.wf, self.df, self.tf
        self.head = (0.0, 8.0, 115.0)
        self.head_r = np.array([78.0, 98.0, 118.0]) * self.drawn("head", self.rng.uniform(0.95, 1.05))
        trunk_rows = [
            (d, 0.0, cy, rx, ry)
            for d, rx, ry, cy in zip(self.d_k, self.rx_k, self.ry_k, self.cy_k, strict=True)
        ]
        thigh_rows = {
            s: [(860, s * 92 * wf, 0, 80 * wf, 88 * df), (1010, s * 96 * wf, 0, 64 * wf, 70 * df)]
            for s in (1, -1)
        }
        self.add(self.ell(self.head, self.head_r), "fat")
        self.add(self.section(trunk_rows), "fat")
        for s in (1, -1):
            self.add(self.section(thigh_rows[s]), "fat")
        self.add(self.ell(self.head, self.head_r - 4), "muscle")
        inset = [(d, cx, cy, rx - self.fat(d), ry - self.fat(d)) for d, cx, cy, rx, ry in trunk_rows]
        self.inner_trunk = self.section(inset)
        self.add(self.inner_trunk, "muscle")
        for s in (1, -1):
            self.add(
                self.section(
                    [(d, cx, cy, rx - 0.8 * tf, ry - 0.8 * tf) for d, cx, cy, rx, ry in thigh_rows[s]]
                ),
                "muscle",
            )

    def add_cavities(self) -> None:
        """Abdominal (viscera) and thoracic (mediastinum) cavities; records their size at two levels."""
        abd_rows = self.cavity([560, 640, 720, 800, 850], 16, 22, 8)
        abd_rows.append((868, 0.0, self.body(868)[2] + 12, abd_rows[-1][3] * 0.7, abd_rows[-1][4] * 0.6))
        abdomen = self.section(abd_rows)
        self.add(abdomen, "viscera")
        tho_rows = self.cavity([330, 360, 450, 540, 565], 18, 24, 6)
        tho_rows.insert(0, (318, 0.0, self.body(318)[2] + 6, tho_rows[0][3] * 0.6, tho_rows[0][4] * 0.75))
        thorax = self.section(tho_rows)
        self.add(thorax, "mediastinum")
        self.cavities = ShapeUnion([thorax, abdomen])
        self.abd_rows = abd_rows
        self.cav_rx, self.cav_ry, self.cav_cy = tho_rows[3][3], tho_rows[3][4], tho_rows[3][2]  # d = 450
        self.abd_rx, self.abd_ry, self.abd_cy = abd_rows[1][3], abd_rows[1][4], abd_rows[1][2]  # d = 640

    def add_lungs(self) -> None:
        cav_rx, cav_ry, cav_cy = self.cav_rx, self.cav_ry, self.cav_cy
        for side, name in ((1, "lung_r"), (-1, "lung_l")):
            size = self.size(name)
            c, r, rotz = self.place(
                name,
                (side * 0.52 * cav_rx, cav_cy - 0.05 * cav_ry, 448 + 4 * side),
                (0.45 * cav_rx * size, 0.9 * cav_ry, 122 * size),
            )
            e = self.ell(c, r, rotz)
            self.add(e, "lung", name)
            self.organs[name] = e

    def add_back_muscles(self) -> None:
        """Muscles along the spine (paraspinal, psoas)."""
        for s in (1, -1):
            self.add(
                self.section([(d, s * 30, self.back(d) + self.fat(d) + 26, 24, 20) for d in (300, 560, 840)]),
                "muscle",
            )
            rows = [
                (d, s * x, self.spine_y(d) - 2, r, r)
                for d, x, r in ((640, 35, 10), (740, 45, 20), (840, 55, 26))
            ]
            self.add(self.section(rows), "muscle")

    def add_heart_and_vessels(self) -> None:
        """Heart (myocardium around the blood pool), aorta (ascending, arch, descending) and IVC."""
        F, cav_rx, cav_ry, cav_cy = self.F, self.cav_rx, self.cav_ry, self.cav_cy
        hs = self.size("heart")
        heart_c = (-0.15 * cav_rx, cav_cy + 0.28 * cav_ry, 505)
        heart_r = (0.42 * cav_rx * hs, 0.5 * cav_ry * hs, 58 * hs)
        heart_c, heart_r, rotz = self.place("heart", heart_c, heart_r, -25)
        self.shell(heart_c, heart_r, 11, "myocardium", "blood", rotz=rotz, organ="heart")
        y_desc = self.spine_y(560) + 33
        y_asc = cav_cy + 0.25 * cav_ry
        self.add(
            self.section([(d, -0.12 * cav_rx, self.spine_y(d) + 33, 12, 12) for d in (425, 560, 700, 800)]),
            "blood",
        )
        self.add(
            self.section([(418, 0.02 * cav_rx, y_asc, 14, 14), (470, 0.02 * cav_rx, y_asc, 14, 14)]), "blood"
        )
        a0 = np.array([0.02 * cav_rx, y_asc]) * F.sx
        a1 = np.array([-0.12 * cav_rx, y_desc]) * F.sx
        mid = (a0 + a1) / 2
        ang = math.degrees(math.atan2(a1[1] - a0[1], a1[0] - a0[0]))
        arch = Ellipsoid(
            [mid[0], mid[1], F.z_vertex - F.sz * 420],
            [np.linalg.norm(a1 - a0) / 2 + 12 * F.sx, 12 * F.sx, 12 * F.sz],
            rot_z(ang),
        )
        self.add(arch, "blood")
        ivc = [(d, 0.14 * self.abd_rx, self.spine_y(d) + 33, 11, 11) for d in (560, 700, 800)]
        self.add(self.section(ivc), "blood")

    def add_abdomen(self, bladder_fill: float) -> None:
        """Liver (two lobes), spleen, kidneys with renal pelvis, bladder."""
        abd_rx, abd_ry, abd_cy = self.abd_rx, self.abd_ry, self.abd_cy
        ls = self.size("liver")
        liver = self.ell(
            *self.place(
                "liver",
                (0.42 * abd_rx, abd_cy + 0.08 * abd_ry, 612),
                (0.56 * abd_rx * ls, 0.8 * abd_ry * ls, 80 * ls),
                -15,
            )
        )
        self.add(liver, "liver", "liver")
        self.add(
            self.ell(
                *self.place(
                    "liver",
                    (-0.05 * abd_rx, abd_cy + 0.45 * abd_ry, 592),
                    (0.4 * abd_rx * ls, 0.35 * abd_ry, 42 * ls),
                )
            ),
            "liver",
            "liver",
        )
        self.organs["liver"] = liver
        ss = self.size("spleen")
        spleen = self.ell(
            *self.place(
                "spleen",
                (-0.7 * abd_rx, abd_cy - 0.35 * abd_ry, 598),
                (0.22 * abd_rx * ss, 0.3 * abd_ry * ss, 50 * ss),
                30,
            )
        )
        self.add(spleen, "spleen", "spleen")
        for s in (1, -1):
            name = "kidney_r" if s > 0 else "kidney_l"
            ks = self.size(name)
            kc = (s * 0.48 * abd_rx, self.spine_y(665) + 8, 668 if s > 0 else 655)
            kr = (0.19 * abd_rx * ks, 0.25 * abd_ry * ks, 52 * ks)
            kc, kr, rotz = self.place(name, kc, kr, s * 20)
            self.add(self.ell(kc, kr, rotz=rotz), "kidney", name)
            self.add(
                self.ell(
                    (kc[0] - s * 0.3 * kr[0], kc[1] + 0.2 * kr[1], kc[2]),
                    (0.35 * kr[0], 0.35 * kr[1], 0.4 * kr[2]),
                ),
                "urine_kidney",
                name,
            )
        bladder = self.organ("bladder")
        f = bladder_fill ** (1 / 3) if bladder is None or bladder.scale is None else bladder.scale
        row = self.abd_rows[-2]
        self.add(
            self.ell(
                *self.place(
                    "bladder",
                    (0, row[2] + 0.25 * row[4], 842),
                    (0.36 * abd_rx * f, 0.4 * abd_ry * f, 32 * f),
                )
            ),
            "bladder",
            "bladder",
        )

    def add_neck(self) -> None:
        """Airway, thyroid, salivary glands, tonsils and the mandible."""
        F = self.F
        ya = [(d, self.spine_y(d) + 38) for d in (180, 235, 300, 445)]
        rows = [(d, 0, y, rx, ry) for (d, y), rx, ry in zip(ya, (16, 12, 9, 9), (8, 9, 9, 8), strict=True)]
        self.add(self.section(rows), "airway")
        for s in (1, -1):
            self.add(self.ell((s * 16, self.spine_y(310) + 48, 310), (8, 11, 20)), "thyroid")
            self.add(self.ell((s * 0.7 * self.head_r[0], 0.0, 190), (12, 18, 22)), "salivary")
            self.add(self.ell((s * 36, 30, 228), (11, 11, 10)), "salivary")
            self.add(self.ell((s * 13, self.spine_y(205) + 44, 205), (7, 7, 10)), "tonsil")
        self.add(
            Ring(F.p(0, 12, 220), 48 * F.sx, 62 * F.sx, 8 * F.sx, 11 * F.sz, exclude=[(-90, 95)]),
            "cortical_bone",
        )

    def add_skull_and_brain(self) -> None:
        sk_c, sk_r = (0.0, 5.0, 92.0), self.head_r * np.array([72 / 78, 90 / 98, 84 / 118])
        self.add(self.ell(sk_c, sk_r), "cortical_bone")
        self.add(self.ell(sk_c, sk_r - 7), "csf")
        self.add(self.ell(sk_c, sk_r - 9), "brain_gm")
        self.add(self.ell((0, 3, 95), (sk_r - 9) * 0.72), "brain_wm")
        for s in (1, -1):
            self.add(self.ell((s * 8, 5, 86), (5, 18, 12)), "csf")
            self.add(self.ell((s * 32, 72, 118), (12, 12, 12)), "eye")

    def add_spine(self) -> None:
        """Vertebral bodies (cortical shell + marrow), spinous and transverse processes, spinal canal."""
        d = 228.0
        while d < 805:
            h = float(np.interp(d, [228, 330, 560, 800], [13, 17, 23, 27]))
            disc = float(np.interp(d, [228, 800], [4, 9]))
            rx = float(np.interp(d, [228, 330, 800], [14, 16, 25]))
            ry = float(np.interp(d, [228, 330, 800], [12, 13, 19]))
            yc = self.spine_y(d + h / 2)
            self.add(self.section([(d, 0, yc, rx, ry), (d + h, 0, yc, rx, ry)]), "cortical_bone")
            self.add(
                self.section(
                    [(d + 1.5, 0, yc, rx - 2.5, ry - 2.5), (d + h - 1.5, 0, yc, rx - 2.5, ry - 2.5)]
                ),
                "marrow",
            )
            self.add(self.ell((0, yc - ry - 24, d + h / 2), (5, 13, h * 0.45)), "cortical_bone")
            for s in (1, -1):
                self.add(self.ell((s * 10, yc - ry - 10, d + h / 2), (6, 7, h * 0.4)), "cortical_bone")
            self.vertebrae.append(self.ell((0, yc, d + h / 2), (rx, ry, h / 2)))
            d += h + disc
        canal = [
            (dd, 0, self.spine_y(dd) - float(np.interp(dd, [228, 800], [12, 19])) - 10, 7, 7)
            for dd in (228, 330, 560, 805)
        ]
        self.add(self.section(canal), "csf")

    def add_chest_bones(self) -> None:
        """Ribs, sternum, clavicles, scapulae."""
        F, fat = self.F, self.fat
        for dr in np.arange(338, 566, 23):
            rx, ry, cy = self.body(dr)
            rib = Ring(
                F.p(0, cy, dr),
                (rx - fat(dr) - 5) * F.sx,
                (ry - fat(dr) - 5) * F.sx,
                9 * F.sx,
                4.5 * F.sz,
                exclude=[(90, 40), (-90, 14)],
            )
            self.add(rib, "cortical_bone")
        self.add(self.section([(dd, 0, self.front(dd) - fat(dd) - 9, 15, 6) for dd in (338, 500)]), "marrow")
        for s in (1, -1):
            self.add(
                self.ell((s * 72, self.front(305) - fat(305) - 16, 308), (70, 8, 8), rotz=-s * 20),
                "cortical_bone",
            )
            self.add(
                self.ell(
                    (s * 0.62 * self.body(390)[0], self.back(390) + fat(390) + 18, 392),
                    (58, 7, 72),
                    rotz=s * 32,
                ),
                "cortical_bone",
            )

    def add_pelvis_and_femora(self) -> None:
        """Iliac wings, pubis, ischium, femoral heads and shafts, sacrum; records bone lesion hosts."""
        fat, body = self.fat, self.body
        for s in (1, -1):
            iliac_c = (s * 0.62 * body(775)[0], self.back(775) + fat(775) + 48, 775)
            self.shell(iliac_c, (20, 62, 55), 5, "cortical_bone", "marrow", rotz=-s * 40)
            self.shell(
                (s * 30, self.front(885) - fat(885) - 20, 885),
                (28, 10, 14),
                3,
                "cortical_bone",
                "marrow",
                rotz=s * 20,
            )
            self.shell(
                (s * 60, self.back(895) + fat(895) + 58, 895), (15, 22, 22), 3, "cortical_bone", "marrow"
            )
            fh = self.shell((s * 0.52 * body(872)[0], 0.0, 872), (24, 24, 24), 3, "cortical_bone", "marrow")
            self.organs[f"femoral_head_{'r' if s > 0 else 'l'}"] = fh
            fx = s * 95 * self.wf
            self.add(self.section([(880, fx, 0, 14, 14), (1010, fx * 1.04, 0, 13, 13)]), "cortical_bone")
            self.add(self.section([(884, fx, 0, 8, 8), (1010, fx * 1.04, 0, 7, 7)]), "marrow")
            self.organs[f"iliac_{'r' if s > 0 else 'l'}"] = self.ell(iliac_c, (20, 62, 55), rotz=-s * 40)
        self.shell((0, self.spine_y(800) - 8, 822), (42, 18, 45), 4, "cortical_bone", "marrow", rot=rot_x(25))

    def anatomy(self) -> Anatomy:
        params = {"width_factor": self.wf, "depth_factor": self.df, "fat_mm": self.tf}
        return Anatomy(self.shapes, self.organs, self.vertebrae, self.F, params)


def build_anatomy(
    rng: np.random.Generator,
    frame: Frame,
    bladder_fill: float,
    fov: tuple[np.ndarray, np.ndarray],
    draws: Draws | None = None,
) -> Anatomy:
    """The patient's anatomy as painter's-order shapes (later shapes overwrite earlier ones).

    ``rng`` draws the patient (body width/depth, fat thickness, organ sizes); ``bladder_fill`` (per study)
    scales the bladder's volume; ``fov`` (world lo, hi corners of the CT grid) sizes the table; ``draws``
    (variability, optional) replace body factors, organ sizes, shapes and positions where they are set.
    """
    b = _Builder(rng, frame, draws)
    b.add_table(fov)
    b.add_outline()
    b.add_cavities()
    b.add_lungs()
    b.add_back_muscles()
    b.add_heart_and_vessels()
    b.add_abdomen(bladder_fill)
    b.add_neck()
    b.add_skull_and_brain()
    b.add_spine()
    b.add_chest_bones()
    b.add_pelvis_and_femora()
    return b.anatomy()


def rasterise(grid: Grid, anat: Anatomy) -> np.ndarray:
    """The tissue-index map (uint8) of ``anat`` on ``grid``; 0 (air) outside the body."""
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    for shape, value in anat.shapes:
        paint(tissue, grid, shape, value)
    return tissue
