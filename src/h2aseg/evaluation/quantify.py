"""Per-lesion and per-patient PET measures from an SUV image and a lesion mask (``docs/quantify.md``).

Lesions are the 18-connected components of ``mask > 0`` (``cc3d.connected_components(connectivity=18)``,
as the autoPET scripts label them), numbered 1..N in cc3d's order (the ``lesion_id`` is the component's
label value). A mask read from a file must hold labels, whole numbers >= 0 (0 background; 1, or the
HECKTOR labels 1 and 2, lesion); anything else (a probability map, an image) is an
:class:`~h2aseg.data.io.ImageError` naming the file (:func:`check_label_mask`), unless it was binarised
first (:func:`binarise`, ``h2aseg quantify --threshold``). SUV, mask and ground truth must be on one voxel
grid (shape and affine); otherwise an :class:`~h2aseg.data.io.ImageError` names both files. Values are in
the units of the input image (SUV body weight for autoPET; PERCIST's SUL is not computed). Per lesion:

* ``centroid_{x,y,z}_mm``: the unweighted mean of the lesion's voxel indices mapped through the affine, in
  scanner (world) mm, RAS+ as :mod:`h2aseg.data.io` holds affines (ITK/DICOM LPS = (-x, -y, z)).
* ``voxels``, ``volume_ml`` = voxels x voxel volume (``|det affine[:3, :3]| / 1000``; autoPET's
  ``pixdim`` product for an orthogonal grid); ``suv_max``, ``suv_mean`` over the lesion's voxels;
  ``tlg`` = SUVmean x volume in ml (total lesion glycolysis, SUV·ml).
* ``suv_peak`` (PERCIST, Wahl et al. 2009): the highest mean SUV within a 1 cm³ sphere (radius
  :data:`SUVPEAK_RADIUS_MM` = 6.2035 mm, 12.4 mm across). **Centring rule**: the sphere is centred on the
  centre of each voxel of the lesion in turn, and the maximum is taken. The mean is over the **whole
  image** (voxels outside the lesion count), each voxel weighted by the fraction of its volume inside the
  sphere (:func:`sphere_kernel`: supersampled on the affine's real, anisotropic voxel shape), i.e.
  ``Σ w_i SUV_i / Σ w_i``, computed with :func:`scipy.ndimage.correlate`. Where the sphere leaves the image
  the missing voxels are left out of both sums (mean over the part inside the image).
* ``prob_mean``, ``prob_max`` (lesion confidence): the mean and the maximum of the network's foreground
  probability over the lesion's voxels, on the grid the lesion is measured on (``predict --quantify`` maps
  the probability map onto the PET grid as it maps the mask: nearest neighbour). Empty cells when no
  probability map is given (``h2aseg quantify`` without ``--probability``).
* ``tta_volume_cv`` (with flip TTA): how much the lesion's volume varies over the 8 flips. The flip masks
  (:func:`h2aseg.inference.sliding.predict_with_flip_masks`) hold each flip's own thresholded mask as one
  bit of a uint8 map. The lesion's **region** is the 18-connected component of ``(flip masks > 0) or
  (mask > 0)`` that holds it (a region can hold several lesions that some flip joins; they then share its
  value); flip ``k``'s volume ``V_k`` is the count of the region's voxels with bit ``k`` set, and
  ``tta_volume_cv`` = population standard deviation / mean of ``V_0..V_7`` (0 when every flip finds the
  same volume). Empty cells without flip masks (no TTA).
* ``detected`` (only with a ground truth): 1 when the lesion has at least one voxel in the ground truth
  (any overlap; the lesion-wise rule of :mod:`h2aseg.evaluation.metrics`), else 0 (a false-positive lesion).

Per patient: ``lesion_count``, ``mtv_ml`` (total metabolic tumour volume), ``tlg`` (sum over lesions),
``suv_max`` (over all lesion voxels), ``suv_peak`` (the highest lesion SUVpeak), ``dmax_mm`` (the largest
world distance between two lesion centroids; 0 with fewer than two lesions); with a ground truth also
``gt_lesions``, ``gt_detected`` (GT lesions touched by the mask) and ``fp_lesions``. SUV values of an empty
mask are left empty in the CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist

from h2aseg.data.geometry import affine_voxel_volume_ml, resample_labels, resample_to_grid
from h2aseg.data.io import (
    ImageError,
    Volume,
    check_finite,
    describe_grid,
    flip_masks_path,
    probability_path,
    read_volume,
    strip_image_suffix,
)
from h2aseg.files import atomic_write_text

CONNECTIVITY = 18
SPHERE_VOLUME_MM3 = 1000.0
#: Radius (mm) of a 1 cm³ sphere: (3 x 1000 / 4π)^(1/3) = 6.2035 mm (12.4 mm across), PERCIST's SUVpeak VOI.
SUVPEAK_RADIUS_MM = (3.0 * SPHERE_VOLUME_MM3 / (4.0 * math.pi)) ** (1.0 / 3.0)
#: Sub-points per voxel axis: at least this many, and enough to be at most :data:`MAX_SUBSTEP_MM` apart.
MIN_SUBSAMPLES = 5
MAX_SUBSTEP_MM = 0.5
#: Flip passes of TTA, one bit each of the uint8 flip-mask map (:data:`h2aseg.inference.sliding.TTA_FLIPS`).
FLIP_BITS = 8
#: Slack on the [0, 1] range of a probability map (float32 rounding of the flip average).
PROBABILITY_SLACK = 1e-4


@dataclass(frozen=True)
class Lesion:
    """One connected component of the mask and its PET measures (see the module docstring)."""

    lesion_id: int
    centroid_x_mm: float
    centroid_y_mm: float
    centroid_z_mm: float
    voxels: int
    volume_ml: float
    suv_max: float
    suv_mean: float
    suv_peak: float
    tlg: float
    prob_mean: float | None = None
    prob_max: float | None = None
    tta_volume_cv: float | None = None
    detected: int | None = None


@dataclass(frozen=True)
class Patient:
    """Per-patient totals over the lesions (see the module docstring); GT fields ``None`` without a GT."""

    lesion_count: int
    mtv_ml: float
    tlg: float
    suv_max: float
    suv_peak: float
    dmax_mm: float
    gt_lesions: int | None = None
    gt_detected: int | None = None
    fp_lesions: int | None = None


@dataclass(frozen=True)
class Quantification:
    """The lesions of one case and its per-patient summary."""

    case_id: str
    lesions: list[Lesion]
    patient: Patient
    has_gt: bool = False


# --------------------------------------------------------------------------------------------- the kernel
def _linear(affine_or_spacing: np.ndarray | Sequence[float]) -> np.ndarray:
    """The 3x3 index-to-mm matrix from a 4x4/3x3 affine or a spacing triple."""
    a = np.asarray(affine_or_spacing, dtype=np.float64)
    if a.shape == (3,):
        return np.diag(a)
    if a.shape in ((4, 4), (3, 3)):
        return a[:3, :3]
    raise ValueError(f"expected a spacing triple or a 3x3/4x4 affine, got shape {a.shape}")


def _subsample_offsets(lin: np.ndarray, min_samples: int, max_step_mm: float) -> np.ndarray:
    """Sub-point positions inside one voxel, in voxel units relative to its centre: ``(n, 3)``."""
    spacing = np.linalg.norm(lin, axis=0)
    counts = [max(min_samples, math.ceil(float(s) / max_step_mm)) for s in spacing]
    axes = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def sphere_kernel(
    affine_or_spacing: np.ndarray | Sequence[float],
    radius_mm: float = SUVPEAK_RADIUS_MM,
    *,
    min_samples: int = MIN_SUBSAMPLES,
    max_step_mm: float = MAX_SUBSTEP_MM,
) -> np.ndarray:
    """Fraction of each voxel inside a sphere centred on the centre voxel: an odd-sized float64 array.

    Each voxel is supersampled on a regular grid of sub-points (at least ``min_samples`` per axis, and
    enough that they are at most ``max_step_mm`` apart), placed through the affine's 3x3 part (real voxel
    size and shape, anisotropic or sheared); the weight is the share of sub-points within ``radius_mm`` of
    the sphere's centre. ``kernel.sum()`` x voxel volume is the sphere's volume to well under 1 %.
    """
    lin = _linear(affine_or_spacing)
    inv = np.linalg.inv(lin)
    half = np.ceil(radius_mm * np.linalg.norm(inv, axis=1) + 0.5).astype(int)  # voxels a sphere can touch
    sub = _subsample_offsets(lin, min_samples, max_step_mm)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half[1:]], indexing="ij")
    jk = np.stack(grids, axis=-1).reshape(-1, 2).astype(np.float64)
    kernel = np.empty((2 * half[0] + 1, len(jk)), dtype=np.float64)
    r2 = radius_mm * radius_mm
    for row, i in enumerate(range(-half[0], half[0] + 1)):  # one slab at a time bounds the memory
        idx = np.concatenate([np.full((len(jk), 1), float(i)), jk], axis=1)
        pts = (idx[:, None, :] + sub[None, :, :]) @ lin.T
        kernel[row] = np.count_nonzero((pts * pts).sum(-1) <= r2, axis=1) / len(sub)
    return kernel.reshape(2 * half + 1)


def peak_map(suv: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Weighted mean SUV in the kernel's sphere centred on every voxel of ``suv`` (float64).

    Outside the array counts as absent: ``correlate(suv, w) / correlate(1, w)``, both zero-padded.
    """
    suv = np.asarray(suv, dtype=np.float64)
    num = ndimage.correlate(suv, kernel, mode="constant", cval=0.0)
    den = ndimage.correlate(np.ones_like(suv), kernel, mode="constant", cval=0.0)
    return num / den


