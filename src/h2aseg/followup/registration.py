"""Rigid alignment of a follow-up CT to the baseline CT with SimpleITK (``docs/followup.md``).

The follow-up CT (moving) is registered to the baseline CT (fixed) with an :class:`SimpleITK.Euler3DTransform`
(three rotations and a translation), started by :class:`SimpleITK.CenteredTransformInitializer` in
``GEOMETRY`` mode (the image centres on each other), Mattes mutual information (:data:`HISTOGRAM_BINS`
bins, every voxel of the coarse levels, a regular :data:`SAMPLING` share of the finest) and a regular-step
gradient descent with scales from physical shifts, over the multi-resolution pyramid :data:`SHRINK` /
:data:`SMOOTH_MM`, at most ``max_iterations`` steps per level. CT values are clipped to
:data:`HU_RANGE` first so that metal and the table do not dominate.

The result, :class:`Rigid`, holds the 4x4 matrix that maps a **baseline** world point (RAS+ mm, as
:mod:`h2aseg.data.io` holds affines) to the corresponding **follow-up** world point, the Euler angles, the
translation, the final metric and the optimiser's stop condition, and a plain convergence check: the Dice
of the two body masks (CT > :data:`BODY_HU` HU) before and after the alignment. :func:`identity` stands for
``--no-register``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from h2aseg.data.geometry import resample_to_grid
from h2aseg.data.io import Volume
from h2aseg.errors import InputError

HU_RANGE = (-1000.0, 1500.0)
BODY_HU = -500.0
HISTOGRAM_BINS = 32
SAMPLING = 0.25
SHRINK = (4, 2, 1)
SMOOTH_MM = (4.0, 2.0, 0.0)
MAX_ITERATIONS = 100
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


class RegistrationError(InputError):
    """The CTs cannot be aligned (no overlap, an empty image); the message names both files."""


@dataclass(frozen=True)
class Rigid:
    """A rigid transform from baseline world (RAS+ mm) to follow-up world, and how it was found."""

    matrix: list[list[float]]  # 4x4, baseline world point -> follow-up world point
    rotation_deg: float  # the total rotation angle
    euler_deg: tuple[float, float, float] | None  # ITK's angles about the LPS x, y, z axes (None: given)
    translation_mm: tuple[float, float, float]  # RAS+: where the centre of rotation moves
    center_mm: tuple[float, float, float]  # RAS+
    method: str
    metric: str | None = None
    metric_value: float | None = None
    iterations: int | None = None
    stop_condition: str | None = None
    body_dice_before: float | None = None
    body_dice_after: float | None = None
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)

    def to_followup(self, points: np.ndarray) -> np.ndarray:
        """Baseline world points ``(n, 3)`` -> follow-up world points."""
        m = self.array
        return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def to_baseline(self, points: np.ndarray) -> np.ndarray:
        """Follow-up world points ``(n, 3)`` -> baseline world points."""
        m = np.linalg.inv(self.array)
        return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def followup_affine_in_baseline(self, followup_affine: np.ndarray) -> np.ndarray:
        """The follow-up grid's voxel -> baseline-world affine (to resample follow-up arrays onto the
        baseline grid with :func:`~h2aseg.data.geometry.resample_to_grid`)."""
        return np.linalg.inv(self.array) @ np.asarray(followup_affine, dtype=np.float64)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def to_sitk(vol: Volume, dtype: type = np.float32):  # type: ignore[no-untyped-def]
    """A SimpleITK image of ``vol`` (array ``[x, y, z]``, RAS+ affine -> ITK's ``[z, y, x]`` and LPS)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(vol.array, dtype=dtype).transpose(2, 1, 0)))
    lin = np.asarray(vol.affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (_FLIP[:3, :3] @ (lin / spacing)).ravel()])
    img.SetOrigin([float(v) for v in _FLIP[:3, :3] @ np.asarray(vol.affine, dtype=np.float64)[:3, 3]])
    return img


