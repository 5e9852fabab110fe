"""h2aseg.progress: the one progress-bar style, as the commands and training ask for it."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from h2aseg.progress import progress_bar


def _kinds(bar: Progress) -> list[str]:
    return [f"text:{c.text_format}" if isinstance(c, TextColumn) else type(c).__name__ for c in bar.columns]


def test_command_style_names_the_command_and_shows_one_time() -> None:
    console = Console(file=io.StringIO())
    bar = progress_bar("predict", True, console=console)
    assert bar.console is console and not bar.disable
    assert _kinds(bar) == [
        "text:[bold]predict[/bold] {task.description}",
        "BarColumn",
        "MofNCompleteColumn",
        "TimeRemainingColumn",
    ]
    assert isinstance(progress_bar("synth", True, time="elapsed").columns[-1], TimeElapsedColumn)


def test_training_style_has_loss_elapsed_and_eta() -> None:
    bar = progress_bar("", False, time="both", loss=True)
    assert bar.disable
    assert _kinds(bar) == [
        "text:[bold]{task.description}",
        "BarColumn",
        "MofNCompleteColumn",
        "text:epoch {task.fields[epoch]} loss {task.fields[loss]:.4f}",
        "TimeElapsedColumn",
        "text:ETA",
        "TimeRemainingColumn",
    ]
    assert isinstance(bar.columns[-1], TimeRemainingColumn)
