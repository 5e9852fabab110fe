"""``h2aseg synth``: write a synthetic PET/CT cohort in a real dataset layout."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from h2aseg.progress import progress_bar


class SynthLayout(StrEnum):
    autopet = "autopet"
    autopet_nnunet = "autopet-nnunet"
    hecktor = "hecktor"
    csv = "csv"


class SynthVariability(StrEnum):
    """The named levels of :data:`h2aseg.synth.variability.LEVELS`."""

    default = "default"
    wide = "wide"
    out_of_range = "out-of-range"


def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must be empty or absent)."),
    cases: int = typer.Option(8, "--cases", "-n", help="Number of studies."),
    layout: SynthLayout = typer.Option(SynthLayout.autopet, "--layout", help="Dataset layout to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    shape: tuple[int, int, int] | None = typer.Option(
        None, "--shape", help="Grid size X Y Z (CT grid; default 128 128 160)."
    ),
    spacing: tuple[float, float, float] | None = typer.Option(
        None, "--spacing", help="Voxel size X Y Z in mm (default 4 4 5 whole body, 2 2 2 head and neck)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    jobs: int = typer.Option(
        1, "--jobs", "-j", help="Processes writing studies at once (the files are the same for any number)."
    ),
    variability: SynthVariability = typer.Option(
        SynthVariability.default,
        "--variability",
        help="Ranges of body, organs, uptake and PET resolution/noise: default (today's phantom, identical "
        "files), wide (training cohorts) or out-of-range (beyond wide: evaluation cohorts). docs/phantom.md.",
    ),
    variability_file: Path | None = typer.Option(
        None,
        "--variability-file",
        help="YAML file of ranges (a base level and the fields it replaces; docs/phantom.md), instead of "
        "--variability.",
    ),
    followup: bool = typer.Option(
        False,
        "--followup",
        help="Whole-body layouts: every patient gets a baseline and a follow-up study (same anatomy; lesions "
        "shrink, grow, change uptake, vanish or appear; patient slightly repositioned), recorded in "
        "phantom.json. docs/phantom.md.",
    ),
    symmetric_decoys: str = typer.Option(
        "0",
        "--symmetric-decoys",
        help="LO,HI: whole-body single studies get LO-HI pairs of node-like hot spots at mirrored stations, "
        "never labelled (symmetric uptake is physiological; a lesion never has such a partner): a phantom "
        "where only context across the body tells lesion from look-alike. 0: none (identical files). "
        "docs/phantom.md.",
    ),
) -> None:
    """Write N synthetic PET/CT studies (whole body for AutoPET layouts, head and neck for HECKTOR)."""
    from h2aseg.synth import LAYOUT_KIND, PhantomError, check_output_dir, resolve_variability, write_cohort
    from h2aseg.synth.decoys import parse_pairs

    console = Console(stderr=True)
    if cases < 1:
        raise typer.BadParameter(f"must be >= 1, got {cases}", param_hint="--cases")
    if jobs < 1:
        raise typer.BadParameter(f"must be >= 1, got {jobs}", param_hint="--jobs")
    if shape is not None and any(v < 8 for v in shape):
        raise typer.BadParameter(
            f"each size must be >= 8 voxels, got {' '.join(map(str, shape))}", param_hint="--shape"
        )
    if spacing is not None and any(not v > 0 for v in spacing):
        raise typer.BadParameter(
            f"each spacing must be > 0 mm, got {' '.join(map(str, spacing))}", param_hint="--spacing"
        )
    if followup and LAYOUT_KIND[layout.value] != "wholebody":
        raise typer.BadParameter(
            f"needs a whole-body layout (autopet, autopet-nnunet, csv): layout {layout.value} has one study "
            "per patient",
            param_hint="--followup",
        )
    if followup and cases < 2:
        raise typer.BadParameter(
            f"needs at least 2 cases (a baseline and its follow-up), got --cases {cases}",
            param_hint="--followup",
        )
    try:
        ranges = resolve_variability(variability.value, variability_file)
        decoys = parse_pairs(symmetric_decoys)
    except PhantomError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(code=2) from None
    try:
        check_output_dir(out, overwrite)
    except PhantomError as e:
        console.print(f"[red]error:[/red] {e} (use --overwrite to write into it)", highlight=False)
        raise typer.Exit(code=2) from None
    with progress_bar("synth", progress, time="elapsed", console=console) as bar:
        task = bar.add_task(layout.value, total=cases)
        try:
            written = write_cohort(
                out,
                cases,
                layout.value,
                seed,
                shape=shape,
                spacing=spacing,
                overwrite=overwrite,
                progress=lambda done, total, cid: bar.update(task, completed=done),
                variability=ranges,
                followup=followup,
                jobs=jobs,
                symmetric_decoys=decoys,
            )
        except (PhantomError, OSError) as e:
            bar.stop()
            console.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(code=2) from None
    patients = len({c.patient_id for c in written})
    console.print(
        f"wrote {len(written)} studies of {patients} patients to {out} (layout {layout.value}"
        + ("" if ranges.is_default else f", variability {ranges.level}")
        + (f", {len(written) - patients} follow-ups" if followup else "")
        + (f", {decoys[0]}-{decoys[1]} symmetric decoy pairs a study" if decoys != (0, 0) else "")
        + ")",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to ``app``."""
    app.command("synth")(synth)
