"""``h2aseg predict``: segment new patients with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail


def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by h2aseg train."),
    ct: Path | None = typer.Option(None, "--ct", help="CT image of one patient."),
    pet: Path | None = typer.Option(None, "--pet", help="PET image (SUV) of the same patient."),
    out: Path | None = typer.Option(None, "--out", help="Output mask (.nii.gz) for --ct/--pet."),
    input_dir: Path | None = typer.Option(None, "--input", help="A dataset folder (any supported layout)."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Output folder: <case_id>.nii.gz per case."),
    layout: str | None = typer.Option(None, "--layout", help="Layout of --input [data.layout]."),
    overlap: float | None = typer.Option(None, "--overlap", help="Sliding-window overlap [infer.overlap]."),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="Flip test-time augmentation [infer.tta_flips]."
    ),
    probabilities: bool | None = typer.Option(
        None,
        "--probabilities/--no-probabilities",
        help="Also write <case>_probability.nii.gz [infer.save_probabilities].",
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda [infer.device]."),
    amp: str | None = typer.Option(None, "--amp", help="auto | bf16 | fp16 | off [infer.amp]."),
    assignments: list[str] = typer.Option([], "--set", help="Override a stored config field (infer.*)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute cases whose output exists."),
) -> None:
    """Sliding-window prediction; masks are uint8 NIfTI in the original CT geometry."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from h2aseg.checkpoint import CheckpointError
    from h2aseg.config import ConfigError
    from h2aseg.data.io import ImageError
    from h2aseg.data.layouts import LayoutError, discover
    from h2aseg.inference.predictor import Predictor, predict_cases, write_prediction

    single = ct is not None or pet is not None or out is not None
    folder = input_dir is not None or out_dir is not None
    if single == folder:
        raise fail("give either --ct, --pet and --out (one patient) or --input and --out-dir (a folder)")
    if single and (ct is None or pet is None or out is None):
        raise fail("--ct, --pet and --out must be given together")
    if folder and (input_dir is None or out_dir is None):
        raise fail("--input and --out-dir must be given together")
    fields = {
        "infer.overlap": overlap,
        "infer.tta_flips": tta,
        "infer.save_probabilities": probabilities,
        "infer.device": device,
        "infer.amp": amp,
    }
    overrides = [
        *assignments,
        *[f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items() if v is not None],
    ]
    try:
        predictor = Predictor.from_checkpoint(checkpoint, overrides)
        if single:
            assert ct is not None and pet is not None and out is not None
            pred = predictor.predict_files(ct, pet, case_id=ct.name)
            path = write_prediction(pred, out, inputs=(ct, pet))
            err_console.print(f"wrote {path}", highlight=False)
            return
        assert input_dir is not None and out_dir is not None
        cases = discover(
            input_dir, layout or predictor.cfg.data.layout, swap_channels=predictor.cfg.data.swap_channels
        )
        with Progress(
            TextColumn("[bold]predict"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task("", total=len(cases))
            paths = predict_cases(
                predictor,
                cases,
                out_dir,
                overwrite=overwrite,
                on_case=lambda cid, status: bar.update(task, advance=1, description=f"{cid} {status}"),
            )
        err_console.print(f"wrote {len(paths)} masks to {out_dir}", highlight=False)
    except (CheckpointError, ConfigError, ImageError, LayoutError, ValueError) as e:
        raise fail(str(e)) from None


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
