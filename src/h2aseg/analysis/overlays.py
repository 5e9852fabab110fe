"""Figures like the paper's Fig. 3: CT, PET and the segmentation comparison, with correct aspect ratio.

Arrays are indexed ``[x, y, z]`` as :class:`h2aseg.data.io.Volume` holds them and assumed to be in RAS+
orientation (+x = Right, +y = Anterior, +z = Superior, nibabel's convention); pass
``affine`` to :func:`render_overlay` to reorient any input to RAS+ first. Images are shown in the
radiological convention (patient's right on the viewer's left); views, slices and the display orientation
are :mod:`h2aseg.analysis.plotting`'s.

Comparison colours (:func:`comparison_rgba`): true positive red, false negative (missed) blue, false
positive yellow, true negative transparent.

Fig. 3 itself (several methods side by side, a row per case): :func:`render_comparison` draws
:class:`ComparisonCase` rows; :func:`method_comparison` reads them from a dataset and prediction folders
(``h2aseg analyze overlays``, and ``fig3.png`` of ``h2aseg experiment``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from h2aseg.analysis.plotting import (
    VIEW_AXIS,
    View,
    check_view,
    default_slice,
    display_aspect,
    figure_size,
    robust_max,
    save_png,
    show_plane,
    take_plane,
    to_display,
    to_ras,
)
from h2aseg.errors import H2ASegError

TP_COLOUR = (255, 0, 0)  # red
FN_COLOUR = (0, 0, 255)  # blue
FP_COLOUR = (255, 255, 0)  # yellow


def comparison_rgba(pred: np.ndarray, gt: np.ndarray, alpha: int = 255) -> np.ndarray:
    """RGBA uint8 image (``pred.shape + (4,)``): TP red, FN blue, FP yellow, TN fully transparent."""
    p, g = np.asarray(pred) > 0, np.asarray(gt) > 0
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
    out = np.zeros((*p.shape, 4), dtype=np.uint8)
    for sel, colour in ((p & g, TP_COLOUR), (~p & g, FN_COLOUR), (p & ~g, FP_COLOUR)):
        out[sel] = (*colour, alpha)
    return out


def mip(volume: np.ndarray, view: View = "coronal") -> np.ndarray:
    """Maximum-intensity projection along the view's axis (coronal: along y, anterior-posterior)."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    axis = VIEW_AXIS[check_view(view)]
    if vol.dtype.kind == "f" and np.isnan(vol).any():
        return np.nanmax(vol, axis=axis)
    return vol.max(axis=axis)


