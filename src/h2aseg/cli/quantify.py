"""``h2aseg quantify``: per-lesion and per-patient PET measures (SUVmax/mean/peak, MTV, TLG, Dmax)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from h2aseg.cli.common import err_console, fail

if TYPE_CHECKING:
    from h2aseg.data.io import Volume
    from h2aseg.evaluation.quantify import Quantification


def quantify(
    pet: Path = typer.Option(..., "--pet", help="PET image in SUV."),
    mask: Path = typer.Option(
        ...,
        "--mask",
        help="Lesion mask on the PET's voxel grid: labels (whole numbers >= 0; > 0 = lesion). Anything else "
        "(a probability map) is refused unless --threshold binarises it.",
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        metavar="T",
        help="Binarise the mask first: voxels >= T are lesion (e.g. 0.5 for a probability map).",
    ),
    gt: Path | None = typer.Option(
        None, "--gt", help="Ground-truth mask on the same grid: adds the per-lesion 'detected' flag."
    ),
    probability: Path | None = typer.Option(
        None,
        "--probability",
        metavar="FILE",
        help="The network's foreground probability map (values in [0, 1]) on the mask's grid, e.g. "
        "h2aseg predict --probabilities' <case>_probability.nii.gz: adds prob_mean and prob_max per lesion "
        "(empty cells without it).",
    ),
    flip_masks: Path | None = typer.Option(
        None,
        "--flip-masks",
        metavar="FILE",
        help="The TTA flip masks on the mask's grid (uint8, bit k = flip k's mask: <case>_flip_masks.nii.gz "
        "of h2aseg predict --tta --probabilities): adds tta_volume_cv per lesion.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for lesions.csv and patient.csv."),
    case_id: str | None = typer.Option(
        None, "--case-id", help="The case_id column and the report's title [the mask's file name]."
    ),
    report: bool = typer.Option(
        False,
        "--report",
        help="Also write OUT/report.html: PET MIPs with the lesions outlined and numbered, the lesion and "
        "patient tables, the inputs (docs/report.md).",
    ),
) -> None:
    """Lesions = 18-connected components of the mask (with --threshold: of mask >= T); measures as in
    docs/quantify.md."""
    from h2aseg.data.io import read_volume
    from h2aseg.errors import H2ASegError
    from h2aseg.evaluation.quantify import check_grid, quantify_volumes, write_to_dir

    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise fail(f"--threshold must be a number > 0, got {threshold}")
    try:
        suv, lesions = read_volume(pet, dtype=None), _read_mask(mask, threshold)
        truth, prob, bits = (
            None if f is None else read_volume(f, dtype=None) for f in (gt, probability, flip_masks)
        )
        for vol, what in ((prob, "probability-map"), (bits, "flip-mask")):
            if vol is not None:  # named against the mask, the grid the option asks for
                check_grid(vol, lesions, what, "mask")
        q = quantify_volumes(suv, lesions, truth, case_id=case_id, probability=prob, flip_masks=bits)
        paths = list(write_to_dir(q, out))
        if report:
            inputs = {
                "PET (SUV)": pet,
                "mask": mask,
                "ground truth": gt,
                "probability": probability,
                "flip masks": flip_masks,
            }
            paths.append(_report(out / "report.html", suv, lesions, q, inputs, threshold))
    except (H2ASegError, OSError) as e:
        raise fail(str(e)) from None
    p = q.patient
    summary = f"{p.lesion_count} lesion(s), MTV {p.mtv_ml:.3g} ml, TLG {p.tlg:.4g}"
    if p.lesion_count:
        summary += f", SUVmax {p.suv_max:.3g}, SUVpeak {p.suv_peak:.3g}, Dmax {p.dmax_mm:.4g} mm"
    if p.gt_lesions is not None:
        summary += f"; {p.gt_detected} of {p.gt_lesions} GT lesion(s) detected, {p.fp_lesions} false"
    err_console.print(summary, highlight=False)
    err_console.print(f"wrote {', '.join(map(str, paths[:-1]))} and {paths[-1]}", highlight=False)


def _read_mask(path: Path, threshold: float | None) -> Volume:
    """The mask file; with ``--threshold`` binarised at ``>= threshold`` (said on stderr)."""
    from h2aseg.data.io import read_volume
    from h2aseg.evaluation.quantify import binarise

    vol = read_volume(path, dtype=None)
    if threshold is None:
        return vol
    binary = binarise(vol, threshold)
    kept = f"{int(binary.array.sum())} of {binary.array.size} voxel(s)"
    err_console.print(f"mask binarised at >= {threshold:g}: {kept} taken as lesion", highlight=False)
    return binary


def _report(
    path: Path,
    suv: Volume,
    mask: Volume,
    q: Quantification,
    inputs: dict[str, Path | None],
    threshold: float | None,
) -> Path:
    """``--report``: the study page of :mod:`h2aseg.analysis.html_report` from the measured arrays."""
    from datetime import datetime

    from h2aseg.analysis.html_report import write_study_report

    settings: dict[str, object] = {k: v for k, v in inputs.items() if v is not None}
    where = "the mask" if threshold is None else f"the mask binarised at >= {threshold:g}"
    settings["lesions"] = f"18-connected components of {where} (docs/quantify.md)"
    settings["created"] = datetime.now().astimezone().isoformat(timespec="seconds")
    return write_study_report(path, suv.array, mask.array, suv.affine, q, settings)


def register(app: typer.Typer) -> None:
    app.command("quantify")(quantify)
