"""One synthetic PET/CT study: grids and positioning, anatomy, lesions, CT and PET, ground-truth metadata."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from h2aseg.synth.anatomy import Anatomy, Frame, build_anatomy, rasterise
from h2aseg.synth.ct import render_ct
from h2aseg.synth.decoys import check_decoys, decoy_stream, station_of, symmetric_decoys
from h2aseg.synth.errors import PhantomError
from h2aseg.synth.lesion_changes import Followup, evolve
from h2aseg.synth.lesions import (
    Lesion,
    body_masks,
    count_voxels,
    headneck_lesions,
    label_map,
    wholebody_lesions,
)
from h2aseg.synth.pet import render_pet, study_suvs
from h2aseg.synth.shapes import Grid
from h2aseg.synth.tissues import TISSUE_NAMES
from h2aseg.synth.variability import DEFAULT, TODAY, Draws, Variability, apply_uptake, draw_all

PHANTOM_VERSION = 1
KINDS = ("wholebody", "headneck")
DEFAULT_SHAPE = (128, 128, 160)
DEFAULT_SPACING = {"wholebody": (4.0, 4.0, 5.0), "headneck": (2.0, 2.0, 2.0)}
# per-study acquisition draws, in this order: PET resolution (FWHM mm), PET count factor, CT noise (HU), each
# replaced by the variability's scanner field of the same range (today's range: variability.TODAY)
_SCANNER = {"pet_fwhm_mm": "fwhm", "pet_count_factor": "count_k", "ct_noise_hu": "noise_hu"}
_PHYSICS = tuple((k, *TODAY[f"scanner.{name}"]) for name, k in _SCANNER.items())


def axis_aligned_affine(
    shape: Sequence[int], spacing: Sequence[float], center: Sequence[float]
) -> np.ndarray:
    """LPS-ordered voxels (as from DICOM): i -> patient's left (-x in RAS), j -> posterior, k -> superior."""
    a = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])
    a[:3, 3] = np.asarray(center, dtype=np.float64) - a[:3, :3] @ (
        (np.asarray(shape, dtype=np.float64) - 1) / 2
    )
    return a


