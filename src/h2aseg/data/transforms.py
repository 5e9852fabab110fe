"""MONAI dictionary pipelines for training, validation and inference.

Input: ``{"image": float32 (2, X, Y, Z), "label": uint8 (1, X, Y, Z)}`` channel-first on the preprocessed
grid, with **channel 0 = CT** and **channel 1 = PET**, both scaled to [0, 1] (see :func:`case_to_dict`);
with ``cfg.mirror_pet`` a third channel, the PET mirrored across the body's midline, is added to the whole
volume first (:mod:`h2aseg.data.mirror`, :class:`MirroredPETd`), so every crop carries it; with
``cfg.body_coords`` three channels of position in the body's frame follow, computed the same way
(:mod:`h2aseg.data.body_frame`, :class:`BodyCoordinatesd`).
Outputs are plain torch tensors (no metadata tracking, for speed): image float32, label uint8.

Training (:func:`train_transforms`): crop to the body (CT above -500 HU, when ``cfg.crop_to_body``), pad to
the patch size, ``cfg.crops_per_case`` positive/negative patch crops (``cfg.pos_fraction`` of the crop centres
on lesion voxels, MONAI's ``RandCropByPosNegLabeld``, every lesion equally often with ``cfg.pos_balance ==
"lesion"``, or near them with ``cfg.pos_jitter``, :class:`JitterPositiveCentresd`; lesion-free cases give
negative crops; negative crops centred anywhere
outside lesions, or with ``cfg.negative_centres == "hot"`` on physiological uptake,
:class:`CropCentresd`), random rotation
about the axial (z) axis, random flips along each axis, light per-channel intensity scale/shift, as
``cfg.augment`` chooses (:func:`augmentation`: as configured, the paper's none, or the released code's).
Returns a list of ``cfg.crops_per_case`` dicts. Validation and inference take the whole volume as it is
(:func:`model_input`), so predictions stay on the preprocessed grid for
:func:`~h2aseg.data.preprocess.restore_to_ct_grid`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from h2aseg.config import ConfigError, DataConfig
from h2aseg.data.body_frame import UNIT_MM, with_body_coordinates
from h2aseg.data.mirror import with_mirrored_pet
from h2aseg.data.preprocess import PreprocessedCase

KEYS = ("image", "label")
BODY_HU = -500.0
#: voxels kept around the body's bounding box (training's body crop, and prediction with ``infer.body_box``)
BODY_MARGIN = 2
FLIP_AXES = (0, 1, 2)


def case_to_dict(pc: PreprocessedCase) -> dict[str, Any]:
    """``{"image": (2,X,Y,Z) float32 [CT, PET], "label": (1,X,Y,Z) uint8, "case_id": str}``, and the
    working grid's voxel size in mm (``"spacing"``, for :class:`BodyCoordinatesd`).

    A case without label gets an all-zero label (lesion-free for cropping); ``has_label`` says which. The
    arrays are copies, so transforms (crops are views) can never alter a cached case.
    """
    label = pc.label if pc.label is not None else np.zeros(pc.image.shape[1:], dtype=np.uint8)
    return {
        "image": np.array(pc.image, dtype=np.float32, order="C", copy=True),
        "label": np.array(label[None], dtype=np.uint8, order="C", copy=True),
        "case_id": pc.case_id,
        "has_label": pc.label is not None,
        "spacing": pc.geometry.spacing,
    }


class BodyMask:
    """``select_fn`` for :class:`CropForegroundd`: voxels whose normalised CT exceeds ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def __call__(self, img: Any) -> Any:
        return img > self.threshold


class _QuietPosNegCrop(RandCropByPosNegLabeld):
    """RandCropByPosNegLabeld without its per-call warning on lesion-free cases (they give negative crops)."""

    def __call__(self, data: Any, lazy: bool | None = None) -> Any:  # type: ignore[override]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            return super().__call__(data, lazy=lazy)


