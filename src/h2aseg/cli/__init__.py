"""The ``h2aseg`` command line: one module per command, each exposing ``register(app)``."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="h2aseg",
    help="H2ASeg PET/CT tumour segmentation: synthesise, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in the order they appear in --help. Each defines ``register(app: typer.Typer)``.
COMMAND_MODULES = ("synth", "train", "predict", "evaluate", "demo")

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"h2aseg.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command whose module is not part of this build
        if _e.name != f"h2aseg.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()
