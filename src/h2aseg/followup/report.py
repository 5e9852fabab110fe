"""``compare.html``: baseline and follow-up PET MIPs side by side, lesions outlined and numbered with their
match numbers (a matched pair has one number on both pictures), the category, the patient-level changes,
the lesion table and the alignment (``docs/followup.md``).

The pictures are :func:`h2aseg.analysis.html_report.mip_images` (coronal and sagittal, inverted grey, SUV
0-10, radiological orientation) with the lesions relabelled by their numbers, so a number keeps its colour
(:func:`~h2aseg.analysis.html_report.lesion_colour`) on both sides. Like the study pages, the page opens
offline: images embedded as ``data:`` URIs, inline styles, a Content-Security-Policy that forbids every
request; ``<body data-images-loaded>`` turns ``"true"`` once every image has decoded.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from h2aseg import __version__
from h2aseg.analysis.html_report import DEFAULT_SUV_WINDOW, lesion_colour, mip_images
from h2aseg.evaluation.quantify import csv_cell
from h2aseg.files import atomic_write_text
from h2aseg.followup.comparison import Comparison, lesion_rows, patient_row
from h2aseg.followup.percist import SOURCE, SUV_NOTE

PICTURE_HEIGHT_PX = 420
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_CSS = """
body { font-family: system-ui, Arial, sans-serif; margin: 1em 1.6em; color: #1d1d1d; }
h1 { font-size: 1.4em; margin-bottom: .1em; } h2 { font-size: 1.1em; margin: 1.1em 0 .4em; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; }
figcaption { font-size: .85em; color: #555; } img { border: 1px solid #bbb; max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .88em; }
th, td { padding: .2em .5em; border-bottom: 1px solid #ddd; }
td { text-align: right; } th { background: #f2f2f2; } .l { text-align: left; }
.category { font-size: 1.2em; font-weight: bold; } .note { color: #666; font-size: .88em; }
.dot { display: inline-block; width: .75em; height: .75em; border-radius: 50%; margin-right: .3em; }
"""
_IMAGES_READY = (
    'window.addEventListener("load", () => document.body.setAttribute("data-images-loaded", '
    "[...document.images].every(i => i.complete && i.naturalWidth > 0) ? 'true' : 'false'));"
)
_LESION_TABLE = (
    ("status", "status"),
    ("baseline_lesion_id", "baseline id"),
    ("followup_lesion_id", "follow-up id"),
    ("baseline_volume_ml", "volume ml (B)"),
    ("followup_volume_ml", "volume ml (F)"),
    ("delta_volume_ml_pct", "Δ volume %"),
    ("baseline_suv_max", "SUVmax (B)"),
    ("followup_suv_max", "SUVmax (F)"),
    ("baseline_suv_peak", "SUVpeak (B)"),
    ("followup_suv_peak", "SUVpeak (F)"),
    ("delta_suv_peak_pct", "Δ SUVpeak %"),
    ("baseline_tlg", "TLG (B)"),
    ("followup_tlg", "TLG (F)"),
    ("delta_tlg_pct", "Δ TLG %"),
    ("matched_by", "matched by"),
    ("note", "note"),
)
_PATIENT_TABLE = (
    ("lesion_count", "lesions"),
    ("mtv_ml", "MTV (ml)"),
    ("tlg", "TLG (SUV·ml)"),
    ("suv_peak", "hottest lesion's SUVpeak"),
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _shown(value: object) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _cell(column: str, value: object) -> str:
    cls = ' class="l"' if isinstance(value, str) else ""
    return f'<td{cls} data-col="{column}" data-value="{_e(csv_cell(value))}">{_e(_shown(value))}</td>'


def _pictures(c: Comparison, suv_window: tuple[float, float]) -> str:
    n = max((p.number for p in c.pairs), default=0)
    sides = []
    for role, study, numbered in (
        ("baseline", c.baseline, c.numbered_baseline),
        ("follow-up", c.followup, c.numbered_followup),
    ):
        images = mip_images(
            study.pet.array,
            study.mask.array,
            study.pet.affine,
            suv_window=suv_window,
            height_px=PICTURE_HEIGHT_PX,
            lesions=(numbered, n),
        )
        sides.append((role, images))
    figures = []
    for view in ("coronal", "sagittal"):
        for role, images in sides:
            png, (w, h) = images[view]  # type: ignore[index]
            data = base64.b64encode(png).decode("ascii")
            figures.append(
                f'<figure id="{role}-{view}"><img src="data:image/png;base64,{data}" '
                f'width="{w}" height="{h}" '
                f'alt="{role} {view} PET MIP, lesions numbered"><figcaption>{_e(role)}: {view} MIP '
                f"(SUV {suv_window[0]:g}-{suv_window[1]:g})</figcaption></figure>"
            )
    return f'<div class="pair">{"".join(figures[:2])}</div><div class="pair">{"".join(figures[2:])}</div>'


def _patient_table(row: Mapping[str, object]) -> str:
    head = '<tr><th class="l">measure</th>' + "".join(
        f"<th>{h}</th>" for h in ("baseline", "follow-up", "change", "change %")
    )
    head += "</tr>"
    body = "".join(
        f'<tr><th class="l">{_e(label)}</th>'
        + "".join(_cell(f"{k}_{name}", row[f"{k}_{name}"]) for k in ("baseline", "followup", "delta"))
        + _cell(f"delta_{name}_pct", row[f"delta_{name}_pct"])
        + "</tr>"
        for name, label in _PATIENT_TABLE
    )
    return f'<table id="patient-table"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _lesion_table(rows: Sequence[Mapping[str, object]]) -> str:
    head = '<th class="l">number</th>' + "".join(f"<th>{_e(h)}</th>" for _, h in _LESION_TABLE)
    body = []
    for r in rows:
        dot = f'<span class="dot" style="background:{lesion_colour(int(r["number"]))}"></span>'  # type: ignore[call-overload]
        first = f'<td class="l" data-col="number" data-value="{r["number"]}">{dot}{r["number"]}</td>'
        cells = "".join(_cell(col, r[col]) for col, _ in _LESION_TABLE)
        body.append(f'<tr id="lesion-{r["number"]}" data-status="{_e(r["status"])}">{first}{cells}</tr>')
    empty = "" if body else f'<tr><td class="l" colspan="{len(_LESION_TABLE) + 1}">no lesions</td></tr>'
    rows_html = "".join(body) + empty
    return f'<table id="lesion-table"><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>'


def _key_values(rows: Sequence[tuple[str, object]], table_id: str) -> str:
    body = "".join(f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(_shown(v))}</td></tr>' for k, v in rows)
    return f'<table id="{table_id}"><tbody>{body}</tbody></table>'


def _section(section_id: str, title: str, content: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{content}</section>'


def compare_page(
    c: Comparison, settings: Mapping[str, object], *, suv_window: tuple[float, float] = DEFAULT_SUV_WINDOW
) -> str:
    """The HTML of ``compare.html``."""
    row = patient_row(c)
    r = c.rigid
    registration = [
        ("method", r.method),
        ("rotation (degrees)", f"{r.rotation_deg:.2f}"),
        ("translation (mm, RAS)", ", ".join(f"{v:.1f}" for v in r.translation_mm)),
        ("final metric", r.metric_value),
        ("iterations (finest level)", r.iterations),
        ("body overlap (Dice) before → after", f"{r.body_dice_before:.3f} → {r.body_dice_after:.3f}"),
    ]
    liver = [
        ("source", row["liver_source"]),
        ("baseline mean ± SD", _mean_sd(row, "baseline")),
        ("follow-up mean ± SD", _mean_sd(row, "followup")),
        ("measurable if SUVpeak ≥", row["measurable_threshold"]),
    ]
    body = (
        f"<h1>Follow-up comparison</h1>"
        f'<p class="note">{_e(c.patient_check)} · baseline {_e(c.baseline.pet.path)} · follow-up '
        f"{_e(c.followup.pet.path)}</p>"
        f'<section id="category"><p class="category">PERCIST-style: {_e(c.category.category)}</p>'
        f'<p>{_e(c.category.reason)}</p><p class="note">{_e(SUV_NOTE)}; rules after {_e(SOURCE)}. A research '
        "tool, not a medical device.</p></section>"
        + _section("pictures", "PET MIPs (matched lesions share a number)", _pictures(c, suv_window))
        + _section("patient", "Patient", _patient_table(row))
        + _section("lesions", "Lesions", _lesion_table(lesion_rows(c)))
        + _section("liver", "Liver reference", _key_values(liver, "liver-table"))
        + _section("registration", "Alignment", _key_values(registration, "registration-table"))
        + _section("settings", "Settings", _key_values(list(settings.items()), "settings-table"))
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        f"<title>h2aseg follow-up comparison</title><style>{_CSS}</style></head>\n"
        f'<body data-images-loaded="pending">{body}<footer class="note">h2aseg {_e(__version__)}; '
        f"docs/followup.md.</footer><script>{_IMAGES_READY}</script></body></html>\n"
    )


def _mean_sd(row: Mapping[str, object], side: str) -> str:
    mean, sd = row[f"{side}_liver_mean"], row[f"{side}_liver_sd"]
    return "–" if mean is None else f"{mean:.2f} ± {sd:.2f}"


def write_compare_page(path: str | Path, c: Comparison, settings: Mapping[str, object]) -> Path:
    """:func:`compare_page` written atomically."""
    return atomic_write_text(path, compare_page(c, settings))