def coronal_pet_mip(
    suv: np.ndarray,
    out_png: str | Path | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    vmax: float | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Coronal MIP of a PET volume (the nuclear-medicine overview); writes an inverted-grey PNG if asked.

    Returns the 2D projection (shape ``(X, Z)``). ``vmax`` defaults to the 99.9th percentile of the MIP.
    """
    proj = mip(suv, "coronal")
    if out_png is not None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        h_mm, w_mm = proj.shape[1] * spacing[2], proj.shape[0] * spacing[0]
        fig = Figure(figsize=figure_size(w_mm, h_mm, 4.0), dpi=100)
        ax = fig.add_subplot()
        show_plane(ax, proj, spacing, "coronal", cmap="gray_r", vmin=0.0, vmax=vmax or robust_max(proj))
        ax.set_title(title or "PET coronal MIP")
        save_png(fig, out_png)
    return proj


def _finish(fig, title: str | None, out_png: str | Path) -> Path:  # type: ignore[no-untyped-def]
    """The TP/FN/FP legend under the panels, the title, and the atomic save."""
    from matplotlib.patches import Patch

    legend = ((TP_COLOUR, "true positive"), (FN_COLOUR, "missed (FN)"), (FP_COLOUR, "false positive"))
    fig.legend(
        handles=[Patch(color=np.array(c) / 255, label=lab) for c, lab in legend],
        loc="outside lower center",
        ncol=3,
        frameon=False,
        fontsize=9,
    )
    if title:
        fig.suptitle(title)
    return save_png(fig, out_png)


def render_overlay(
    ct: np.ndarray | None,
    pet: np.ndarray,
    pred: np.ndarray | None,
    gt: np.ndarray | None,
    out_png: str | Path,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    slice_index: int | None = None,
    axis: View = "coronal",
    pet_mode: Literal["mip", "slice"] = "mip",
    ct_window: tuple[float, float] = (-160.0, 240.0),
    pet_vmax: float | None = None,
    title: str | None = None,
    height_in: float = 4.0,
    dpi: int = 100,
) -> Path:
    """Write a Fig.-3-like PNG: CT slice | PET (inverted grey MIP or slice) | comparison on CT | on PET MIP.

    Volumes are ``[x, y, z]`` on one grid (``ct`` may be None: the comparison is drawn on the PET slice).
    ``spacing`` (mm per axis) sets the aspect ratio; with ``affine`` the inputs are first reoriented to
    RAS and the spacing is taken from it. ``slice_index`` defaults to the slice (along ``axis``) with the most
    GT foreground, else prediction, else the PET maximum. Colours: :func:`comparison_rgba`. The file is
    written atomically; returns its path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    view = check_view(axis)
    pet = np.asarray(pet, dtype=np.float32)
    if pet.ndim != 3:
        raise ValueError(f"pet must be 3D, got shape {pet.shape}")
    arrays: list[np.ndarray | None] = [ct, pet, pred, gt]
    for name, a in zip(("ct", "pred", "gt"), (ct, pred, gt), strict=True):
        if a is not None and np.shape(a) != pet.shape:
            raise ValueError(f"{name} shape {np.shape(a)} differs from pet shape {pet.shape}")
    if affine is not None:
        arrays, spacing = to_ras(arrays, affine)
    ct, pet, pred, gt = arrays  # type: ignore[assignment]
    assert pet is not None
    sp = tuple(float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
    p = np.zeros(pet.shape, bool) if pred is None else np.asarray(pred) > 0
    g = np.zeros(pet.shape, bool) if gt is None else np.asarray(gt) > 0
    idx = default_slice(gt, pred, view, fallback=pet) if slice_index is None else int(slice_index)
    if not 0 <= idx < pet.shape[VIEW_AXIS[view]]:
        raise ValueError(f"slice_index {idx} outside 0..{pet.shape[VIEW_AXIS[view]] - 1} for the {view} axis")

    pet_img = mip(pet, view) if pet_mode == "mip" else take_plane(pet, view, idx)
    pet_vmax = pet_vmax or robust_max(pet_img)
    base = (
        take_plane(np.asarray(ct, dtype=np.float32), view, idx)
        if ct is not None
        else take_plane(pet, view, idx)
    )
    base_kw = (
        dict(cmap="gray", vmin=ct_window[0], vmax=ct_window[1])
        if ct is not None
        else dict(cmap="gray_r", vmin=0.0, vmax=pet_vmax)
    )
    horiz, vert = (0, 2) if view == "coronal" else (0, 1)
    w_mm, h_mm = pet.shape[horiz] * sp[horiz], pet.shape[vert] * sp[vert]
    panel_w, _ = figure_size(w_mm, h_mm, height_in)
    fig = Figure(figsize=(4 * max(panel_w, 2.2), height_in + 1.0), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 4)
    where = f"{view} slice {idx}"
    show_plane(axes[0], base, sp, view, **base_kw)
    axes[0].set_title(f"CT\n{where}" if ct is not None else f"PET\n{where}", fontsize=9)
    show_plane(axes[1], pet_img, sp, view, cmap="gray_r", vmin=0.0, vmax=pet_vmax)
    axes[1].set_title(f"PET\n{view} MIP" if pet_mode == "mip" else f"PET\n{where}", fontsize=9)
    show_plane(axes[2], base, sp, view, **base_kw)
    axes[2].imshow(
        to_display(comparison_rgba(take_plane(p, view, idx), take_plane(g, view, idx), alpha=200)),
        aspect=display_aspect(sp, view),
        interpolation="nearest",
    )
    axes[2].set_title(f"segmentation\n{where}", fontsize=9)
    show_plane(
        axes[3],
        pet_img if pet_mode == "mip" else mip(pet, view),
        sp,
        view,
        cmap="gray_r",
        vmin=0.0,
        vmax=pet_vmax,
    )
    axes[3].imshow(
        to_display(comparison_rgba(mip(p, view), mip(g, view), alpha=200)),
        aspect=display_aspect(sp, view),
        interpolation="nearest",
    )
    axes[3].set_title(f"segmentation\n{view} projection", fontsize=9)
    return _finish(fig, title, out_png)


# ------------------------------------------------------------------------------------------- Fig. 3
@dataclass
class ComparisonCase:
    """One row of Fig. 3: a case's PET (SUV), CT (HU), ground truth and each method's mask, one RAS+ grid
    (a method's mask may be None: not predicted)."""

    case_id: str
    pet: np.ndarray
    ct: np.ndarray | None = None
    gt: np.ndarray | None = None
    preds: dict[str, np.ndarray | None] = field(default_factory=dict)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def render_comparison(
    cases: Sequence[ComparisonCase],
    methods: Sequence[str],
    out_png: str | Path,
    *,
    axis: View = "coronal",
    base: Literal["ct", "pet"] = "ct",
    ct_window: tuple[float, float] = (-160.0, 240.0),
    title: str | None = None,
    height_in: float = 2.6,
    dpi: int = 100,
) -> Path:
    """Fig. 3: a row per case (the slice with the most ground truth), columns PET | CT | ground truth |
    one per method, each mask in :func:`comparison_rgba`'s colours over the CT (``base="pet"``: the PET)
    slice. Written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    view = check_view(axis)
    if base not in ("ct", "pet"):
        raise H2ASegError(f"unknown base image {base!r} (ct, pet)")
    if not cases:
        raise ValueError("no cases to draw")
    horiz, vert = (0, 2) if view == "coronal" else (0, 1)
    widths = [
        figure_size(c.pet.shape[horiz] * c.spacing[horiz], c.pet.shape[vert] * c.spacing[vert], height_in)[0]
        for c in cases
    ]
    cols = 3 + len(methods)
    fig = Figure(
        figsize=(cols * min(max(widths), 3 * height_in), len(cases) * height_in + 1.0),
        dpi=dpi,
        layout="constrained",
    )
    axes = fig.subplots(len(cases), cols, squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        _comparison_row(row, case, methods, view, base, ct_window)
    return _finish(fig, title, out_png)


def _comparison_row(
    axes: Any,
    case: ComparisonCase,
    methods: Sequence[str],
    view: View,
    base: str,
    ct_window: tuple[float, float],
) -> None:
    pet = np.asarray(case.pet, dtype=np.float32)
    gt = np.zeros(pet.shape, bool) if case.gt is None else np.asarray(case.gt) > 0
    idx = default_slice(case.gt, None, view, fallback=pet)
    sp = case.spacing
    pet_plane = take_plane(pet, view, idx)
    pet_kw = dict(cmap="gray_r", vmin=0.0, vmax=robust_max(pet_plane))
    ct_plane = None if case.ct is None else take_plane(np.asarray(case.ct, dtype=np.float32), view, idx)
    ct_kw = dict(cmap="gray", vmin=ct_window[0], vmax=ct_window[1])
    under, under_kw = (pet_plane, pet_kw) if base == "pet" or ct_plane is None else (ct_plane, ct_kw)
    show_plane(axes[0], pet_plane, sp, view, **pet_kw)
    axes[0].set_title("PET", fontsize=9)
    name = "\n".join(case.case_id[i : i + 24] for i in range(0, len(case.case_id), 24))
    axes[0].set_ylabel(f"{name}\n{view} slice {idx}", fontsize=8)
    if ct_plane is not None:
        show_plane(axes[1], ct_plane, sp, view, **ct_kw)
    else:
        _blank(axes[1], "no CT")
    axes[1].set_title("CT", fontsize=9)
    g = take_plane(gt, view, idx)
    panels: list[tuple[str, np.ndarray | None]] = [("ground truth", g)]
    panels += [
        (m, None if case.preds.get(m) is None else take_plane(np.asarray(case.preds[m]) > 0, view, idx))
        for m in methods
    ]
    for ax, (name, mask) in zip(axes[2:], panels, strict=True):
        ax.set_title(name, fontsize=9)
        if mask is None:
            _blank(ax, "no prediction")
            continue
        show_plane(ax, under, sp, view, **under_kw)
        ax.imshow(
            to_display(comparison_rgba(mask, g, alpha=200)),
            aspect=display_aspect(sp, view),
            interpolation="nearest",
        )


def _blank(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def prediction_label(folder: str | Path) -> str:
    """A method's name from its prediction folder: the folder's name, or for ``.../<label>/seed<N>/
    predictions`` (an experiment run) ``<label>``."""
    p = Path(folder)
    if p.name == "predictions":
        p = p.parent.parent if p.parent.name.startswith("seed") or p.parent.name == "fixed" else p.parent
    return p.name


def comparison_case(case: Any, pred_dirs: Mapping[str, str | Path]) -> ComparisonCase:
    """Read a :class:`~h2aseg.data.layouts.Case` (CT, PET onto the CT grid, label) and each method's
    ``<dir>/<case_id>.nii.gz`` (in the CT's geometry, as ``h2aseg predict`` writes them), all reoriented to
    RAS+; a missing prediction file is None, one on another grid an :class:`~h2aseg.errors.InputError`."""
    from h2aseg.config import DataConfig
    from h2aseg.data.geometry import reorient
    from h2aseg.data.io import ImageError, read_volume
    from h2aseg.data.preprocess import preprocess_images

    hu = (-1024.0, 3072.0)
    cfg = DataConfig(target_spacing=None, ct_window=hu, num_label_classes=255)
    pc = preprocess_images(case.ct, case.pet, cfg, label_path=case.label, case_id=case.case_id)
    geo = pc.geometry
    preds: dict[str, np.ndarray | None] = {}
    for name, folder in pred_dirs.items():
        path = Path(folder) / f"{case.case_id}.nii.gz"
        if not path.is_file():
            preds[name] = None
            continue
        vol = read_volume(path, dtype=None)
        if tuple(vol.shape) != tuple(geo.ct_shape):
            raise ImageError(
                f"{path}: shape {tuple(vol.shape)} differs from the CT's {tuple(geo.ct_shape)} "
                f"({case.ct}); predictions must be in the CT's geometry"
            )
        preds[name] = reorient(np.asarray(vol.array) > 0, vol.affine, geo.ornt)[0]
    ct = pc.image[0] * np.float32(hu[1] - hu[0]) + np.float32(hu[0])
    return ComparisonCase(case.case_id, pc.suv, ct, pc.label, preds, geo.spacing)


def lesion_volumes(cases: Sequence[Any]) -> dict[str, int]:
    """Ground-truth voxels per case (cases without a label file: 0)."""
    import nibabel as nib

    def voxels(path: Path | None) -> int:
        return 0 if path is None else int(np.count_nonzero(np.asanyarray(nib.load(str(path)).dataobj)))

    return {c.case_id: voxels(c.label) for c in cases}


def pick_cases(cases: Sequence[Any], n: int = 3, volumes: Mapping[str, float] | None = None) -> list[Any]:
    """Up to ``n`` cases with lesions, the largest ground truth first (ties: case id); ``volumes``
    (``{case_id: ground-truth size}``, e.g. an evaluation's ``mtv_gt_ml``) spares reading the labels."""
    if volumes is None:
        volumes = lesion_volumes(cases)
    vols = {c.case_id: volumes.get(c.case_id, 0.0) for c in cases}
    ranked = sorted((c for c in cases if vols[c.case_id] > 0), key=lambda c: (-vols[c.case_id], c.case_id))
    return ranked[:n]


def method_comparison(
    cases: Sequence[Any],
    pred_dirs: Mapping[str, str | Path],
    out_png: str | Path,
    *,
    axis: View = "coronal",
    base: Literal["ct", "pet"] = "ct",
    title: str | None = None,
) -> Path:
    """Fig. 3 for ``cases`` (a row each) and the methods of ``pred_dirs`` (``{name: prediction folder}``,
    a column each, in that order)."""
    rows = [comparison_case(c, pred_dirs) for c in cases]
    return render_comparison(rows, list(pred_dirs), out_png, axis=axis, base=base, title=title)