# ------------------------------------------------------------------------------------------- per lesion
def _lesion_peaks(suv: np.ndarray, labels: np.ndarray, n: int, kernel: np.ndarray) -> np.ndarray:
    """SUVpeak of lesions 1..n: the sphere's mean on each lesion's bounding box plus the kernel's margin."""
    half = [s // 2 for s in kernel.shape]
    peaks = np.zeros(n, dtype=np.float64)
    for lab, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if box is None:
            continue
        dims = list(zip(box, half, suv.shape, strict=True))
        grown = tuple(slice(max(sl.start - h, 0), min(sl.stop + h, dim)) for sl, h, dim in dims)
        if any(sl.start < h or sl.stop + h > dim for sl, h, dim in dims):
            means = peak_map(suv[grown], kernel)  # the sphere can leave the image: renormalise
        else:  # every lesion voxel's sphere lies inside the crop: the full kernel's weight
            crop = np.asarray(suv[grown], dtype=np.float64)
            means = ndimage.correlate(crop, kernel, mode="constant", cval=0.0) / kernel.sum()
        peaks[lab - 1] = float(means[labels[grown] == lab].max())
    return peaks


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    labels, n = cc3d.connected_components(binary, connectivity=connectivity, return_N=True)
    return np.asarray(labels), int(n)


def label_lesions(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> tuple[np.ndarray, int]:
    """The lesions of ``mask > 0`` as labels 1..N (each lesion's ``lesion_id``) and N."""
    return _label(mask, connectivity)


def lesion_measures(
    suv: np.ndarray, labels: np.ndarray, n: int, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts, SUV sums, SUV maxima and world centroids ``(n, 3)`` of lesions 1..n of ``labels``."""
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 3))
    fg = np.nonzero(labels)
    lab = labels[fg].astype(np.int64)
    values = suv[fg].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.bincount(lab, weights=values, minlength=n + 1)[1:]
    maxima = np.asarray(ndimage.maximum(values, lab, np.arange(1, n + 1)), dtype=np.float64).reshape(n)
    ijk = np.stack([np.bincount(lab, weights=a, minlength=n + 1)[1:] for a in fg], axis=1)
    ijk = ijk / np.maximum(counts, 1)[:, None]
    centroids = ijk @ affine[:3, :3].T + affine[:3, 3]
    return counts, sums, maxima, centroids


def quantify_arrays(
    suv: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    case_id: str = "case",
    connectivity: int = CONNECTIVITY,
    kernel: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    flip_masks: np.ndarray | None = None,
) -> Quantification:
    """Lesion and patient measures of ``mask`` (``> 0``) on ``suv``; arrays on one grid with ``affine``.

    ``probability`` (foreground probability) and ``flip_masks`` (TTA, bit ``k`` = flip ``k``'s mask) add
    the confidence columns (:func:`lesion_confidence`)."""
    suv = np.asarray(suv)
    if not np.issubdtype(suv.dtype, np.floating):
        suv = suv.astype(np.float64)
    extra = [a for a in (gt, probability, flip_masks) if a is not None]
    shapes = {np.shape(mask), *(np.shape(a) for a in extra)}
    if shapes != {suv.shape}:
        raise ImageError(
            "SUV, mask (and GT, probability, flip-mask) arrays differ in shape: "
            f"{suv.shape} vs {sorted(shapes)}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    labels, n = _label(mask, connectivity)
    voxel_ml = affine_voxel_volume_ml(affine)
    counts, sums, maxima, centroids = lesion_measures(suv, labels, n, affine)
    peaks = _lesion_peaks(suv, labels, n, sphere_kernel(affine) if kernel is None else kernel)
    detected = lesions_detected(labels, n, gt)
    prob_mean, prob_max, cv = lesion_confidence(labels, n, probability, flip_masks, connectivity)
    lesions = []
    for k in range(n):
        mean, vol = float(sums[k] / counts[k]), float(counts[k] * voxel_ml)
        lesions.append(
            Lesion(
                lesion_id=k + 1,
                centroid_x_mm=float(centroids[k, 0]),
                centroid_y_mm=float(centroids[k, 1]),
                centroid_z_mm=float(centroids[k, 2]),
                voxels=int(counts[k]),
                volume_ml=vol,
                suv_max=float(maxima[k]),
                suv_mean=mean,
                suv_peak=float(peaks[k]),
                tlg=mean * vol,
                prob_mean=_maybe(prob_mean, k),
                prob_max=_maybe(prob_max, k),
                tta_volume_cv=_maybe(cv, k),
                detected=None if detected is None else int(detected[k]),
            )
        )
    patient = _patient(lesions, centroids, mask, gt, connectivity)
    return Quantification(case_id, lesions, patient, has_gt=gt is not None)


def _maybe(values: np.ndarray | None, k: int) -> float | None:
    return None if values is None else float(values[k])


def lesion_confidence(
    labels: np.ndarray,
    n: int,
    probability: np.ndarray | None = None,
    flip_masks: np.ndarray | None = None,
    connectivity: int = CONNECTIVITY,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Per lesion 1..n of ``labels``: mean and maximum of ``probability`` over its voxels, and the
    coefficient of variation of its region's volume over the flips of ``flip_masks`` (see the module
    docstring); each None when its input is None. Vectorised: bincounts over the labels, no voxel loop."""
    prob_mean = prob_max = cv = None
    fg = np.nonzero(labels)
    lab = np.asarray(labels[fg], dtype=np.int64)
    if probability is not None:
        values = np.asarray(probability)[fg].astype(np.float64)
        counts = np.bincount(lab, minlength=n + 1)[1:]
        prob_mean = np.bincount(lab, weights=values, minlength=n + 1)[1:] / np.maximum(counts, 1)
        index = np.arange(1, n + 1)
        prob_max = np.asarray(ndimage.maximum(values, lab, index) if n else [], dtype=np.float64).reshape(n)
    if flip_masks is not None:
        cv = _flip_volume_cv(labels, n, np.asarray(flip_masks), connectivity)
    return prob_mean, prob_max, cv


def _flip_volume_cv(labels: np.ndarray, n: int, bits: np.ndarray, connectivity: int) -> np.ndarray:
    """``tta_volume_cv`` of lesions 1..n (module docstring): std/mean of the flips' volumes in each region."""
    if n == 0:
        return np.zeros(0)
    bits = bits.astype(np.uint8, copy=False)
    regions, m = _label((bits > 0) | (labels > 0), connectivity)
    inside = np.nonzero(regions)
    reg, reg_bits = regions[inside].astype(np.int64), bits[inside]
    volumes = np.stack(  # (m + 1, FLIP_BITS): voxels of each region in each flip's mask
        [np.bincount(reg, weights=(reg_bits >> k) & 1, minlength=m + 1) for k in range(FLIP_BITS)], axis=1
    )
    region_of = np.zeros(n + 1, dtype=np.int64)  # every voxel of a lesion lies in one region
    region_of[labels[inside]] = reg
    v = volumes[region_of[1:]]
    mean = v.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, v.std(axis=1) / mean, np.nan)


def lesions_detected(labels: np.ndarray, n: int, gt: np.ndarray | None) -> np.ndarray | None:
    """Per lesion 1..n: True when it has a voxel in ``gt > 0``."""
    if gt is None:
        return None
    hit = np.zeros(n + 1, dtype=bool)
    hit[np.unique(labels[np.asarray(gt) > 0])] = True
    return hit[1:]


def _patient(
    lesions: list[Lesion], centroids: np.ndarray, mask: np.ndarray, gt: np.ndarray | None, connectivity: int
) -> Patient:
    gt_fields: dict[str, int] = {}
    if gt is not None:
        gt_labels, n_gt = _label(gt, connectivity)
        touched = np.unique(gt_labels[np.asarray(mask) > 0])
        gt_fields = {
            "gt_lesions": n_gt,
            "gt_detected": int(np.count_nonzero(touched)),
            "fp_lesions": sum(1 for les in lesions if not les.detected),
        }
    nan = math.nan
    return Patient(
        lesion_count=len(lesions),
        mtv_ml=float(sum(les.volume_ml for les in lesions)),
        tlg=float(sum(les.tlg for les in lesions)),
        suv_max=max((les.suv_max for les in lesions), default=nan),
        suv_peak=max((les.suv_peak for les in lesions), default=nan),
        dmax_mm=float(pdist(centroids).max()) if len(lesions) >= 2 else 0.0,
        **gt_fields,
    )


# ------------------------------------------------------------------------------------------------ files
def check_grid(vol: Volume, ref: Volume, what: str, ref_what: str = "SUV", atol: float = 1e-3) -> None:
    """Raise :class:`ImageError` naming both files when ``vol`` is not on ``ref``'s grid."""
    if not vol.same_grid(ref, atol=atol):
        raise ImageError(
            f"{vol.path}: {what} grid ({describe_grid(vol)}) differs from the {ref_what} grid of {ref.path} "
            f"({describe_grid(ref)}); quantification needs both on one voxel grid"
        )


def check_label_mask(mask: Volume) -> None:
    """Raise :class:`ImageError` naming the file unless ``mask`` holds labels: whole numbers >= 0.

    A probability map (values in (0, 1)) or an image (fractional or negative values) would otherwise be
    measured as if every voxel above 0 were lesion."""
    arr = np.asarray(mask.array)
    if arr.dtype.kind in "bu":
        return
    problem = _not_labels(arr)
    if problem:
        raise ImageError(f"{mask.path}: the mask is not a label mask: {problem}")


def _not_labels(arr: np.ndarray) -> str | None:
    """What keeps ``arr`` from being labels (whole numbers >= 0), or None."""
    is_float = arr.dtype.kind == "f"  # only floats can hold NaN/Inf or fractions
    if is_float and not np.isfinite(arr).all():
        return f"{int(np.count_nonzero(~np.isfinite(arr)))} NaN/Inf voxel(s)"
    lo = float(arr.min())
    if lo < 0:
        return f"negative values (minimum {lo:g}): an image? pass --threshold T to take voxels >= T as lesion"
    fractional = arr[arr != np.round(arr)] if is_float else None
    if fractional is None or fractional.size == 0:
        return None
    hi = float(arr.max())
    if hi <= 1:
        return (
            f"values in (0, 1) (e.g. {float(fractional[0]):.7g}): a probability map? "
            "pass --threshold 0.5 to binarise it"
        )
    return (
        f"non-integer values (e.g. {float(fractional[0]):.7g}; range {lo:g} to {hi:g}): an image? "
        "pass --threshold T to take voxels >= T as lesion"
    )


def check_probability(prob: Volume) -> None:
    """Raise :class:`ImageError` naming the file unless ``prob`` is a finite map of values in [0, 1]."""
    arr = np.asarray(prob.array)
    if arr.dtype.kind not in "buif":
        raise ImageError(f"{prob.path}: the probability map has non-numeric type {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ImageError(f"{prob.path}: the probability map has {bad} NaN/Inf voxel(s)")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < -PROBABILITY_SLACK or hi > 1 + PROBABILITY_SLACK:
        raise ImageError(
            f"{prob.path}: the probability map has values outside [0, 1] (range {lo:g} to {hi:g}); "
            "give the foreground probability "
            "(h2aseg predict --probabilities writes <case>_probability.nii.gz)"
        )


def check_flip_masks(bits: Volume) -> None:
    """Raise :class:`ImageError` naming the file unless ``bits`` holds whole numbers 0..255 (one bit per
    TTA flip, as ``<case>_flip_masks.nii.gz``)."""
    arr = np.asarray(bits.array)
    problem = None if arr.dtype == np.uint8 else _not_labels(arr)
    if problem is None and arr.dtype != np.uint8 and arr.size and float(arr.max()) > 255:
        problem = f"values above 255 (maximum {float(arr.max()):g}): one bit per flip needs 0..255"
    if problem:
        raise ImageError(f"{bits.path}: not a flip-mask map: {problem}")


def binarise(mask: Volume, threshold: float) -> Volume:
    """``mask >= threshold`` as a 0/1 uint8 mask on the same grid (``h2aseg quantify --threshold``)."""
    return Volume((np.asarray(mask.array) >= threshold).astype(np.uint8), mask.affine, mask.path)


def quantify_volumes(
    suv: Volume,
    mask: Volume,
    gt: Volume | None = None,
    *,
    case_id: str | None = None,
    connectivity: int = CONNECTIVITY,
    probability: Volume | None = None,
    flip_masks: Volume | None = None,
) -> Quantification:
    """:func:`quantify_arrays` for volumes read from files; checks that they share the SUV's grid, that
    the mask holds labels (:func:`check_label_mask`), the probability map values in [0, 1]
    (:func:`check_probability`) and the flip masks bytes (:func:`check_flip_masks`)."""
    check_finite(suv)
    check_grid(mask, suv, "mask")
    check_label_mask(mask)
    if gt is not None:
        check_grid(gt, suv, "ground-truth")
    if probability is not None:
        check_grid(probability, suv, "probability-map")
        check_probability(probability)
    if flip_masks is not None:
        check_grid(flip_masks, suv, "flip-mask")
        check_flip_masks(flip_masks)
    cid = case_id or (strip_image_suffix(Path(mask.path).name) if mask.path else "case")
    return quantify_arrays(
        suv.array,
        mask.array,
        suv.affine,
        None if gt is None else gt.array,
        case_id=cid,
        connectivity=connectivity,
        probability=None if probability is None else probability.array,
        flip_masks=None if flip_masks is None else flip_masks.array,
    )


def quantify_files(
    suv: str | Path, mask: str | Path, gt: str | Path | None = None, *, case_id: str | None = None
) -> Quantification:
    """Read SUV, mask (and GT) and quantify; every file problem is an :class:`ImageError` naming it."""
    gt_vol = None if gt is None else read_volume(gt, dtype=None)
    return quantify_volumes(
        read_volume(suv, dtype=None), read_volume(mask, dtype=None), gt_vol, case_id=case_id
    )


def csv_cell(value: object) -> str:
    """A CSV cell: empty for None and NaN, floats to 10 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def csv_text(rows: list[dict[str, object]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row[c]) for c in columns])
    return buf.getvalue()


def lesions_csv(q: Quantification) -> str:
    """``case_id`` + :class:`Lesion`'s fields, one row per lesion (``detected`` only with a GT)."""
    cols = ["case_id", *(f.name for f in fields(Lesion) if q.has_gt or f.name != "detected")]
    return csv_text([{"case_id": q.case_id, **asdict(les)} for les in q.lesions], cols)


def patient_csv(q: Quantification) -> str:
    """``case_id`` + :class:`Patient`'s fields in one row (GT columns only with a GT)."""
    gt_cols = {"gt_lesions", "gt_detected", "fp_lesions"}
    cols = ["case_id", *(f.name for f in fields(Patient) if q.has_gt or f.name not in gt_cols)]
    return csv_text([{"case_id": q.case_id, **asdict(q.patient)}], cols)


def write_quantification(
    q: Quantification, lesions_path: str | Path, patient_path: str | Path
) -> tuple[Path, Path]:
    """Write the two CSVs atomically; returns their paths."""
    return atomic_write_text(lesions_path, lesions_csv(q)), atomic_write_text(patient_path, patient_csv(q))


def write_to_dir(q: Quantification, out_dir: str | Path) -> tuple[Path, Path]:
    """``out_dir/lesions.csv`` and ``out_dir/patient.csv`` (what ``h2aseg quantify`` writes)."""
    out_dir = Path(out_dir)
    return write_quantification(q, out_dir / "lesions.csv", out_dir / "patient.csv")


def beside_paths(mask_path: str | Path, case_id: str | None = None) -> tuple[Path, Path]:
    """``<case>_lesions.csv`` and ``<case>_patient.csv`` in the mask's folder (case = mask name's stem)."""
    mask_path = Path(mask_path)
    case = case_id or strip_image_suffix(mask_path.name)
    return mask_path.with_name(f"{case}_lesions.csv"), mask_path.with_name(f"{case}_patient.csv")


def quantify_prediction(
    mask: np.ndarray,
    mask_affine: np.ndarray,
    suv_path: str | Path,
    *,
    case_id: str,
    mask_path: str | Path,
    probability: np.ndarray | None = None,
    flip_masks: np.ndarray | None = None,
) -> Quantification:
    """Measures of a predicted mask (CT grid) on the case's SUV file; ``probability`` and ``flip_masks``
    (CT grid too, optional) add the confidence columns.

    When the PET is on another grid than the CT (HECKTOR), the mask is mapped onto the PET grid (nearest
    neighbour, through both affines) so that the SUV values are measured unresampled; the probability map
    and the flip masks are mapped the same way.
    """

    suv = read_volume(suv_path, dtype=None)
    affine = np.asarray(mask_affine, dtype=np.float64)
    m = Volume(np.asarray(mask), affine, str(mask_path))
    prob, bits = (
        None if a is None else on_suv_grid(Volume(np.asarray(a), affine, f"{mask_path} ({what})"), suv)
        for a, what in ((probability, "probability"), (flip_masks, "flip masks"))
    )
    return quantify_volumes(suv, mask_on_suv_grid(m, suv), case_id=case_id, probability=prob, flip_masks=bits)


def mask_on_suv_grid(mask: Volume, suv: Volume) -> Volume:
    """``mask`` itself when on the SUV's grid, else mapped onto it (nearest neighbour, via both affines)."""
    if mask.same_grid(suv):
        return mask
    moved = resample_labels(mask.array, mask.affine, suv.affine, suv.shape)
    return Volume(moved, suv.affine.copy(), mask.path)


def on_suv_grid(vol: Volume, suv: Volume) -> Volume:
    """``vol`` itself when on the SUV's grid, else mapped onto it by nearest neighbour with its dtype kept
    (a probability map, flip masks: each SUV voxel gets the value of the voxel its mask value came from)."""
    if vol.same_grid(suv):
        return vol
    moved = resample_to_grid(np.asarray(vol.array), vol.affine, suv.affine, suv.shape, order=0)
    return Volume(moved, suv.affine.copy(), vol.path)


def confidence_volumes(mask: Volume, suv: Volume) -> tuple[Volume | None, Volume | None]:
    """The probability map and flip masks ``h2aseg predict`` wrote beside the mask file ``mask.path`` (None
    where absent), checked to be on the mask's grid and mapped onto the SUV's (:func:`on_suv_grid`)."""
    if mask.path is None:
        return None, None
    mask_path = Path(mask.path)
    found = []
    for path, what in (
        (probability_path(mask_path), "probability-map"),
        (flip_masks_path(mask_path), "flip-mask"),
    ):
        if not path.is_file():
            found.append(None)
            continue
        vol = read_volume(path, dtype=None)
        check_grid(vol, mask, what, "mask")
        found.append(on_suv_grid(vol, suv))
    return found[0], found[1]


def quantify_mask_file(
    mask_path: str | Path, suv_path: str | Path, case_id: str | None = None
) -> tuple[Path, Path]:
    """``h2aseg predict --quantify``: measure a written mask on its SUV, CSVs beside the mask; the
    probability map and flip masks written beside the mask, when there, add the confidence columns."""
    case = case_id or strip_image_suffix(Path(mask_path).name)
    suv, mask = read_volume(suv_path, dtype=None), read_volume(mask_path, dtype=None)
    prob, bits = confidence_volumes(mask, suv)
    q = quantify_volumes(suv, mask_on_suv_grid(mask, suv), case_id=case, probability=prob, flip_masks=bits)
    return write_quantification(q, *beside_paths(mask_path, case))
