"""``h2aseg export-nnunet``: a cohort as an nnU-Net v2 raw dataset with h2aseg's split (docs/nnunet.md);
``h2aseg export-checkpoint``: a training checkpoint as a small file for prediction (docs/model-card.md)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from h2aseg.cli.common import build_config, err_console, fail
from h2aseg.progress import progress_bar

if TYPE_CHECKING:
    from h2aseg.data.nnunet_export import ExportResult


class LabelMode(StrEnum):
    binary = "binary"
    multiclass = "multiclass"


def export_nnunet(
    data: Path = typer.Option(None, "--data", help="Dataset root (any supported layout) [data.root]."),
    out: Path = typer.Option(
        ..., "--out", help="nnU-Net's raw folder ($nnUNet_raw); the dataset goes to OUT/DatasetNNN_NAME."
    ),
    dataset_id: int = typer.Option(..., "--dataset-id", min=1, max=999, help="nnU-Net dataset id (1-999)."),
    name: str = typer.Option("H2ASeg", "--name", help="Dataset name (letters, digits, '-', '_')."),
    layout: str | None = typer.Option(
        None, "--layout", help="auto | autopet | autopet-nnunet | hecktor | csv [data.layout]."
    ),
    split_file: Path | None = typer.Option(
        None,
        "--split-file",
        help="A saved split (a run's split.json) [data.split_file]; default: made as h2aseg train makes it.",
    ),
    label_mode: LabelMode | None = typer.Option(
        None,
        "--label-mode",
        help="binary (label > 0) or multiclass (classes kept, HECKTOR 1 = GTVp, 2 = GTVn) [data.label_mode].",
    ),
    preset: str = typer.Option(
        "synthetic",
        "--preset",
        help="autopet2 | hecktor2022 | synthetic: the data "
        "settings (layout, split ratios and seed, label classes) as for h2aseg train.",
    ),
    config: Path | None = typer.Option(None, "--config", help="A YAML config file instead of a preset."),
    assignments: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value."),
    preprocessed: Path | None = typer.Option(
        None,
        "--preprocessed",
        envvar="nnUNet_preprocessed",
        help="nnU-Net's preprocessed folder: splits_final.json is also "
        "written to its DatasetNNN_NAME/ [env nnUNet_preprocessed].",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a dataset folder that holds another dataset."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Write an nnU-Net v2 raw dataset (CT 0000, PET on the CT grid 0001) with h2aseg's split as fold 0."""
    from h2aseg.data.nnunet_export import export_dataset
    from h2aseg.errors import InputError

    fields = {
        "data.root": None if data is None else str(data),
        "data.layout": layout,
        "data.split_file": None if split_file is None else str(split_file),
        "data.label_mode": None if label_mode is None else label_mode.value,
    }
    cfg = build_config(preset, config, assignments, fields)
    with progress_bar("export-nnunet", progress, time="elapsed", console=err_console) as bar:
        task = bar.add_task("cases", total=None)
        try:
            res = export_dataset(
                cfg.data,
                out,
                dataset_id,
                name,
                preprocessed=preprocessed,
                force=force,
                progress=lambda done, total, _id: bar.update(task, completed=done, total=total),
            )
        except (InputError, OSError) as e:
            bar.stop()
            raise fail(str(e)) from None
    _report(res, dataset_id)


def _report(res: ExportResult, dataset_id: int) -> None:
    err_console.print(
        f"exported {len(res.cases)} cases (train {res.count('train')}, val {res.count('val')}, test "
        f"{res.count('test')}) to {res.folder}: {res.written} files written, {res.skipped} already there",
        highlight=False,
    )
    if res.unused:
        err_console.print(
            f"[yellow]warning:[/yellow] {len(res.unused)} case(s) in no part of the split, not "
            f"exported: {', '.join(res.unused[:8])}",
            highlight=False,
        )
    err_console.print(
        f"  splits_final.json: {', '.join(str(p) for p in res.splits)}\n"
        f"  next: nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity; "
        f"nnUNetv2_train {dataset_id} 3d_fullres 0  (see {res.folder / 'h2aseg_README.md'})",
        highlight=False,
    )


def export_checkpoint(
    src: Path = typer.Argument(..., help="A checkpoint (a run's best.pt, or an exported file)."),
    dst: Path = typer.Argument(..., help="The file to write (may be SRC: replaced atomically)."),
    note: str = typer.Option("", "--note", help="Provenance note stored in the file (how it was made)."),
    assignments: list[str] = typer.Option(
        [],
        "--set",
        help="Change a field of the stored config: section.key=value (e.g. data.target_spacing=[4,4,5], "
        "infer.overlap=0.5); the weights are not changed.",
    ),
    half: bool = typer.Option(True, "--half/--full-precision", help="Store the weights as float16."),
) -> None:
    """Keep what prediction and fine-tuning need (config, weights, provenance); drop the optimizer state."""
    from h2aseg.checkpoint import CheckpointError
    from h2aseg.checkpoint import export_checkpoint as export
    from h2aseg.config import ConfigError

    try:
        out = export(src, dst, half=half, note=note, overrides=assignments)
    except (CheckpointError, ConfigError, OSError) as e:
        raise fail(str(e)) from None
    err_console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``export-nnunet`` and ``export-checkpoint`` to the ``h2aseg`` app."""
    app.command("export-nnunet")(export_nnunet)
    app.command("export-checkpoint")(export_checkpoint)