class CropCentresd(MapTransform):
    """Candidate crop centres for :class:`RandCropByPosNegLabeld`: flat indices of lesion voxels
    (``fg_indices``) and of the voxels negative crops are centred on (``bg_indices``).

    ``balance`` ``"voxel"``: every lesion voxel once, so the cropper's uniform draw favours large lesions
    in proportion to their volume. ``"lesion"``: the voxels of each lesion (18-connected component) are
    repeated to the size of the largest one, so the uniform draw picks every lesion equally often (a voxel
    of a lesion of ``s`` voxels is listed ``floor(L / s)`` or ``ceil(L / s)`` times for the largest size
    ``L``).

    ``hot_threshold`` ``None``: every lesion-free voxel (what the cropper does by itself). A value: only the
    lesion-free voxels whose PET channel (index 1) reaches it, i.e. physiological uptake (kidneys, bladder,
    brain, heart) that a detector has to learn to leave alone: hard negatives. A volume with no such voxel
    falls back to every lesion-free voxel.
    """

    def __init__(self, hot_threshold: float | None, balance: str = "voxel") -> None:
        super().__init__(keys=("label",))
        if balance not in ("voxel", "lesion"):
            raise ConfigError(f"data.pos_balance must be voxel or lesion, got {balance!r}")
        self.hot_threshold = hot_threshold
        self.balance = balance

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        volume = torch.as_tensor(d["label"])[0] > 0
        label = volume.reshape(-1)
        d["fg_indices"] = torch.nonzero(label).flatten()
        if self.balance == "lesion" and d["fg_indices"].numel():
            d["fg_indices"] = lesion_balanced_indices(volume.cpu().numpy())
        negative = ~label
        if self.hot_threshold is not None:
            hot = negative & (torch.as_tensor(d["image"])[1].reshape(-1) >= self.hot_threshold)
            if bool(hot.any()):
                negative = hot
        d["bg_indices"] = torch.nonzero(negative).flatten()
        return d


def lesion_balanced_indices(mask: np.ndarray) -> torch.Tensor:
    """Flat indices of ``mask``'s voxels, each 18-connected lesion repeated to the largest lesion's size."""
    labels, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=18, return_N=True)
    flat = np.asarray(labels).reshape(-1)
    fg = np.flatnonzero(flat)
    order = np.argsort(flat[fg], kind="stable")
    groups = np.split(fg[order], np.cumsum(np.bincount(flat[fg], minlength=n + 1)[1:])[:-1])
    largest = max(g.size for g in groups)
    return torch.from_numpy(np.concatenate([np.resize(g, largest) for g in groups]))


class JitterPositiveCentresd(RandomizableTransform, MapTransform):
    """Move the positive crop centres of :class:`CropCentresd` away from the lesions they were drawn on.

    Replaces ``fg_indices`` (lesion voxels) by ``candidates`` centres, each a lesion voxel drawn at random
    and moved by a uniform integer offset of up to ``jitter * (patch - 1) / 2`` voxels per axis (clipped to
    the volume), so that with ``jitter = 1`` the lesion voxel can land anywhere in the crop, faces included.
    Crops centred on a lesion teach a network that lesions sit in the middle of its window, and it then
    misses lesions near the faces of the sliding windows at inference (``docs/training-notes.md`` section
    12). A volume without lesion voxels is left as it is.
    """

    def __init__(self, patch: tuple[int, ...], jitter: float, candidates: int = 256) -> None:
        MapTransform.__init__(self, keys=("label",))
        RandomizableTransform.__init__(self, prob=1.0)
        self.reach = np.floor(float(jitter) * (np.asarray(patch, dtype=float) - 1) / 2).astype(np.int64)
        self.candidates = int(candidates)

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        fg = torch.as_tensor(d["fg_indices"]).cpu().numpy()
        if fg.size == 0 or not self.reach.any():
            return d
        shape = tuple(int(n) for n in torch.as_tensor(d["label"]).shape[1:])
        picks = fg[self.R.randint(0, fg.size, size=self.candidates)]
        coords = np.stack(np.unravel_index(picks, shape), axis=1)
        offsets = self.R.randint(-self.reach, self.reach + 1, size=coords.shape)
        coords = np.clip(coords + offsets, 0, np.asarray(shape) - 1)
        d["fg_indices"] = torch.from_numpy(np.ravel_multi_index(tuple(coords.T), shape))
        return d


