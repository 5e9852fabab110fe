"""A static HTML report for people: one page per study and an index page per folder (``docs/report.md``).

A **study page** shows coronal and sagittal PET maximum-intensity projections (inverted grey, SUV window
:data:`DEFAULT_SUV_WINDOW`) with each lesion outlined in colour and numbered with its ``lesion_id``, the
patient summary, the lesion table (the rows of ``lesions.csv``) and the settings used. A lesion's outline is
the contour of the projection of that lesion alone, so overlapping lesions keep their own outlines. The
lesions are labelled by :func:`h2aseg.evaluation.quantify.label_lesions`, the labelling behind
``lesions.csv``, so the numbers on the images are the table's ids. The **index page** lists the studies
with their lesion count, MTV, TLG and SUVmax, and links to each page.

The pages open offline: images are PNGs embedded as base64 ``data:`` URIs, styles are inline, fonts are the
system's, and a Content-Security-Policy forbids every request that is not inline. All text is escaped
(:func:`html.escape`). One inline script sets ``data-images-loaded="true"`` on ``<body>`` once every image
has decoded (``"false"`` if one has not), which the browser test reads.

Images are drawn in RAS+ orientation whatever the file's axis order (:func:`h2aseg.analysis.plotting.to_ras`)
and in the radiological convention: coronal with the patient's right on the viewer's left, sagittal with
anterior on the left; head up in both.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import numpy as np
from scipy import ndimage

from h2aseg import __version__
from h2aseg.analysis.plotting import to_display, to_ras
from h2aseg.evaluation.quantify import (
    Lesion,
    Patient,
    Quantification,
    beside_paths,
    confidence_volumes,
    csv_cell,
    label_lesions,
    mask_on_suv_grid,
    quantify_volumes,
    write_quantification,
)
from h2aseg.files import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MipView = Literal["coronal", "sagittal"]
#: Projection axis of each view in RAS+ arrays (coronal: along y; sagittal: along x).
_PROJECTION_AXIS: dict[MipView, int] = {"coronal": 1, "sagittal": 0}
_CAPTION = {
    "coronal": "Coronal MIP, patient's right on the left",
    "sagittal": "Sagittal MIP, anterior on the left",
}
_CORNERS = {"coronal": ("R", "L"), "sagittal": ("A", "P")}  # (viewer's left, viewer's right)
DEFAULT_SUV_WINDOW = (0.0, 10.0)
#: Outline colours, lesion k gets ``LESION_COLOURS[(k - 1) % len]`` (dark enough on the light PET MIP).
LESION_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#e377c2", "#17becf", "#8c564b")
REPORT_DIR = "report"
INDEX_NAME = "index.html"
IMAGE_HEIGHT_PX = 600

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_STYLE = """
body { font-family: system-ui, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
       margin: 1.2em 2em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.2em 0 .4em; }
