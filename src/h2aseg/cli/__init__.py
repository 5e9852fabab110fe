"""The ``h2aseg`` command line: one module per command, each exposing ``register(app)``."""

from __future__ import annotations

import typer

from h2aseg.cli import analyze, convert, demo, evaluate, experiment, export, predict, quantify, synth, train
from h2aseg.cli import compare as _compare  # h2aseg compare (issue 29)
from h2aseg.cli import view as _view  # h2aseg view (issue 29)

app = typer.Typer(
    name="h2aseg",
    help="H2ASeg PET/CT tumour segmentation: synthesise, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each command module defines ``register(app: typer.Typer)``; the order is the order in --help.
for _mod in (
    synth,
    convert,
    train,
    predict,
    evaluate,
    quantify,
    _compare,
    analyze,
    experiment,
    export,
    demo,
    _view,
):
    _mod.register(app)


def main() -> None:
    from h2aseg.cli.common import show_warnings_plainly
    from h2aseg.hardware import tune_allocator

    show_warnings_plainly()
    tune_allocator()  # keep freed activation memory in the process (CPU steps ~25 % faster on VMs)
    app()
