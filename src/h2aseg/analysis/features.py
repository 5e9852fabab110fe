"""Fig. 4 of the paper: the level-2 PET and CT feature maps that TAMW weights most for foreground emphasis.

For a case, the model runs on one window of its training patch size (``infer.roi_size`` or
``data.patch_size``) centred on the largest ground-truth lesion (the PET maximum without one), on the
preprocessed grid. A forward hook on ``decoder.tamw2`` keeps what enters TAMW at depth 2: ``F_ct^2`` and
``F_pet^2`` (the MCSA outputs; the plain encoder block outputs ``E^2`` in a model without MCSA at level 2)
and, with ``TAMW.record``, that window's ``W_fore``. The ``top_k`` PET channels and the ``top_k`` CT channels
with the largest ``W_fore`` are drawn on a slice through the lesion (at half resolution, the level-2 grid),
beside the CT and PET of the same slice with the ground-truth contour. With two checkpoints (a TAMW-only
model and an MCSA + TAMW model, as in the paper) each gets a row. One PNG per case, written atomically.
No model code is changed: hooks only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from h2aseg.analysis.common import AnalysisError, LoadedModel, load_model
from h2aseg.analysis.plotting import (
    VIEW_AXIS,
    View,
    check_view,
    default_slice,
    robust_max,
    save_png,
    show_plane,
    take_plane,
    to_display,
)
from h2aseg.analysis.tamw_weights import TamwRecorder, modality_slices, tamw_modules, tamw_order
from h2aseg.hardware import autocast_context

FEATURE_DEPTH = 2
CT_DISPLAY_HU = (-160.0, 240.0)


@dataclass
class LevelTwoFeatures:
    """One model on one case's window: the images, the level-2 features and TAMW's depth-2 weights."""

    title: str
    case_id: str
    ct: np.ndarray  # normalised CT of the window (X, Y, Z), [0, 1] over data.ct_window
    ct_range: tuple[float, float]  # CT_DISPLAY_HU in those normalised units
    suv: np.ndarray
    gt: np.ndarray | None
    spacing: tuple[float, float, float]
    f_pet: np.ndarray  # (C, x, y, z) on the level-2 grid
    f_ct: np.ndarray
    w_pet: np.ndarray  # W_fore of the PET channels (C,)
    w_ct: np.ndarray


def lesion_centre(label: np.ndarray | None, suv: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of the largest 26-connected ground-truth lesion, else the PET maximum's voxel."""
    from scipy import ndimage

    if label is not None and np.any(label):
        comps, _ = ndimage.label(label > 0, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(comps.ravel())[1:]
        biggest = comps == (int(np.argmax(sizes)) + 1)
        return tuple(round(c) for c in ndimage.center_of_mass(biggest))  # type: ignore[return-value]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(suv)), suv.shape))  # type: ignore[return-value]


def crop_box(shape: Sequence[int], centre: Sequence[int], size: Sequence[int]) -> tuple[slice, slice, slice]:
    """A window of ``size`` (clipped to ``shape``) around ``centre``, moved inside the volume."""
    out = []
    for n, c, s in zip(shape, centre, size, strict=True):
        s = min(int(s), int(n))
        start = min(max(int(c) - s // 2, 0), int(n) - s)
        out.append(slice(start, start + s))
    return tuple(out)  # type: ignore[return-value]


def capture_level2(loaded: LoadedModel, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``F_ct^2, F_pet^2`` (each ``(C, x, y, z)``) and depth-2 ``W_fore`` for one window ``(C, X, Y, Z)`` (the
    network's input channels, :func:`~h2aseg.data.transforms.model_input`)."""
    tamw2 = tamw_modules(loaded.model, str(loaded.path))[FEATURE_DEPTH]
    kept: list[torch.Tensor] = []
    handle = tamw2.register_forward_hook(lambda _m, args, _out: kept.extend(a.detach() for a in args[:2]))
    device = loaded.predictor.device
    x = image[None].to(device)
    try:
        with TamwRecorder(loaded.model, str(loaded.path)) as rec, torch.no_grad():
            with autocast_context(loaded.predictor.cfg.infer.amp, device, "infer.amp"):
                loaded.model.eval()(x)
            calls = [c for c in rec.take() if c.depth == FEATURE_DEPTH]
    finally:
        handle.remove()
    f_ct, f_pet = (t[0].float().cpu().numpy() for t in kept[:2])
    return f_ct, f_pet, calls[0].w_fore[0].numpy()


def case_features(loaded: LoadedModel, case: Any, title: str) -> LevelTwoFeatures:
    """Preprocess ``case`` with the model's settings, crop the window around its lesion, capture."""
    from h2aseg.data.preprocess import preprocess_case
    from h2aseg.data.transforms import model_input

    data = loaded.predictor.cfg.data
    pc = preprocess_case(case, data)
    box = crop_box(pc.suv.shape, lesion_centre(pc.label, pc.suv), loaded.predictor.roi_size)
    image = pc.image[(slice(None), *box)]
    f_ct, f_pet, w = capture_level2(loaded, model_input(pc, data)[(slice(None), *box)].contiguous())
    sl = modality_slices(tamw_order(loaded.model, str(loaded.path)), f_ct.shape[0], w.shape[0])
    lo, hi = data.ct_window
    ct_range = tuple(float(np.clip((v - lo) / (hi - lo), 0.0, 1.0)) for v in CT_DISPLAY_HU)
    return LevelTwoFeatures(
        title,
        pc.case_id,
        image[0],
        ct_range,
        pc.suv[box],  # type: ignore[arg-type]
        None if pc.label is None else pc.label[box],
        pc.geometry.spacing,
        f_pet,
        f_ct,
        w[sl["pet"]],
        w[sl["ct"]],
    )


def top_channels(weights: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest weights, largest first (ties: lower index first)."""
    order = np.argsort(-np.asarray(weights), kind="stable")
    return [int(i) for i in order[:k]]


def _contour(ax, mask_plane: np.ndarray | None) -> None:  # type: ignore[no-untyped-def]
    if mask_plane is not None and np.any(mask_plane) and not np.all(mask_plane):
        ax.contour(to_display(mask_plane.astype(np.float32)), levels=[0.5], colors="lime", linewidths=0.8)


def _feature_range(plane: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(plane, (1.0, 99.0)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _draw_row(axes, row: LevelTwoFeatures, view: View, top_k: int, idx: int) -> None:  # type: ignore[no-untyped-def]
    axis = VIEW_AXIS[view]
    gt_plane = None if row.gt is None else take_plane(row.gt, view, idx) > 0
    half = tuple(2.0 * s for s in row.spacing)
    small_gt = None if gt_plane is None else gt_plane[::2, ::2]
    show_plane(
        axes[0],
        take_plane(row.ct, view, idx),
        row.spacing,
        view,
        cmap="gray",
        vmin=row.ct_range[0],
        vmax=row.ct_range[1],
    )
    axes[0].set_title(f"CT\n{view} slice {idx}", fontsize=8)
    pet = take_plane(row.suv, view, idx)
    show_plane(axes[1], pet, row.spacing, view, cmap="gray_r", vmin=0.0, vmax=robust_max(pet))
    axes[1].set_title("PET (SUV)", fontsize=8)
    for ax in axes[:2]:
        _contour(ax, gt_plane)
    axes[0].set_ylabel(row.title, fontsize=9)
    f_idx = min(idx // 2, row.f_pet.shape[axis + 1] - 1)
    panels = [("PET", row.f_pet, row.w_pet, c) for c in top_channels(row.w_pet, top_k)]
    panels += [("CT", row.f_ct, row.w_ct, c) for c in top_channels(row.w_ct, top_k)]
    for ax, (name, feats, weights, c) in zip(axes[2:], panels, strict=False):
        plane = take_plane(feats[c], view, f_idx)
        lo, hi = _feature_range(plane)
        show_plane(ax, plane, half, view, cmap="magma", vmin=lo, vmax=hi)
        if small_gt is not None and small_gt.shape == plane.shape:
            _contour(ax, small_gt)
        ax.set_title(f"F_{name.lower()}^2 #{c}\nW_fore={weights[c]:+.2f}", fontsize=8)


def render_feature_figure(
    rows: Sequence[LevelTwoFeatures],
    out_png: str | Path,
    *,
    top_k: int = 3,
    view: View = "axial",
    dpi: int = 100,
) -> Path:
    """One case, a row per model: CT | PET (ground-truth contour) | top-k PET features | top-k CT features."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    view = check_view(view)
    if not rows:
        raise AnalysisError("no model rows to draw")
    if top_k < 1:
        raise AnalysisError(f"top_k must be at least 1, got {top_k}")
    cols = 2 + 2 * min(top_k, min(r.w_pet.size for r in rows))
    fig = Figure(figsize=(1.9 * cols, 2.3 * len(rows) + 0.6), dpi=dpi)
    fig.subplots_adjust(wspace=0.08, hspace=0.35)
    axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
    for ax_row, row in zip(axes, rows, strict=True):
        idx = default_slice(row.gt, None, view, fallback=row.suv)
        _draw_row(ax_row, row, view, top_k, idx)
    title = f"{rows[0].case_id}: level-2 features TAMW weights most for foreground emphasis"
    fig.suptitle(title, fontsize=10)
    return save_png(fig, out_png)


def feature_figures(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    case_ids: Sequence[str],
    out_dir: str | Path,
    *,
    top_k: int = 3,
    view: View = "axial",
    on_case: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """``h2aseg analyze features``: ``fig4_<case>.png`` per case, a row per checkpoint (in the order
    given); the cases are found under ``data`` with the first model's layout settings."""
    from h2aseg.data.layouts import discover

    if not checkpoints:
        raise AnalysisError("no checkpoint given")
    models = [load_model(c, h2aseg_for="the TAMW analysis", check=tamw_modules) for c in checkpoints]
    cfg = models[0].predictor.cfg.data
    by_id = {c.case_id: c for c in discover(data, cfg.layout, swap_channels=cfg.swap_channels)}
    missing = [i for i in case_ids if i not in by_id]
    if missing:
        raise AnalysisError(f"{data}: no case(s) {', '.join(missing)} (found {len(by_id)} cases)")
    cases = [by_id[i] for i in case_ids]
    return draw_feature_figures(models, cases, out_dir, top_k=top_k, view=view, on_case=on_case)


def draw_feature_figures(
    models: Sequence[LoadedModel],
    cases: Sequence[Any],
    out_dir: str | Path,
    *,
    top_k: int = 3,
    view: View = "axial",
    on_case: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """``out_dir/fig4_<case>.png`` for each case, a row per model."""
    paths = []
    for case in cases:
        rows = [case_features(m, case, _row_title(m, models)) for m in models]
        out = Path(out_dir) / f"fig4_{case.case_id}.png"
        paths.append(render_feature_figure(rows, out, top_k=top_k, view=view))
        if on_case:
            on_case(case.case_id, "done")
    return paths


def _row_title(model: LoadedModel, models: Sequence[LoadedModel]) -> str:
    name = model.describe()
    if sum(m.describe() == name for m in models) > 1:
        name += f"\n{model.path.parent.parent.name}/{model.path.name}"
    return name