.meta { color: #666; font-size: .9em; margin: 0 0 1em; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .85em; color: #555; margin-top: .3em; }
img { max-width: 100%; height: auto; border: 1px solid #ccc; }
table { border-collapse: collapse; font-size: .9em; }
th, td { padding: .25em .6em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
table.kv th { text-align: left; font-weight: normal; color: #444; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .35em; border-radius: 2px; }
footer { margin-top: 2em; color: #777; font-size: .8em; }
"""
_LOADED_SCRIPT = """window.addEventListener("load", function () {
  var ok = Array.prototype.every.call(document.images, function (im) {
    return im.complete && im.naturalWidth > 0;
  });
  document.body.setAttribute("data-images-loaded", ok ? "true" : "false");
});"""


# ------------------------------------------------------------------------------------------ formatting
@dataclass(frozen=True)
class ViewerLink:
    """The study's page in ``h2aseg view`` (``base_url`` + the quoted case id) and the command that serves
    it; the report is a static file, so the page shows the command beside the link."""

    base_url: str
    command: str

    def href(self, case_id: str) -> str:
        return self.base_url + quote(case_id, safe="")


def _num(value: object, decimals: int | None = None) -> str:
    """A number for people: ``decimals`` fixed, else 3-4 significant digits; ``–`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not isinstance(value, float):
        return str(value)
    if decimals is not None:
        return f"{value:.{decimals}f}"
    mag = abs(value)
    if mag >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}" if mag >= 1 or mag == 0 else f"{value:.3g}"


_mm = partial(_num, decimals=1)


def _yes_no(value: object) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


#: The lesion table: (lesions.csv column, header, formatter).
_LESION_COLUMNS: tuple[tuple[str, str, Callable[[object], str]], ...] = (
    ("centroid_x_mm", "x (mm)", _mm),
    ("centroid_y_mm", "y (mm)", _mm),
    ("centroid_z_mm", "z (mm)", _mm),
    ("voxels", "voxels", _num),
    ("volume_ml", "volume (ml)", _num),
    ("suv_max", "SUVmax", _num),
    ("suv_mean", "SUVmean", _num),
    ("suv_peak", "SUVpeak", _num),
    ("tlg", "TLG (SUV·ml)", _num),
    ("prob_mean", "p mean", partial(_num, decimals=2)),
    ("prob_max", "p max", partial(_num, decimals=2)),
    ("tta_volume_cv", "TTA volume CV", partial(_num, decimals=2)),
)
#: The patient summary: (patient.csv column, label, formatter); GT rows only with a ground truth.
_PATIENT_ROWS: tuple[tuple[str, str, Callable[[object], str]], ...] = (
    ("lesion_count", "lesions", _num),
    ("mtv_ml", "MTV (ml)", _num),
    ("tlg", "TLG (SUV·ml)", _num),
    ("suv_max", "SUVmax", _num),
    ("suv_peak", "SUVpeak", _num),
    ("dmax_mm", "Dmax (mm)", _mm),
    ("gt_lesions", "ground-truth lesions", _num),
    ("gt_detected", "ground-truth lesions detected", _num),
    ("fp_lesions", "false-positive lesions", _num),
)
_GT_FIELDS = {"gt_lesions", "gt_detected", "fp_lesions"}
_INDEX_COLUMNS = (
    ("lesion_count", "lesions"),
    ("mtv_ml", "MTV (ml)"),
    ("tlg", "TLG (SUV·ml)"),
    ("suv_max", "SUVmax"),
)


def _td(column: str, value: object, text: str) -> str:
    """A numeric cell: the shown text, the CSV's exact value in ``data-value``."""
    return f'<td data-col="{column}" data-value="{_esc(csv_cell(value))}">{_esc(text)}</td>'


def by_confidence(lesions: Sequence[Lesion]) -> list[Lesion]:
    """Most confident first: ``prob_mean`` descending (lesions without one last), then ``lesion_id``."""
    return sorted(
        lesions,
        key=lambda les: (les.prob_mean is None, -(les.prob_mean or 0.0), les.lesion_id),
    )


def lesion_colour(lesion_id: int) -> str:
    return LESION_COLOURS[(lesion_id - 1) % len(LESION_COLOURS)]


# -------------------------------------------------------------------------------------------- images
def _projection_png(
    suv: np.ndarray,
    labels: np.ndarray,
    n: int,
    spacing: Sequence[float],
    view: MipView,
    suv_window: tuple[float, float],
    height_px: int,
) -> tuple[bytes, tuple[int, int]]:
    """PNG bytes (and width, height in pixels) of one MIP with the lesions outlined and numbered."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    axis = _PROJECTION_AXIS[view]
    proj = np.nanmax(suv, axis=axis) if np.isnan(suv).any() else suv.max(axis=axis)
    image = to_display(proj)  # rows: z reversed (head up); columns: the horizontal axis reversed
    h_axis = 1 - axis
    w_mm, h_mm = image.shape[1] * spacing[h_axis], image.shape[0] * spacing[2]
    width_px = max(round(height_px * w_mm / h_mm), 1)
    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(
        image,
        cmap="gray_r",
        vmin=suv_window[0],
        vmax=suv_window[1],
        aspect=spacing[2] / spacing[h_axis],
        interpolation="antialiased",
    )
    ax.set_axis_off()
    for lesion_id, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if box is not None:
            _outline(ax, labels, lesion_id, box, axis, image.shape)
    left, right = _CORNERS[view]
    for x, text, ha in ((0.015, left, "left"), (0.985, right, "right")):
        ax.text(x, 0.985, text, transform=ax.transAxes, ha=ha, va="top", fontsize=11, color="#333")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue(), (width_px, height_px)


def _outline(
    ax: Axes, labels: np.ndarray, lesion_id: int, box: tuple[slice, ...], axis: int, shape: tuple[int, int]
) -> None:
    """Contour of one lesion's own projection, in display coordinates, and its number above it."""
    h_axis = 1 - axis
    sub = np.pad((labels[box] == lesion_id).any(axis=axis), 1)  # (h, v), a zero border closes the contour
    hs = np.arange(box[h_axis].start - 1, box[h_axis].start - 1 + sub.shape[0])
    vs = np.arange(box[2].start - 1, box[2].start - 1 + sub.shape[1])
    cols, rows = shape[1] - 1 - hs, shape[0] - 1 - vs  # to_display reverses both axes
    colour = lesion_colour(lesion_id)
    ax.contour(
        cols[::-1],
        rows[::-1],
        sub.T[::-1, ::-1].astype(np.float32),
        levels=[0.5],
        colors=[colour],
        linewidths=1.6,
    )
    top_v = int(np.flatnonzero(sub.any(axis=0)).max())  # the highest slice of the lesion
    top_h = np.flatnonzero(sub[:, top_v])
    ax.annotate(
        str(lesion_id),
        xy=(float(cols[top_h].mean()), float(rows[top_v])),
        xytext=(4, 4),
        textcoords="offset points",
        color=colour,
        fontsize=10,
        fontweight="bold",
        annotation_clip=True,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
    )


def mip_images(
    suv: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    suv_window: tuple[float, float] = DEFAULT_SUV_WINDOW,
    height_px: int = IMAGE_HEIGHT_PX,
    lesions: tuple[np.ndarray, int] | None = None,
) -> dict[MipView, tuple[bytes, tuple[int, int]]]:
    """Coronal and sagittal MIPs of ``suv`` with the lesions of ``mask`` outlined: view -> (PNG, size).

    ``lesions``: ``label_lesions(mask)`` when the caller has it already.
    """
    suv = np.asarray(suv, dtype=np.float32)
    if suv.ndim != 3 or np.shape(mask) != suv.shape:
        raise ValueError(f"SUV and mask must be 3D arrays of one shape, got {suv.shape} and {np.shape(mask)}")
    labels, n = label_lesions(mask) if lesions is None else lesions
    (suv_ras, labels_ras), spacing = to_ras([suv, labels], np.asarray(affine, dtype=np.float64))
    assert suv_ras is not None and labels_ras is not None
    return {
        view: _projection_png(suv_ras, labels_ras, n, spacing, view, suv_window, height_px)
        for view in _PROJECTION_AXIS
    }


# ------------------------------------------------------------------------------------------------ pages
def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n"
        f"<footer>h2aseg {_esc(__version__)}. Lesions are the 18-connected components of the mask; the "
        "measures are defined in docs/quantify.md of the h2aseg source. A research tool, not a medical "
        f"device.</footer>\n<script>{_LOADED_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _kv_table(rows: Sequence[tuple[str, str]], table_id: str) -> str:
    body = "".join(
        f'<tr><th class="text">{_esc(k)}</th><td class="text">{_esc(v)}</td></tr>' for k, v in rows
    )
    return f'<table class="kv" id="{table_id}"><tbody>{body}</tbody></table>'


def _patient_table(patient: Patient, has_gt: bool) -> str:
    rows = []
    for field, label, fmt in _PATIENT_ROWS:
        if field in _GT_FIELDS and not has_gt:
            continue
        value = getattr(patient, field)
        rows.append(f'<tr><th class="text">{_esc(label)}</th>{_td(field, value, fmt(value))}</tr>')
    return f'<table class="kv" id="patient-summary"><tbody>{"".join(rows)}</tbody></table>'


def _lesion_table(q: Quantification) -> str:
    heads = ["lesion", *(h for _, h, _ in _LESION_COLUMNS), *(["detected"] if q.has_gt else [])]
    head = "".join(
        f'<th class="text">{_esc(h)}</th>' if i == 0 else f"<th>{_esc(h)}</th>" for i, h in enumerate(heads)
    )
    rows = []
    for les in by_confidence(q.lesions):
        swatch = f'<span class="swatch" style="background:{lesion_colour(les.lesion_id)}"></span>'
        cells = [
            f'<td class="text" data-col="lesion_id" data-value="{les.lesion_id}">{swatch}{les.lesion_id}</td>'
        ]
        cells += [_td(col, getattr(les, col), fmt(getattr(les, col))) for col, _, fmt in _LESION_COLUMNS]
        if q.has_gt:
            cells.append(_td("detected", les.detected, _yes_no(les.detected)))
        rows.append(f'<tr id="lesion-{les.lesion_id}">{"".join(cells)}</tr>')
    empty = "" if rows else f'<tr class="empty"><td class="text" colspan="{len(heads)}">no lesions</td></tr>'
    return (
        f'<table id="lesion-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}{empty}</tbody></table>"
    )


def _figure(view: MipView, png: bytes, size: tuple[int, int], suv_window: tuple[float, float]) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = f"{_CAPTION[view]}; SUV {suv_window[0]:g} (white) to {suv_window[1]:g} (black)"
    return (
        f'<figure id="{view}-mip" style="max-width:{size[0] + 2}px">'
        f'<img src="data:image/png;base64,{data}" width="{size[0]}" '
        f'height="{size[1]}" alt="{_esc(_CAPTION[view])} with the lesions outlined and numbered">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def study_page(
    suv: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    q: Quantification,
    settings: Mapping[str, object],
    *,
    index_href: str | None = None,
    viewer: ViewerLink | None = None,
    suv_window: tuple[float, float] = DEFAULT_SUV_WINDOW,
    height_px: int = IMAGE_HEIGHT_PX,
) -> str:
    """The HTML page of one study: MIPs, patient summary, lesion table (``q``'s rows), ``settings``.

    ``suv`` and ``mask`` are on one grid with ``affine`` (the arrays ``q`` was measured on); the lesions of
    ``mask`` must be ``q``'s lesions, else :class:`ValueError`. ``index_href`` adds a link to the index,
    ``viewer`` one to the study in ``h2aseg view`` (with the command that starts it).
    """
    lesions = _checked_lesions(mask, q)
    images = mip_images(suv, mask, affine, suv_window=suv_window, height_px=height_px, lesions=lesions)
    figures = "".join(_figure(view, png, size, suv_window) for view, (png, size) in images.items())
    back = f' · <a href="{_esc(index_href)}">all studies</a>' if index_href else ""
    if viewer is not None:
        back += (
            f' · <a id="viewer-link" href="{_esc(viewer.href(q.case_id))}">slices in the viewer</a>'
            f" (served by <code>{_esc(viewer.command)}</code>)"
        )
    body = (
        f"<header><h1>Lesion report: {_esc(q.case_id)}</h1>"
        f'<p class="meta">{len(q.lesions)} lesion(s){back}</p></header>\n'
        f'<div class="row">{figures}<section id="patient"><h2>Patient summary</h2>'
        f"{_patient_table(q.patient, q.has_gt)}</section></div>\n"
        f'<section id="lesions"><h2>Lesions</h2>{_lesion_table(q)}</section>\n'
        f"{_settings_section(settings)}"
    )
    return _page(f"h2aseg report: {q.case_id}", body)


def _settings_section(settings: Mapping[str, object]) -> str:
    rows = [(str(k), _setting(v)) for k, v in settings.items()]
    return f'<section id="settings"><h2>Settings</h2>{_kv_table(rows, "settings-table")}</section>'


def _setting(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return " × ".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)


def _checked_lesions(mask: np.ndarray, q: Quantification) -> tuple[np.ndarray, int]:
    """``label_lesions(mask)``, checked to be the lesions of ``q`` (count and voxels per id)."""
    labels, n = label_lesions(mask)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    if n != len(q.lesions) or any(int(counts[les.lesion_id - 1]) != les.voxels for les in q.lesions):
        raise ValueError(
            f"{q.case_id}: the mask's {n} lesion(s) are not the {len(q.lesions)} of its lesion table; "
            "give the mask the table was measured on"
        )
    return labels, n


def index_page(
    studies: Sequence[tuple[Quantification, str]],
    *,
    title: str = "h2aseg lesion reports",
    settings: Mapping[str, object] | None = None,
) -> str:
    """The index: one row per (quantification, page link) with lesion count, MTV, TLG, SUVmax."""
    cols = _INDEX_COLUMNS
    head = '<th class="text">study</th>' + "".join(f"<th>{_esc(h)}</th>" for _, h in cols)
    rows = []
    for q, href in studies:
        link = f'<td class="text"><a href="{_esc(href)}">{_esc(q.case_id)}</a></td>'
        cells = "".join(_td(c, getattr(q.patient, c), _num(getattr(q.patient, c))) for c, _ in cols)
        rows.append(f"<tr>{link}{cells}</tr>")
    count = f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}"
    body = (
        f'<header><h1>{_esc(title)}</h1><p class="meta">{count}</p></header>\n'
        f'<table id="study-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    if settings:
        body += f"\n{_settings_section(settings)}"
    return _page(title, body)


# ------------------------------------------------------------------------------------------------ files
def page_href(path: str | Path) -> str:
    """A relative link to a page in the same folder (the name, percent-encoded)."""
    return quote(Path(path).name)


def report_dir(mask_path: str | Path) -> Path:
    """Where ``predict --report`` writes: ``report/`` in the mask's folder."""
    return Path(mask_path).parent / REPORT_DIR


def write_study_report(
    path: str | Path,
    suv: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    q: Quantification,
    settings: Mapping[str, object],
    **kwargs: object,
) -> Path:
    """:func:`study_page` written atomically to ``path``."""
    return atomic_write_text(path, study_page(suv, mask, affine, q, settings, **kwargs))


def write_index(path: str | Path, studies: Sequence[tuple[Quantification, str]], **kwargs: object) -> Path:
    """:func:`index_page` written atomically to ``path``."""
    return atomic_write_text(path, index_page(studies, **kwargs))


def report_prediction(
    mask_path: str | Path,
    suv_path: str | Path,
    settings: Mapping[str, object],
    *,
    case_id: str | None = None,
    index_href: str | None = None,
    viewer: ViewerLink | None = None,
) -> tuple[Quantification, Path]:
    """``predict --report`` for one written mask: what ``--quantify`` writes, plus the study page.

    The mask is read, mapped onto the SUV's grid when it is on another one
    (:func:`~h2aseg.evaluation.quantify.mask_on_suv_grid`) and measured as ``--quantify`` measures it; the
    lesion and patient CSVs go beside the mask and the page to ``report/<case>.html`` in the mask's folder.
    The probability map and flip masks written beside the mask, when there, add the confidence columns
    (:func:`~h2aseg.evaluation.quantify.confidence_volumes`).
    """
    from h2aseg.data.io import read_volume, strip_image_suffix

    case = case_id or strip_image_suffix(Path(mask_path).name)
    suv, written = read_volume(suv_path, dtype=None), read_volume(mask_path, dtype=None)
    prob, bits = confidence_volumes(written, suv)
    mask = mask_on_suv_grid(written, suv)
    q = quantify_volumes(suv, mask, case_id=case, probability=prob, flip_masks=bits)
    write_quantification(q, *beside_paths(mask_path, case))
    page = write_study_report(
        report_dir(mask_path) / f"{case}.html",
        suv.array,
        mask.array,
        suv.affine,
        q,
        settings,
        index_href=index_href,
        viewer=viewer,
    )
    return q, page
