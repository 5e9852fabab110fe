"""The plotting toolkit the analysis figures share: views of a volume, display orientation, atomic PNGs.

Arrays are indexed ``[x, y, z]`` as :class:`h2aseg.data.io.Volume` holds them and assumed to be in RAS+
orientation (+x = Right, +y = Anterior, +z = Superior, nibabel's convention; :func:`to_ras` reorients any
input). Planes are shown in the radiological convention (patient's right on the viewer's left). Views:

* ``"coronal"``: a slice at fixed y (or a projection along y); x horizontal, z vertical, head up.
* ``"axial"``: a slice at fixed z; x horizontal, y vertical, anterior up.

Nothing here imports matplotlib: the functions take the caller's figure and axes (drawn with the Agg
backend by :mod:`~h2aseg.analysis.overlays`, :mod:`~h2aseg.analysis.features`,
:mod:`~h2aseg.analysis.curves`, :mod:`~h2aseg.analysis.run_comparison` and
:mod:`~h2aseg.analysis.html_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from h2aseg.errors import H2ASegError
from h2aseg.files import atomic_write

View = Literal["coronal", "axial"]
#: The array axis a view looks along (the one a slice fixes).
VIEW_AXIS = {"coronal": 1, "axial": 2}


def check_view(view: str) -> View:
    """``view`` when it is a known view, else :class:`~h2aseg.errors.H2ASegError`."""
    if view not in VIEW_AXIS:
        raise H2ASegError(f"unknown view {view!r} (coronal, axial)")
    return view  # type: ignore[return-value]


def robust_max(a: np.ndarray) -> float:
    """The 99.9th percentile of the finite values (1.0 when there is none or it is not positive)."""
    finite = a[np.isfinite(a)]
    return float(np.percentile(finite, 99.9)) if finite.size and np.percentile(finite, 99.9) > 0 else 1.0


def take_plane(vol: np.ndarray, view: View, index: int) -> np.ndarray:
    """The slice ``index`` of ``vol`` along the view's axis (``plane[h, v]``)."""
    return np.take(vol, index, axis=VIEW_AXIS[view])


def to_display(plane: np.ndarray) -> np.ndarray:
    """``plane[h, v]`` -> image: rows = v reversed (superior/anterior on top), columns = h reversed (patient's
    right on the viewer's left, the radiological convention)."""
    return np.swapaxes(plane, 0, 1)[::-1, ::-1]


def display_aspect(spacing: Sequence[float], view: View) -> float:
    """The pixel aspect ratio (vertical / horizontal voxel size) of a plane of ``view``."""
    horiz, vert = (0, 2) if view == "coronal" else (0, 1)
    return float(spacing[vert]) / float(spacing[horiz])


def show_plane(ax: Any, plane: np.ndarray, spacing: Sequence[float], view: View, **kw: Any) -> None:
    """Draw ``plane`` on ``ax`` in display orientation with its true aspect ratio, without ticks
    (``kw``: ``imshow``'s, e.g. ``cmap``, ``vmin``, ``vmax``)."""
    ax.imshow(to_display(plane), aspect=display_aspect(spacing, view), interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def figure_size(w_mm: float, h_mm: float, height_in: float) -> tuple[float, float]:
    """A panel's size in inches for an image of ``w_mm`` x ``h_mm`` drawn ``height_in`` high (at least
    1.5 inches wide)."""
    return (max(height_in * w_mm / max(h_mm, 1e-6), 1.5), height_in)


def save_png(fig: Any, out_png: str | Path) -> Path:
    """Save a matplotlib figure as PNG, atomically (tight bounding box); returns the path."""
    return atomic_write(out_png, lambda t: fig.savefig(t, format="png", bbox_inches="tight"), suffix=".png")


def default_slice(
    gt: np.ndarray | None, pred: np.ndarray | None, view: View, fallback: np.ndarray | None = None
) -> int:
    """Index along the view axis with the most GT foreground (middle one among ties), else prediction,
    else the slice of ``fallback``'s maximum, else the middle slice."""
    axis = VIEW_AXIS[view]
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


def to_ras(
    arrays: list[np.ndarray | None], affine: np.ndarray
) -> tuple[list[np.ndarray | None], tuple[float, float, float]]:
    """``arrays`` (one grid, with ``affine``) reoriented to RAS+, and the voxel size (mm) of each RAS axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = [None if a is None else nib.orientations.apply_orientation(np.asarray(a), ornt) for a in arrays]
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    # ornt[i, 0] is the output axis of input axis i: output axis j has the spacing of that input axis
    s = [float(zooms[list(ornt[:, 0].astype(int)).index(j)]) for j in range(3)]
    return out, (s[0], s[1], s[2])