def check_shape_spacing(
    shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Validated (shape, spacing); raises :class:`PhantomError` naming the bad value."""
    if len(shape) != 3 or any(int(v) < 8 for v in shape):
        raise PhantomError(f"shape must be three sizes >= 8 voxels, got {tuple(shape)}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise PhantomError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), sp


@dataclass
class _Study:
    """Per-study draws shared by the steps of :func:`synth_case`."""

    kind: str
    rng: np.random.Generator  # the study (lesions, physiology, noise, positioning)
    sp: np.ndarray  # CT spacing
    fov: np.ndarray  # CT field of view (mm)
    center: np.ndarray  # CT grid centre (world mm)
    frame: Frame


def _placement(kind: str, rng: np.random.Generator, shp: tuple[int, int, int], sp: np.ndarray) -> _Study:
    """Scale the canonical body to the field of view and position the patient (a random shift)."""
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
    frame = Frame(sx=float(sx), sz=float(sz), z_vertex=float(z_vertex))
    return _Study(kind, rng, sp, fov, center, frame)


def _wholebody_labels(
    st: _Study,
    anat: Anatomy,
    grid: Grid,
    tissue: np.ndarray,
    lesion_free: bool | None,
    n_lesions: int | None,
    one_side: bool = False,
) -> tuple[np.ndarray, list[Lesion]]:
    """Whole-body lesions and labels; a planned lesion study keeps at least one lesion inside the body
    (``one_side``: no two nodes at mirrored stations, see :func:`~h2aseg.synth.lesions.wholebody_lesions`)."""
    rng = st.rng
    if lesion_free is None:
        lesion_free = bool(rng.random() < 0.5)
    n = (
        0
        if lesion_free
        else (int(n_lesions) if n_lesions is not None else int(rng.choice([1, 2, 2, 3, 3, 4, 5, 6, 8])))
    )
    for _ in range(10):
        lesions = wholebody_lesions(rng, anat, n, float(st.sp.min()), one_side=one_side)
        label, lesions = label_map(grid, tissue, lesions)
        if lesions or n == 0:
            break
    return label, lesions


def _headneck_pet_grid(st: _Study, pet_spacing: Sequence[float] | None) -> Grid:
    """A coarser (default 2x), larger PET grid with a different origin, as in HECKTOR."""
    psp = 2.0 * st.sp if pet_spacing is None else np.asarray(pet_spacing, dtype=np.float64)
    check_shape_spacing((8, 8, 8), psp)
    pshape = tuple(math.ceil(v) + 1 for v in st.fov * np.array([1.2, 1.2, 1.05]) / psp)
    pcenter = st.center + st.rng.uniform(-0.5, 0.5, 3) * psp + np.array([0.0, 0.0, 0.25 * psp[2]])
    return Grid(pshape, axis_aligned_affine(pshape, psp, pcenter))


def _meta(
    st: _Study,
    seeds: tuple[int, int],
    pet_grid: Grid,
    physics: dict[str, float],
    suvs: dict[str, float],
    lesion_meta: list[dict[str, Any]],
    anat: Anatomy,
    draws: Draws | None,
) -> dict[str, Any]:
    """The study's ground truth, as written to ``phantom.json`` (``variability``: only when drawn)."""
    meta = {
        "kind": st.kind,
        "seed": seeds[0],
        "patient_seed": seeds[1],
        "phantom_version": PHANTOM_VERSION,
        "ct_spacing": [float(v) for v in st.sp],
        "pet_spacing": [float(v) for v in pet_grid.spacing],
        "scale_xy": round(st.frame.sx, 4),
        "scale_z": round(st.frame.sz, 4),
        "pet_fwhm_mm": round(physics["fwhm"], 3),
        "pet_count_factor": round(physics["count_k"], 4),
        "ct_noise_hu": round(physics["noise_hu"], 2),
        "suv": {k: round(float(v), 3) for k, v in suvs.items()},
        "lesion_free": len(lesion_meta) == 0,
        "lesions": lesion_meta,
        "anatomy": {k: round(float(v), 3) for k, v in anat.params.items()},
        "tissues": list(TISSUE_NAMES),
    }
    if draws is not None:
        meta["variability"] = draws.record()
    return meta


def _physiology(
    rng: np.random.Generator, prng: np.random.Generator, draws: Draws | None
) -> tuple[dict[str, float], dict[str, float]]:
    """SUVs per tissue and scanner settings: today's draws (always made), then the variability's."""
    suvs = study_suvs(rng, prng)
    physics = {k: float(rng.uniform(a, b)) for k, a, b in _PHYSICS}
    if draws is None:
        return suvs, physics
    physics.update({_SCANNER[k]: v for k, v in draws.scanner.items()})
    return apply_uptake(suvs, draws.uptake), physics


def _decoys(
    pairs: tuple[int, int],
    seed: int,
    anat: Anatomy,
    grid: Grid,
    tissue: np.ndarray,
    lesions: list[Lesion],
    min_spacing: float,
) -> tuple[list[Lesion], list[dict[str, Any]]]:
    """The study's decoys that reach the body on ``grid`` and their records (pair index, voxels)."""
    if pairs == (0, 0):
        return [], []
    drawn = symmetric_decoys(decoy_stream(seed), anat, pairs, lesions, min_spacing)
    kept = [(d, int(m.sum())) for d, _, m in body_masks(grid, tissue, drawn) if m.any()]
    stations = sorted({station_of(d.site) for d in drawn})  # the pair index: the station's rank in the study
    return [d for d, _ in kept], [
        {**d.meta(), "pair": stations.index(station_of(d.site)), "voxels": n} for d, n in kept
    ]


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
    variability: Variability = DEFAULT,
    followup: Followup | None = None,
    symmetric_decoys: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """Synthesise one PET/CT study.

    ``kind``: ``wholebody`` (AutoPET-like: CT and PET on the same grid ``shape``/``spacing``, default
    4x4x5 mm) or ``headneck`` (HECKTOR-like: CT on ``shape``/``spacing``, default 2 mm; PET on a coarser,
    differently placed grid, ``pet_spacing`` default 2x the CT's). ``seed`` drives the study (lesions,
    physiological uptake, noise, positioning); ``patient_seed`` (default ``seed``) the anatomy, so studies of
    one patient share it. Whole body: ``lesion_free`` (default: a coin flip) and ``n_lesions`` (default 1-8).
    ``variability`` (:mod:`~h2aseg.synth.variability`): ranges of body, organs, uptake and scanner; the
    default keeps today's model (byte-identical output); the values drawn otherwise are in
    ``meta["variability"]``. ``followup`` (whole body only; :class:`~h2aseg.synth.lesion_changes.Followup`,
    from the baseline's result): a follow-up study of the baseline's patient (give its ``patient_seed``): its
    lesions change, new ones appear and the patient is repositioned, as recorded in ``meta``
    (``repositioning``, each lesion's ``change``, ``vanished_lesions``); ``n_lesions``/``lesion_free`` are
    then unused. ``symmetric_decoys`` (whole body, single studies): LO-HI pairs of unlabelled, node-like
    hot spots at mirrored stations, and no lesion takes both sides of a pair (:mod:`~h2aseg.synth.decoys`;
    recorded in ``meta["decoys"]``); ``(0, 0)``, the default, leaves the study as it was.

    Returns ``ct`` (int16 HU), ``ct_affine``, ``pet`` (float32 SUV), ``pet_affine``, ``label`` (uint8 on the
    CT grid; whole body 0/1, head-and-neck 1 = primary, 2 = nodes), ``label_affine``, ``tissue`` (uint8 tissue
    index on the CT grid, names in ``meta["tissues"]``), ``meta`` (lesions, SUVs, scales, PET settings) and
    ``lesions`` (the lesions of ``meta["lesions"]``, in order, as shapes in world mm).
    """
    if kind not in KINDS:
        raise PhantomError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    if followup is not None and kind != "wholebody":
        raise PhantomError(f"follow-up studies are whole-body only, not {kind!r}")
    symmetric_decoys = check_decoys(symmetric_decoys, kind, followup is not None)
    shp, sp = check_shape_spacing(shape, DEFAULT_SPACING[kind] if spacing is None else spacing)
    pseed = int(seed if patient_seed is None else patient_seed)
    if followup is not None and followup.patient_seed != pseed:
        raise PhantomError(
            f"a follow-up images its baseline's patient: patient_seed {pseed} is not the baseline's "
            f"{followup.patient_seed}"
        )
    rng = np.random.default_rng([int(seed), 1])
    prng = np.random.default_rng([pseed, 2])
    st = _placement(kind, rng, shp, sp)
    draws = None if variability.is_default else draw_all(variability, pseed, int(seed))
    if draws is not None and "height" in draws.body:
        st.frame = replace(st.frame, sz=st.frame.sz * draws.body["height"])
    ct_affine = axis_aligned_affine(shp, sp, st.center)
    ct_grid = Grid(shp, ct_affine)
    lo = ct_grid.origin + np.minimum(ct_grid.step * (np.asarray(shp) - 1), 0)
    hi = ct_grid.origin + np.maximum(ct_grid.step * (np.asarray(shp) - 1), 0)
    fill = float(rng.uniform(0.6, 1.3))
    anat = build_anatomy(prng, st.frame, bladder_fill=fill, fov=(lo, hi), draws=draws)
    evolved = None if followup is None else evolve(followup, int(seed), anat, float(sp.min()))
    if evolved is not None:
        anat = evolved.repositioning.move_anatomy(anat)
    tissue = rasterise(ct_grid, anat)
    suvs, physics = _physiology(rng, prng, draws)

    if evolved is not None:
        label, lesions = label_map(ct_grid, tissue, evolved.lesions)
        pet_grid, pet_tissue = ct_grid, tissue
    elif kind == "wholebody":
        one_side = symmetric_decoys != (0, 0)
        label, lesions = _wholebody_labels(st, anat, ct_grid, tissue, lesion_free, n_lesions, one_side)
        pet_grid, pet_tissue = ct_grid, tissue
    else:
        label, lesions = label_map(ct_grid, tissue, headneck_lesions(rng, anat, float(sp.min())))
        pet_grid = _headneck_pet_grid(st, pet_spacing)
        pet_tissue = rasterise(pet_grid, anat)

    decoys, decoy_meta = _decoys(symmetric_decoys, int(seed), anat, ct_grid, tissue, lesions, float(sp.min()))
    blur = 0.5 if kind == "wholebody" else 0.3
    hot = lesions + decoys
    ct = render_ct(rng, ct_grid, tissue, hot, physics["noise_hu"], blur)
    pet = render_pet(rng, pet_grid, pet_tissue, hot, suvs, physics["fwhm"], physics["count_k"])
    lesion_meta = [{**les.meta(), "voxels": int(count_voxels(ct_grid, les, label))} for les in lesions]
    meta = _meta(st, (int(seed), pseed), pet_grid, physics, suvs, lesion_meta, anat, draws)
    if decoys:
        meta["decoys"] = decoy_meta
    if evolved is not None:
        meta.update(evolved.meta(lesions, lesion_meta))
    return {
        "ct": ct,
        "ct_affine": ct_affine,
        "pet": pet,
        "pet_affine": pet_grid.affine.copy(),
        "label": label,
        "label_affine": ct_affine.copy(),
        "tissue": tissue,
        "meta": meta,
        "lesions": lesions,
    }
