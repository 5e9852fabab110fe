"""Helpers shared by the CLI commands: one-line errors, config loading from preset + flags."""

from __future__ import annotations

import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import typer
from rich.console import Console
from rich.markup import escape

from h2aseg.config import Config, ConfigError, load_config

err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a cluster's time limit) stops the invocation as Ctrl-C does (a
    KeyboardInterrupt in the main thread), so that the command's own clean-up runs: ``h2aseg experiment``
    releases its run's lock and stops nnU-Net's processes, ``h2aseg view`` closes its socket. The previous
    handler is restored afterwards."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ctrl_c_is_ignored() -> bool:
    """Whether this process was started with SIGINT ignored (``h2aseg view ... &`` in a script or any
    other background job of a non-interactive shell): Ctrl-C then does not reach it, and a command must
    say how else to stop it."""
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def fail(msg: str) -> typer.Exit:
    """Print ``error: msg`` on stderr and return an Exit(2) to raise."""
    err_console.print(f"[red]error:[/red] {escape(str(msg))}")
    return typer.Exit(code=2)


def show_warnings_plainly() -> None:
    """Print the package's own warnings (a study at another scale, PET that looks like activity, ...) as
    ``warning: message`` on stderr, without Python's source-line decoration; other warnings as Python shows
    them. For the CLI process only (``h2aseg.cli.main``); library users keep the ``warnings`` module's
    behaviour and filters."""
    python_default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, UserWarning) and _from_package(filename):
            err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}")
        else:
            python_default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


_PACKAGE = Path(__file__).resolve().parents[1]


def _from_package(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE)
    except OSError:  # an unreadable path (e.g. a symlink loop): not ours
        return False


def build_config(
    preset: str, config_file: Path | None, assignments: list[str], fields: dict[str, object]
) -> Config:
    """Preset (or YAML file), then ``--set`` assignments, then the explicit flags (``fields``: dotted
    config field -> value; ``None`` values are left alone)."""
    try:
        cfg = load_config(config_file if config_file is not None else preset, assignments)
        explicit = [f"{k}={_yaml(v)}" for k, v in fields.items() if v is not None]
        return cfg.override(explicit) if explicit else cfg
    except ConfigError as e:
        raise fail(str(e)) from None


def _yaml(value: object) -> str:
    import yaml

    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
