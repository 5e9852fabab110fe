"""``h2aseg train``: train a network from the registry on a PET/CT cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import build_config, err_console, fail


def train(
    data: Path = typer.Option(None, "--data", help="Dataset root (any supported layout) [data.root]."),
    out: Path = typer.Option(..., "--out", help="Run directory for checkpoints, logs and curves."),
    preset: str = typer.Option("synthetic", "--preset", help="autopet2 | hecktor2022 | synthetic."),
    config: Path | None = typer.Option(None, "--config", help="A YAML config file instead of a preset."),
    assignments: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value."),
    epochs: int | None = typer.Option(None, "--epochs", help="[train.epochs]"),
    model: str | None = typer.Option(None, "--model", help="Network name from the registry [model.name]."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N [train.device]."),
    amp: str | None = typer.Option(None, "--amp", help="auto | bf16 | fp16 | off [train.amp]."),
    seed: int | None = typer.Option(None, "--seed", help="[train.seed]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out exactly."),
    force: bool = typer.Option(False, "--force", help="Start over in a run directory that holds a run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Train (the paper's recipe in the presets); validation by sliding window on whole cases."""
    from h2aseg.analysis.curves import plot_training_curves
    from h2aseg.checkpoint import load_checkpoint
    from h2aseg.config import Config
    from h2aseg.errors import H2ASegError
    from h2aseg.training.callbacks import CurvesPlot, default_callbacks
    from h2aseg.training.trainer import train as run_training

    fields = {
        "data.root": str(data) if data is not None else None,
        "train.epochs": epochs,
        "model.name": model,
        "train.device": device,
        "train.amp": amp,
        "train.seed": seed,
    }
    last = out / "checkpoints" / "last.pt"
    if resume and last.exists():  # a resumed run continues with its own stored config
        try:
            stored = Config.from_dict(load_checkpoint(last)["config"], source=str(last))
            cfg = stored.override([*assignments, *[f"{k}={v}" for k, v in fields.items() if v is not None]])
        except H2ASegError as e:  # CheckpointError, ConfigError
            raise fail(str(e)) from None
    else:
        cfg = build_config(preset, config, assignments, fields)
    try:
        callbacks = [*default_callbacks(progress), CurvesPlot(plot_training_curves)]  # + curves.png
        result = run_training(cfg, out, resume=resume, force=force, progress=progress, callbacks=callbacks)
    except H2ASegError as e:
        raise fail(str(e)) from None
    best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.2f}%"
    err_console.print(
        f"trained {result.epochs} epochs; best validation Dice {best}\n"
        f"  checkpoints: {result.run_dir / 'checkpoints'}\n  metrics:     {result.run_dir / 'metrics.csv'}\n"
        f"  curves:      {result.run_dir / 'curves.png'}\n  tensorboard: {result.run_dir / 'tb'}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