def hot_threshold(cfg: DataConfig) -> float | None:
    """``cfg.hot_suv`` on the normalised PET channel when ``cfg.negative_centres == "hot"``, else ``None``."""
    if cfg.negative_centres != "hot":
        return None
    lo, hi = cfg.pet_window
    if not lo < cfg.hot_suv < hi:
        raise ConfigError(
            f"data.hot_suv must lie inside data.pet_window {list(cfg.pet_window)}, got {cfg.hot_suv}"
        )
    return float((cfg.hot_suv - lo) / (hi - lo))


class RandAxialRotated(RandomizableTransform, MapTransform):
    """Random rotation about the axial (z, last) axis by up to ``max_deg`` degrees, with probability ``prob``.

    Equivalent to MONAI's ``RandRotated(range_z=...)`` (rotation in the (x, y) plane about the patch centre,
    zero padding), but done as one 2D ``grid_sample`` over all slices: the 3D affine grid MONAI builds is
    10-40x slower on CPU, and this is the training hot path. ``modes`` per key: ``bilinear`` or ``nearest``
    (labels keep their dtype).
    """

    def __init__(
        self,
        keys: Any,
        prob: float,
        max_deg: float,
        modes: Any = "bilinear",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.max_rad = math.radians(float(max_deg))
        self.modes = [modes] * len(self.keys) if isinstance(modes, str) else list(modes)
        self.angle = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.angle = float(self.R.uniform(-self.max_rad, self.max_rad)) if self._do_transform else 0.0

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        self.randomize()
        if not self._do_transform or self.angle == 0.0:
            return d
        for key, mode in zip(self.keys, self.modes, strict=True):
            if key in d:
                d[key] = rotate_axial(torch.as_tensor(d[key]), self.angle, mode)
        return d


def rotate_axial(x: torch.Tensor, angle: float, mode: str) -> torch.Tensor:
    """``(C, X, Y, Z)`` rotated by ``angle`` radians in every axial (x, y) plane about the plane's centre, as
    MONAI's ``Rotate(angle=(0, 0, angle), padding_mode="zeros", align_corners=False)``; zero outside,
    ``mode`` ``"bilinear"`` or ``"nearest"``, the input's dtype kept (integer labels rounded)."""
    c, nx, ny, nz = x.shape
    src = x.permute(0, 3, 1, 2).reshape(1, c * nz, nx, ny)
    dtype = src.dtype
    if not src.is_floating_point():
        src = src.float()
    cos, sin = math.cos(angle), math.sin(angle)
    hx = torch.arange(nx, dtype=torch.float32) - (nx - 1) / 2
    hy = torch.arange(ny, dtype=torch.float32) - (ny - 1) / 2
    gx, gy = torch.meshgrid(hx, hy, indexing="ij")
    sx = cos * gx - sin * gy + (nx - 1) / 2  # source voxel coordinates
    sy = sin * gx + cos * gy + (ny - 1) / 2
    grid = torch.stack([(2 * sy + 1) / ny - 1, (2 * sx + 1) / nx - 1], dim=-1)[None]
    out = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if out.dtype != dtype:
        out = out.round().to(dtype) if not dtype.is_floating_point else out.to(dtype)
    return out.reshape(c, nz, nx, ny).permute(0, 2, 3, 1).contiguous()


class SingleThreadCompose(Compose):
    """A :class:`Compose` that runs with one torch intra-op thread (restored afterwards).

    The pipeline is many small tensor operations; with several OpenMP threads on a busy CPU they spend their
    time waiting on each other (measured 20x slower on 2 shared cores). DataLoader workers already use one
    thread, so this only matters when data are prepared in the training process.
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        n = torch.get_num_threads()
        if n == 1:
            return super().__call__(input_, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            torch.set_num_threads(n)


class MirroredPETd(MapTransform):
    """Append the PET mirrored across the body's midline to ``image`` (``data.mirror_pet``, a control)."""

    def __init__(self, body_threshold: float) -> None:
        MapTransform.__init__(self, keys=("image",))
        self.body_threshold = float(body_threshold)

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        d["image"] = with_mirrored_pet(torch.as_tensor(d["image"]), self.body_threshold)
        return d


class BodyCoordinatesd(MapTransform):
    """Append position in the body's frame (:func:`~h2aseg.data.body_frame.with_body_coordinates`) to
    ``image``, on the grid of voxel size ``data["spacing"]`` (``data.body_coords``)."""

    def __init__(self, body_threshold: float, unit_mm: float = UNIT_MM) -> None:
        MapTransform.__init__(self, keys=("image",))
        self.body_threshold = float(body_threshold)
        self.unit_mm = float(unit_mm)

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        if "spacing" not in d:
            raise ValueError("data.body_coords needs the case's voxel size ('spacing', from case_to_dict)")
        image = torch.as_tensor(d["image"])
        d["image"] = with_body_coordinates(image, self.body_threshold, d["spacing"], self.unit_mm)
        return d


def body_threshold(cfg: DataConfig) -> float:
    """The normalised CT value corresponding to ``BODY_HU`` under ``cfg.ct_window``."""
    lo, hi = cfg.ct_window
    return float(np.clip((BODY_HU - lo) / (hi - lo), 0.0, 1.0))


def _pre(cfg: DataConfig) -> list[Any]:
    return [
        EnsureTyped(keys=KEYS, data_type="tensor", track_meta=False, allow_missing_keys=True),
    ]


def _post(allow_missing: bool = False) -> list[Any]:
    return [
        CastToTyped(keys=KEYS, dtype=(torch.float32, torch.uint8), allow_missing_keys=allow_missing),
        EnsureTyped(keys=KEYS, data_type="tensor", track_meta=False, allow_missing_keys=allow_missing),
    ]


@dataclass(frozen=True)
class Augmentation:
    """What the training pipeline does to a crop besides cropping it."""

    crop_to_body: bool
    rotate_prob: float
    rotate_range_deg: float
    flip_prob: float
    intensity_jitter: float


AUGMENT_MODES = ("configured", "paper", "released")


def augmentation(cfg: DataConfig) -> Augmentation:
    """The augmentation ``cfg.augment`` asks for.

    - ``configured``: the fields ``crop_to_body``, ``rotate_*``, ``flip_prob``, ``intensity_jitter`` as set.
    - ``paper``: only what the paper states (section 3.1: patches of the patch size), so no body crop,
      rotation, flip or intensity change. How crops are placed (``pos_fraction``) is not stated in the
      paper; the released code's positive/negative sampling is kept, since crops must be placed somehow.
    - ``released``: the authors' released code: crop to the foreground (here the body), rotation about the
      axial axis with probability 0.8 within +-45 degrees, no flip, no intensity change.
    """
    mode = cfg.augment
    if mode == "configured":
        return Augmentation(
            cfg.crop_to_body, cfg.rotate_prob, cfg.rotate_range_deg, cfg.flip_prob, cfg.intensity_jitter
        )
    if mode == "paper":
        return Augmentation(False, 0.0, 0.0, 0.0, 0.0)
    if mode == "released":
        return Augmentation(True, 0.8, 45.0, 0.0, 0.0)
    raise ConfigError(f"data.augment must be one of {', '.join(AUGMENT_MODES)}, got {mode!r}")


def train_transforms(cfg: DataConfig) -> Compose:
    """Random patch pipeline (see the module docstring); output: a list of ``cfg.crops_per_case`` dicts."""
    if not 0.0 <= cfg.pos_fraction <= 1.0:
        raise ConfigError(f"data.pos_fraction must be in [0, 1], got {cfg.pos_fraction}")
    if not 0.0 <= cfg.pos_jitter <= 1.0:
        raise ConfigError(f"data.pos_jitter must be in [0, 1], got {cfg.pos_jitter}")
    if cfg.crops_per_case < 1:
        raise ConfigError(f"data.crops_per_case must be >= 1, got {cfg.crops_per_case}")
    patch = tuple(int(v) for v in cfg.patch_size)
    aug = augmentation(cfg)
    t: list[Any] = _pre(cfg)
    if cfg.mirror_pet:  # before any crop: the midline is the whole body's
        t.append(MirroredPETd(body_threshold(cfg)))
    if cfg.body_coords:  # the same: the body's centre
        t.append(BodyCoordinatesd(body_threshold(cfg), cfg.body_coords_unit_mm))
    if aug.crop_to_body:
        t.append(
            CropForegroundd(
                keys=KEYS,
                source_key="image",
                select_fn=BodyMask(body_threshold(cfg)),
                channel_indices=0,
                margin=BODY_MARGIN,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
            )
        )
    t += [
        SpatialPadd(keys=KEYS, spatial_size=patch, mode="constant", value=0),
        CropCentresd(hot_threshold(cfg), cfg.pos_balance),
        *([JitterPositiveCentresd(patch, cfg.pos_jitter)] if cfg.pos_jitter > 0 else []),
        _QuietPosNegCrop(
            keys=KEYS,
            label_key="label",
            spatial_size=patch,
            pos=float(cfg.pos_fraction),
            neg=1.0 - float(cfg.pos_fraction),
            num_samples=int(cfg.crops_per_case),
            fg_indices_key="fg_indices",
            bg_indices_key="bg_indices",
        ),
    ]
    if aug.rotate_prob > 0 and aug.rotate_range_deg > 0:
        t.append(RandAxialRotated(KEYS, aug.rotate_prob, aug.rotate_range_deg, modes=("bilinear", "nearest")))
    if aug.flip_prob > 0:
        t += [RandFlipd(keys=KEYS, prob=aug.flip_prob, spatial_axis=a) for a in FLIP_AXES]
    if aug.intensity_jitter > 0:
        j = float(aug.intensity_jitter)
        t += [
            RandScaleIntensityd(keys="image", factors=j, prob=0.5, channel_wise=True),
            RandShiftIntensityd(keys="image", offsets=j / 2, prob=0.5, channel_wise=True),
        ]
    t += _post()
    return SingleThreadCompose(t)


def model_input(pc: PreprocessedCase, cfg: DataConfig | None = None) -> torch.Tensor:
    """The whole preprocessed volume as the network's input: float32 ``(2, X, Y, Z)`` [CT, PET], C-contiguous;
    ``(3, X, Y, Z)`` with the mirrored PET when ``cfg.mirror_pet``; the channels of
    :meth:`~h2aseg.config.DataConfig.input_layout` in general (``cfg.body_coords``: three more).

    Validation (``training.loop.validate``), prediction (``inference.Predictor``) and the feature analysis
    build their input here, so what a validation Dice measures is what ``h2aseg predict`` runs.
    """
    image = torch.from_numpy(np.ascontiguousarray(pc.image, dtype=np.float32))
    if cfg is None:
        return image
    if cfg.mirror_pet:
        image = with_mirrored_pet(image, body_threshold(cfg))
    if cfg.body_coords:
        image = with_body_coordinates(
            image, body_threshold(cfg), pc.geometry.spacing, cfg.body_coords_unit_mm
        )
    return image