def _euler_matrix_ras(transform) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The 4x4 RAS+ matrix of an ITK (LPS) rigid transform ``x -> R (x - c) + c + t``."""
    rot = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = rot
    lps[:3, 3] = c + t - rot @ c
    return _FLIP @ lps @ _FLIP


def _vec3(values: Iterable[float]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def _rotation_angle_deg(matrix: np.ndarray) -> float:
    cos = (float(np.trace(matrix[:3, :3])) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def body_dice(baseline: Volume, followup: Volume, matrix: np.ndarray) -> float:
    """Dice of the body masks (CT > :data:`BODY_HU`) on the baseline grid, the follow-up's mapped through
    ``matrix`` (baseline world -> follow-up world; nearest neighbour)."""
    fixed = np.asarray(baseline.array) > BODY_HU
    moving = (np.asarray(followup.array) > BODY_HU).astype(np.uint8)
    src_affine = np.linalg.inv(matrix) @ followup.affine
    moved = resample_to_grid(moving, src_affine, baseline.affine, baseline.shape, order=0) > 0
    total = int(fixed.sum()) + int(moved.sum())
    return 2.0 * int((fixed & moved).sum()) / total if total else 0.0


def from_matrix(matrix: np.ndarray, method: str, baseline: Volume, followup: Volume) -> Rigid:
    """A known transform (baseline world -> follow-up world, 4x4 RAS+): identity for ``--no-register``."""
    m = np.asarray(matrix, dtype=np.float64)
    dice = body_dice(baseline, followup, m)
    return Rigid(
        matrix=m.tolist(),
        rotation_deg=_rotation_angle_deg(m),
        euler_deg=None,
        translation_mm=_vec3(m[:3, 3]),
        center_mm=(0.0, 0.0, 0.0),
        method=method,
        body_dice_before=dice,
        body_dice_after=dice,
    )


def identity(baseline: Volume, followup: Volume) -> Rigid:
    """``--no-register``: the two scanners' world frames taken as one."""
    return from_matrix(np.eye(4), "identity (--no-register)", baseline, followup)


def register_rigid(baseline: Volume, followup: Volume, *, max_iterations: int = MAX_ITERATIONS) -> Rigid:
    """Align the follow-up CT to the baseline CT (see the module docstring)."""
    import SimpleITK as sitk

    for vol in (baseline, followup):
        arr = np.asarray(vol.array)
        if not (arr > BODY_HU).any():
            raise RegistrationError(f"{vol.path}: no voxel above {BODY_HU:g} HU; is this a CT?")
    fixed, moving = (sitk.Clamp(to_sitk(v), sitk.sitkFloat32, *HU_RANGE) for v in (baseline, followup))
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    start = _euler_matrix_ras(init)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentagePerLevel([1.0, 1.0, SAMPLING], seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=int(max_iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(SHRINK))
    reg.SetSmoothingSigmasPerLevel(list(SMOOTH_MM))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    try:
        final = reg.Execute(fixed, moving)
    except RuntimeError as e:
        raise RegistrationError(
            f"{followup.path} could not be aligned to {baseline.path}: {str(e).strip().splitlines()[-1]}"
        ) from None
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(final).GetNthTransform(0))
    matrix = _euler_matrix_ras(euler)
    t = _FLIP[:3, :3] @ np.asarray(euler.GetTranslation(), dtype=np.float64)
    c = _FLIP[:3, :3] @ np.asarray(euler.GetCenter(), dtype=np.float64)
    return Rigid(
        matrix=matrix.tolist(),
        rotation_deg=_rotation_angle_deg(matrix),
        euler_deg=_vec3(math.degrees(a) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())),
        translation_mm=_vec3(t),
        center_mm=_vec3(c),
        method="SimpleITK Euler3DTransform, centred (GEOMETRY) start, Mattes mutual information",
        metric="Mattes mutual information (lower is better)",
        metric_value=float(reg.GetMetricValue()),
        iterations=int(reg.GetOptimizerIteration()),
        stop_condition=reg.GetOptimizerStopConditionDescription(),
        body_dice_before=body_dice(baseline, followup, start),
        body_dice_after=body_dice(baseline, followup, matrix),
        settings={
            "hu_range": list(HU_RANGE),
            "histogram_bins": HISTOGRAM_BINS,
            "finest_level_sampling": SAMPLING,
            "shrink_factors": list(SHRINK),
            "smoothing_sigmas_mm": list(SMOOTH_MM),
            "max_iterations_per_level": int(max_iterations),
        },
    )
