"""Figures like the paper's Fig. 3: CT, PET and the segmentation comparison, with correct aspect ratio.

Arrays are indexed ``[x, y, z]`` as :class:`h2aseg.data.io.Volume` holds them and assumed to be in RAS+
orientation (+x = Right, +y = Anterior, +z = Superior, nibabel's convention); pass
``affine`` to :func:`render_overlay` to reorient any input to RAS+ first. Images are shown in the
radiological convention (patient's right on the viewer's left). Views:

* ``"coronal"``: a slice at fixed y (or a projection along y); x horizontal, z vertical, head up.
* ``"axial"``: a slice at fixed z; x horizontal, y vertical, anterior up.

Comparison colours (:func:`comparison_rgba`): true positive red, false negative (missed) blue, false
positive yellow, true negative transparent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from h2aseg.files import atomic_write

View = Literal["coronal", "axial"]
_AXIS = {"coronal": 1, "axial": 2}

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
    axis = _AXIS[_check_view(view)]
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
        fig = Figure(figsize=_figsize(w_mm, h_mm, 4.0), dpi=100)
        ax = fig.add_subplot()
        _show(ax, proj, spacing, "coronal", cmap="gray_r", vmin=0.0, vmax=vmax or _robust_max(proj))
        ax.set_title(title or "PET coronal MIP")
        _save(fig, out_png)
    return proj


def _check_view(view: str) -> View:
    if view not in _AXIS:
        raise ValueError(f"unknown view {view!r} (coronal, axial)")
    return view  # type: ignore[return-value]


def _robust_max(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(np.percentile(finite, 99.9)) if finite.size and np.percentile(finite, 99.9) > 0 else 1.0


def _plane(vol: np.ndarray, view: View, index: int) -> np.ndarray:
    return np.take(vol, index, axis=_AXIS[view])


def _display(plane: np.ndarray) -> np.ndarray:
    """``plane[h, v]`` -> image: rows = v reversed (superior/anterior on top), columns = h reversed (patient's
    right on the viewer's left, the radiological convention)."""
    return np.swapaxes(plane, 0, 1)[::-1, ::-1]


def _aspect(spacing: Sequence[float], view: View) -> float:
    horiz, vert = (0, 2) if view == "coronal" else (0, 1)
    return float(spacing[vert]) / float(spacing[horiz])


def _show(ax, plane: np.ndarray, spacing: Sequence[float], view: View, **kw) -> None:  # type: ignore[no-untyped-def]
    ax.imshow(_display(plane), aspect=_aspect(spacing, view), interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def _figsize(w_mm: float, h_mm: float, height_in: float) -> tuple[float, float]:
    return (max(height_in * w_mm / max(h_mm, 1e-6), 1.5), height_in)


def _save(fig, out_png: str | Path) -> Path:  # type: ignore[no-untyped-def]
    return atomic_write(out_png, lambda t: fig.savefig(t, format="png", bbox_inches="tight"), suffix=".png")


def default_slice(gt: np.ndarray | None, pred: np.ndarray | None, view: View,
                  fallback: np.ndarray | None = None) -> int:
    """Index along the view axis with the most GT foreground (middle one among ties), else prediction,
    else the slice of ``fallback``'s maximum, else the middle slice."""
    axis = _AXIS[view]
    for m in (gt, pred):
        if m is not None and np.any(m):
            other = tuple(a for a in range(3) if a != axis)
            counts = np.count_nonzero(np.asarray(m) > 0, axis=other)
            best = np.flatnonzero(counts == counts.max())
            return int(best[len(best) // 2])  # the middle one among ties
    shape_src = next(a for a in (gt, pred, fallback) if a is not None)
    if fallback is not None and np.isfinite(fallback).any():
        return int(np.unravel_index(np.nanargmax(fallback), fallback.shape)[axis])
    return shape_src.shape[axis] // 2


def _to_ras(arrays: list[np.ndarray | None], affine: np.ndarray) -> tuple[list[np.ndarray | None], tuple]:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = [None if a is None else nib.orientations.apply_orientation(np.asarray(a), ornt) for a in arrays]
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    # ornt[i, 0] is the output axis of input axis i: output axis j has the spacing of that input axis
    spacing = tuple(float(zooms[list(ornt[:, 0].astype(int)).index(j)]) for j in range(3))
    return out, spacing


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
    from matplotlib.patches import Patch

    view = _check_view(axis)
    pet = np.asarray(pet, dtype=np.float32)
    if pet.ndim != 3:
        raise ValueError(f"pet must be 3D, got shape {pet.shape}")
    arrays: list[np.ndarray | None] = [ct, pet, pred, gt]
    for name, a in zip(("ct", "pred", "gt"), (ct, pred, gt), strict=True):
        if a is not None and np.shape(a) != pet.shape:
            raise ValueError(f"{name} shape {np.shape(a)} differs from pet shape {pet.shape}")
    if affine is not None:
        arrays, spacing = _to_ras(arrays, affine)
    ct, pet, pred, gt = arrays  # type: ignore[assignment]
    assert pet is not None
    sp = tuple(float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
    p = np.zeros(pet.shape, bool) if pred is None else np.asarray(pred) > 0
    g = np.zeros(pet.shape, bool) if gt is None else np.asarray(gt) > 0
    idx = default_slice(gt, pred, view, fallback=pet) if slice_index is None else int(slice_index)
    if not 0 <= idx < pet.shape[_AXIS[view]]:
        raise ValueError(f"slice_index {idx} outside 0..{pet.shape[_AXIS[view]] - 1} for the {view} axis")

    pet_img = mip(pet, view) if pet_mode == "mip" else _plane(pet, view, idx)
    pet_vmax = pet_vmax or _robust_max(pet_img)
    base = _plane(np.asarray(ct, dtype=np.float32), view, idx) if ct is not None else _plane(pet, view, idx)
    base_kw = (dict(cmap="gray", vmin=ct_window[0], vmax=ct_window[1]) if ct is not None
               else dict(cmap="gray_r", vmin=0.0, vmax=pet_vmax))
    horiz, vert = (0, 2) if view == "coronal" else (0, 1)
    w_mm, h_mm = pet.shape[horiz] * sp[horiz], pet.shape[vert] * sp[vert]
    panel_w, _ = _figsize(w_mm, h_mm, height_in)
    fig = Figure(figsize=(4 * max(panel_w, 2.2), height_in + 1.0), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 4)
    where = f"{view} slice {idx}"
    _show(axes[0], base, sp, view, **base_kw)
    axes[0].set_title(f"CT\n{where}" if ct is not None else f"PET\n{where}", fontsize=9)
    _show(axes[1], pet_img, sp, view, cmap="gray_r", vmin=0.0, vmax=pet_vmax)
    axes[1].set_title(f"PET\n{view} MIP" if pet_mode == "mip" else f"PET\n{where}", fontsize=9)
    _show(axes[2], base, sp, view, **base_kw)
    axes[2].imshow(_display(comparison_rgba(_plane(p, view, idx), _plane(g, view, idx), alpha=200)),
                   aspect=_aspect(sp, view), interpolation="nearest")
    axes[2].set_title(f"segmentation\n{where}", fontsize=9)
    _show(axes[3], pet_img if pet_mode == "mip" else mip(pet, view), sp, view, cmap="gray_r", vmin=0.0,
          vmax=pet_vmax)
    axes[3].imshow(_display(comparison_rgba(mip(p, view), mip(g, view), alpha=200)),
                   aspect=_aspect(sp, view), interpolation="nearest")
    axes[3].set_title(f"segmentation\n{view} projection", fontsize=9)
    legend = ((TP_COLOUR, "true positive"), (FN_COLOUR, "missed (FN)"), (FP_COLOUR, "false positive"))
    fig.legend(handles=[Patch(color=np.array(c) / 255, label=lab) for c, lab in legend],
               loc="outside lower center", ncol=3, frameon=False, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)
