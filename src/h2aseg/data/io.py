"""Reading and writing 3D medical images with their geometry.

Images are held as :class:`Volume`: a NumPy array indexed ``[i, j, k]`` in the file's voxel order and the
4x4 voxel-to-world affine in **RAS+ millimetres** (nibabel's convention). NIfTI goes through nibabel;
``.mha``/``.mhd``/``.nrrd`` through SimpleITK (its LPS direction is converted to RAS). Every problem
raises :class:`ImageError` naming the file. Writing is atomic (temporary file + rename) and never
replaces an existing input unless explicitly allowed.

The ``check_*`` functions validate what preprocessing relies on (finite voxels, CT/PET overlap in physical
space, label values, label grid == CT grid, channel order); each error names the file(s) and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from h2aseg.data.geometry import affine_voxel_volume_ml
from h2aseg.errors import InputError
from h2aseg.files import atomic_write

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class ImageError(InputError):
    """An input image is missing, unreadable or invalid; the message names the file and the problem."""


@dataclass
class Volume:
    """A 3D image: ``array`` (X, Y, Z) and its voxel-to-world ``affine`` (RAS+, mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes (norms of the affine's columns)."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (from the header's spacing)."""
        return affine_voxel_volume_ml(self.affine)

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when both volumes have the same shape and (to ``atol`` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))


def image_suffix(path: str | Path) -> str:
    name = str(path).lower()
    for suf in IMAGE_SUFFIXES:
        if name.endswith(suf):
            return suf
    return ""


def strip_image_suffix(name: str) -> str:
    suf = image_suffix(name)
    return name[: -len(suf)] if suf else name


def _beside(mask_path: Path, suffix: str) -> Path:
    return mask_path.with_name(f"{strip_image_suffix(mask_path.name)}_{suffix}.nii.gz")


def probability_path(mask_path: Path) -> Path:
    """``<case>_probability.nii.gz`` beside the mask ``<case>.nii.gz`` (written by ``h2aseg predict``)."""
    return _beside(mask_path, "probability")


def flip_masks_path(mask_path: Path) -> Path:
    """``<case>_flip_masks.nii.gz`` beside the mask ``<case>.nii.gz`` (written by ``h2aseg predict``)."""
    return _beside(mask_path, "flip_masks")


def read_volume(path: str | Path, *, dtype: np.dtype | type | None = np.float32) -> Volume:
    """Read a 3D image with its geometry. Raises :class:`ImageError` naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    suf = image_suffix(path)
    if not suf:
        raise ImageError(f"{path}: unsupported image format (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suf in NIFTI_SUFFIXES:
            img = nib.load(str(path))
            arr = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=np.float64)
        else:
            arr, affine = _read_itk(path)
    except ImageError:
        raise
    except Exception as e:  # nibabel/SimpleITK raise many types for corrupt files
        raise ImageError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from e
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ImageError(f"{path}: expected a 3D image, got shape {tuple(arr.shape)}")
    if dtype is not None:
        arr = np.asarray(arr, dtype=dtype)
    return Volume(array=arr, affine=affine, path=str(path))


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise ImageError(f"{path}: expected a 3D image, got {img.GetDimension()}D")
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # ITK gives (z, y, x)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return arr, affine


def check_finite(vol: Volume) -> None:
    """Raise :class:`ImageError` if the image holds NaN or Inf voxels."""
    if not np.isfinite(vol.array).all():
        n = int((~np.isfinite(vol.array)).sum())
        raise ImageError(f"{vol.path}: contains {n} NaN/Inf voxel(s)")


def describe_grid(vol: Volume) -> str:
    """A one-line description of a volume's grid (shape, spacing, origin) for error messages."""
    sp = ", ".join(f"{v:.4g}" for v in vol.spacing)
    org = ", ".join(f"{v:.4g}" for v in vol.affine[:3, 3])
    return f"shape {vol.shape}, spacing ({sp}) mm, origin ({org}) mm"


def world_bounds(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world (RAS mm) bounding box of the volume's voxels, edges included."""
    n = np.asarray(vol.shape, dtype=np.float64)
    corners = np.array(
        [[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for c in (-0.5, n[2] - 0.5)]
    )
    world = corners @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(a: Volume, b: Volume) -> float:
    """Fraction of ``a``'s world bounding box that lies inside ``b``'s (0 when they do not overlap)."""
    lo_a, hi_a = world_bounds(a)
    lo_b, hi_b = world_bounds(b)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None)
    size_a = np.maximum(hi_a - lo_a, 1e-9)
    return float(np.prod(inter / size_a))


def check_overlap(ct: Volume, pet: Volume, min_fraction: float = 0.1) -> None:
    """Raise :class:`ImageError` unless PET covers at least ``min_fraction`` of the CT's physical extent."""
    frac = overlap_fraction(ct, pet)
    if frac <= 0.0:
        raise ImageError(
            f"{pet.path}: PET does not overlap the CT {ct.path} in physical space "
            f"(CT: {describe_grid(ct)}; PET: {describe_grid(pet)})"
        )
    if frac < min_fraction:
        raise ImageError(
            f"{pet.path}: PET covers only {100 * frac:.1f}% of the CT {ct.path} in physical space "
            f"(CT: {describe_grid(ct)}; PET: {describe_grid(pet)}); check the origins"
        )


def check_same_grid(label: Volume, ct: Volume, atol: float = 1e-3) -> None:
    """Raise :class:`ImageError` when the label is not on the CT's voxel grid (shape and affine)."""
    if not label.same_grid(ct, atol=atol):
        raise ImageError(
            f"{label.path}: label grid ({describe_grid(label)}) differs from the CT grid of {ct.path} "
            f"({describe_grid(ct)})"
        )


def check_label_values(label: Volume, allowed: set[int] | tuple[int, ...] | range) -> None:
    """Raise :class:`ImageError` when the label holds values outside ``allowed`` (or non-integer values)."""
    arr = label.array
    allowed_set = {int(v) for v in allowed}
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"{label.path}: label contains NaN/Inf voxels")
        if not np.array_equal(arr, np.round(arr)):
            raise ImageError(f"{label.path}: label contains non-integer values")
    lo, hi = min(allowed_set), max(allowed_set)
    if allowed_set == set(range(lo, hi + 1)):  # contiguous: only values outside [lo, hi] can be wrong
        outside = arr[(arr < lo) | (arr > hi)]
        bad = sorted(int(v) for v in np.unique(outside))
    else:
        bad = sorted(int(v) for v in np.unique(arr) if int(v) not in allowed_set)
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ImageError(
            f"{label.path}: label values {{{shown}}} outside the expected set "
            f"{{{', '.join(str(v) for v in sorted(allowed_set))}}}"
        )


def check_modalities(ct: Volume, pet: Volume) -> None:
    """Raise :class:`ImageError` when CT and PET look swapped (the 'CT' has no air, the 'PET' has HU)."""
    ct_min = float(np.min(ct.array))
    pet_min = float(np.min(pet.array))
    if ct_min > -200.0 and pet_min < -500.0:
        raise ImageError(
            f"{ct.path} / {pet.path}: CT and PET look swapped (CT minimum {ct_min:.0f}, PET minimum "
            f"{pet_min:.0f}); for nnU-Net layouts with _0000 = PET set swap_channels"
        )


def write_volume(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    protect: tuple[str | Path, ...] = (),
) -> Path:
    """Write ``array`` with ``affine`` as NIfTI, atomically (temp file in the same folder, then rename).

    ``protect`` lists input files that must never be overwritten: writing onto one raises
    :class:`ImageError`.
    """
    path = Path(path)
    target = path.resolve()
    for p in protect:
        if Path(p).resolve() == target:
            raise ImageError(f"{path}: refusing to overwrite an input file")
    if image_suffix(path) not in NIFTI_SUFFIXES:
        raise ImageError(f"{path}: output must be NIfTI (.nii.gz or .nii)")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=image_suffix(path))
