"""``h2aseg convert``: DICOM PET/CT studies -> ``<patient>/<study>/{SUV,CTres,CT}.nii.gz`` (AutoPET layout).

Also the DICOM step of ``h2aseg predict --input DICOMDIR`` (:func:`dicom_to_autopet`): the studies are
converted into ``<out-dir>/.dicom/`` and predicted from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from h2aseg.cli.common import err_console, fail

if TYPE_CHECKING:
    from h2aseg.data.dicom import StudyResult
    from h2aseg.data.suv import SuvOverrides

DICOM_WORK_DIR = ".dicom"

# shared with ``h2aseg predict`` (same flags, same meaning)
WEIGHT_OPTION = typer.Option(
    None, "--weight-kg", help="DICOM: patient weight (kg); supplies or replaces PatientWeight."
)
DOSE_OPTION = typer.Option(
    None, "--dose-mbq", help="DICOM: injected dose (MBq); supplies or replaces RadionuclideTotalDose."
)
INJECTION_OPTION = typer.Option(
    None,
    "--injection-time",
    help="DICOM: injection time HH:MM:SS on the acquisition date; replaces RadiopharmaceuticalStartTime.",
)


def suv_overrides(
    weight_kg: float | None, dose_mbq: float | None, injection_time: str | None
) -> SuvOverrides:
    """The overrides from the CLI flags; a malformed ``--injection-time`` is a one-line error."""
    from h2aseg.data.suv import SuvOverrides, parse_injection_time
    from h2aseg.errors import InputError

    try:
        when = parse_injection_time(injection_time) if injection_time is not None else None
    except InputError as e:
        raise fail(str(e)) from None
    return SuvOverrides(weight_kg=weight_kg, dose_mbq=dose_mbq, injection_time=when)


def _report(result: StudyResult) -> None:
    where = escape(f"{result.patient}/{result.study}")
    if result.status == "failed":
        err_console.print(f"[red]failed[/red] {where}: {escape(str(result.error))}")
        return
    how = f" ({escape(result.suv.summary())})" if result.suv is not None else ""
    err_console.print(f"{result.status} {where}{how}", highlight=False)
    for note in result.notes:
        err_console.print(f"  note: {escape(note)}", highlight=False)


def run_conversion(input_dir: Path, out: Path, overrides: SuvOverrides, overwrite: bool) -> list[StudyResult]:
    """Convert every study, one line per study on stderr; a folder without DICOM is a one-line error."""
    from h2aseg.data.dicom import convert_folder
    from h2aseg.data.io import ImageError

    try:
        return convert_folder(input_dir, out, overrides, overwrite=overwrite, on_study=_report)
    except ImageError as e:
        raise fail(str(e)) from None


def dicom_to_autopet(
    input_dir: Path,
    out_dir: Path,
    layout: str | None,
    overrides: SuvOverrides,
    overwrite: bool = False,
) -> tuple[Path, str | None, int]:
    """For ``predict``: when ``input_dir`` holds DICOM files (or ``layout == "dicom"``), convert its studies
    into ``out_dir/.dicom`` and return ``(that folder, "autopet", number of failed studies)``; otherwise
    ``(input_dir, layout, 0)`` unchanged."""
    from h2aseg.data.dicom import contains_dicom

    if layout not in (None, "dicom") or not (layout == "dicom" or contains_dicom(input_dir)):
        return input_dir, layout, 0
    work = out_dir / DICOM_WORK_DIR
    err_console.print(f"DICOM input: converting the studies into {work}", highlight=False)
    results = run_conversion(input_dir, work, overrides, overwrite)
    failed = sum(r.status == "failed" for r in results)
    if failed == len(results):
        raise fail(f"{input_dir}: no DICOM study could be converted ({failed} failed)")
    return work, "autopet", failed


def convert(
    input_dir: Path = typer.Option(..., "--input", help="Folder of DICOM files (any names, nested folders)."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: <patient>/<study>/{SUV,CTres,CT}.nii.gz; not inside --input."
    ),
    weight_kg: float | None = WEIGHT_OPTION,
    dose_mbq: float | None = DOSE_OPTION,
    injection_time: str | None = INJECTION_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Convert DICOM PET/CT studies to NIfTI: PET in body-weight SUV, CT, and the CT on the PET grid."""
    overrides = suv_overrides(weight_kg, dose_mbq, injection_time)
    results = run_conversion(input_dir, out, overrides, overwrite)
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "failed")}
    err_console.print(
        f"{len(results)} studies: {counts['written']} written, {counts['skipped']} skipped (outputs exist; "
        f"--overwrite to replace), {counts['failed']} failed -> {out}",
        highlight=False,
    )
    if failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
