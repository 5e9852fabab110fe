"""The one progress-bar style of the package (rich), for the commands and for training.

Here, not in :mod:`h2aseg.cli.common` or :mod:`h2aseg.training.callbacks`, so that both use it without the
training code importing the command-line code (or the command-line helpers depending on training).
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

TimeColumns = Literal["remaining", "elapsed", "both"]


def progress_bar(
    name: str,
    enabled: bool,
    *,
    time: TimeColumns = "remaining",
    loss: bool = False,
    console: Console | None = None,
) -> Progress:
    """``name`` (bold; none when empty) and the task description, the bar, ``done/total``, then the time:
    ``remaining``, ``elapsed``, or ``both`` (elapsed, then ``ETA`` and the time remaining).

    ``loss`` adds ``epoch {epoch} loss {loss}`` before the time, from the task's ``epoch`` and ``loss``
    fields (training). ``console``: where it draws (the commands give their stderr console; default
    rich's, on stdout). ``enabled=False`` (``--no-progress``) draws nothing.
    """
    title = f"[bold]{name}[/bold] {{task.description}}" if name else "[bold]{task.description}"
    cols: list[ProgressColumn] = [TextColumn(title), BarColumn(), MofNCompleteColumn()]
    if loss:
        cols.append(TextColumn("epoch {task.fields[epoch]} loss {task.fields[loss]:.4f}"))
    if time in ("elapsed", "both"):
        cols.append(TimeElapsedColumn())
    if time == "both":
        cols.append(TextColumn("ETA"))
    if time in ("remaining", "both"):
        cols.append(TimeRemainingColumn())
    return Progress(*cols, console=console, disable=not enabled)
