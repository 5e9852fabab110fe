"""``h2aseg demo``: the whole job on synthetic data, with no downloads (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail


def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", help="Output folder (data, run, predictions, report)."
    ),
    cases: int = typer.Option(40, "--cases", help="Synthetic studies to generate (split 6:2:2 by patient)."),
    seed: int = typer.Option(2024, "--seed", help="Seed of the synthetic cohort and split."),
    from_scratch: bool = typer.Option(
        False,
        "--from-scratch",
        help="Train from random weights instead of fine-tuning the shipped checkpoint.",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs of --from-scratch training [train.epochs]; default: the preset's."
    ),
    fine_tune_epochs: int = typer.Option(
        0,
        "--fine-tune-epochs",
        help="Fine-tune the shipped checkpoint on this cohort for N epochs first (kept only if the "
        "validation Dice rises); 0 (default): use it as it is.",
    ),
    assignments: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Synthesise a cohort, train H2ASeg, predict the test cases, compare with SUV thresholds, report."""
    from h2aseg.demo import DemoOptions, run_demo
    from h2aseg.errors import H2ASegError

    if cases < 5:
        raise fail(f"--cases must be at least 5 (train, validation and test need cases), got {cases}")
    opts = DemoOptions(
        out=out,
        cases=cases,
        seed=seed,
        from_scratch=from_scratch,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        overrides=tuple(assignments),
        progress=progress,
    )
    try:
        summary = run_demo(opts, log=lambda msg: err_console.print(msg, highlight=False))
    except (H2ASegError, OSError) as e:
        raise fail(str(e)) from None
    rows = []
    for method, label in summary["labels"].items():
        e = summary["dice_over_lesion_studies"][method]
        dice = (
            "n/a"
            if e is None
            else f"{e['mean']:6.2f}%" + ("" if e["se"] is None else f" ± {e['se']:.2f} (SE)")
        )
        rows.append(f"  {dice:>20}  {label}")
    err_console.print(
        "\n".join(
            [
                f"done in {summary['total_seconds']:.0f} s; test-set Dice (mean over studies with lesions"
                " ± its standard error):",
                *rows,
                f"report:   {out / 'report.md'}",
                f"summary:  {out / 'summary.json'}",
                f"figures:  {out / 'figures'}",
                *(
                    [f"run:      {out / 'run'} (checkpoints, metrics.csv, TensorBoard logs in tb/)"]
                    if summary["training"]["epochs"]
                    else []
                ),
            ]
        ),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
