"""``h2aseg quantify``: per-lesion and per-patient PET measures (SUVmax/mean/peak, MTV, TLG, Dmax)."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail


def quantify(
    pet: Path = typer.Option(..., "--pet", help="PET image in SUV."),
    mask: Path = typer.Option(..., "--mask", help="Lesion mask (> 0 = lesion) on the PET's voxel grid."),
    gt: Path | None = typer.Option(
        None, "--gt", help="Ground-truth mask on the same grid: adds the per-lesion 'detected' flag."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for lesions.csv and patient.csv."),
) -> None:
    """Lesions = 18-connected components of the mask; measures as in docs/quantify.md."""
    from h2aseg.data.io import ImageError
    from h2aseg.evaluation.quantify import quantify_files, write_to_dir

    try:
        q = quantify_files(pet, mask, gt)
        paths = write_to_dir(q, out)
    except (ImageError, ValueError, OSError) as e:
        raise fail(str(e)) from None
    p = q.patient
    summary = f"{p.lesion_count} lesion(s), MTV {p.mtv_ml:.3g} ml, TLG {p.tlg:.4g}"
    if p.lesion_count:
        summary += f", SUVmax {p.suv_max:.3g}, SUVpeak {p.suv_peak:.3g}, Dmax {p.dmax_mm:.4g} mm"
    if p.gt_lesions is not None:
        summary += f"; {p.gt_detected} of {p.gt_lesions} GT lesion(s) detected, {p.fp_lesions} false"
    err_console.print(summary, highlight=False)
    err_console.print(f"wrote {paths[0]} and {paths[1]}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("quantify")(quantify)
