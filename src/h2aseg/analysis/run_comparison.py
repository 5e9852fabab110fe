"""Several training runs side by side: validation Dice against optimiser steps and against training time.

Each run is a run folder of ``h2aseg train`` (its ``metrics.csv``) or the CSV itself. The figure has two
panels, validation Dice (mean, with a band of one standard error ``sd / sqrt(n)`` where the CSV has the
spread and the number of cases) against the optimiser step and against the cumulative epoch time in
minutes (``seconds`` column: the wall time the trainer measured per epoch, validation included, so a run
that shared its machine looks slower than it is); the table (markdown and CSV) gives per run the steps,
the training time, the median epoch time, and the best and last validation Dice with the number of
cases they were computed on.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from h2aseg.analysis.curves import csv_number, read_metrics_rows
from h2aseg.errors import InputError
from h2aseg.files import atomic_write_text

REQUIRED = ("epoch", "step", "seconds")


@dataclass
class ValPoint:
    epoch: int
    step: int
    minutes: float
    dice: float
    sd: float | None
    n: int | None

    @property
    def se(self) -> float | None:
        if self.sd is None or not self.n:
            return None
        return self.sd / math.sqrt(self.n)


@dataclass
class RunCurve:
    label: str
    source: Path
    steps: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)

    @property
    def minutes(self) -> float:
        return sum(self.epoch_seconds) / 60.0

    @property
    def best(self) -> ValPoint | None:
        return max(self.val, key=lambda p: p.dice) if self.val else None

    @property
    def last(self) -> ValPoint | None:
        return self.val[-1] if self.val else None


def metrics_path(run: str | Path) -> Path:
    """``run`` itself when it is a file, else ``run/metrics.csv``."""
    run = Path(run)
    return run if run.is_file() else run / "metrics.csv"


def read_run(label: str, run: str | Path) -> RunCurve:
    """The curve of one run. A resumed run's CSV may repeat an epoch: the last row of each epoch counts.

    Raises :class:`InputError` naming the file when it is missing or lacks the ``epoch``, ``step`` or
    ``seconds`` column, or has no epoch at all.
    """
    path = metrics_path(run)
    rows: dict[int, dict[str, str]] = {}
    for row in read_metrics_rows(path, REQUIRED):
        epoch = csv_number(row.get("epoch"))
        if epoch is not None:
            rows[int(epoch)] = row
    if not rows:
        raise InputError(f"{path}: no epochs recorded yet")
    curve = RunCurve(label=label, source=path)
    seconds = 0.0
    for epoch in sorted(rows):
        row = rows[epoch]
        sec = csv_number(row.get("seconds")) or 0.0
        seconds += sec
        curve.epoch_seconds.append(sec)
        step = csv_number(row.get("step"))
        curve.steps = int(step) if step is not None else curve.steps
        dice = csv_number(row.get("val_dice"))
        if dice is not None:
            n = csv_number(row.get("val_cases"))
            curve.val.append(
                ValPoint(
                    epoch,
                    curve.steps,
                    seconds / 60.0,
                    dice,
                    csv_number(row.get("val_dice_sd")),
                    None if n is None else int(n),
                )
            )
    return curve


def _fmt(p: ValPoint | None) -> str:
    if p is None:
        return "-"
    spread = f" ± {p.se:.1f} SE" if p.se is not None else ""
    n = f", n={p.n}" if p.n else ""
    return f"{p.dice:.1f}{spread} (step {p.step}{n})"


def comparison_rows(curves: Sequence[RunCurve]) -> list[dict[str, str]]:
    return [
        {
            "run": c.label,
            "steps": str(c.steps),
            "training time (min)": f"{c.minutes:.1f}",
            "median epoch (s)": f"{statistics.median(c.epoch_seconds):.1f}",
            "best val Dice (%)": _fmt(c.best),
            "last val Dice (%)": _fmt(c.last),
        }
        for c in curves
    ]


def compare_runs(
    runs: Sequence[tuple[str, str | Path]], out_dir: str | Path, *, title: str | None = None
) -> list[Path]:
    """Write ``runs.png``, ``runs.md`` and ``runs.csv`` into ``out_dir`` for ``[(label, run), ...]``."""
    if not runs:
        raise InputError("no runs to compare: give at least one LABEL=RUN_DIR")
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        raise InputError(f"run labels must differ, got {', '.join(labels)}")
    curves = [read_run(label, run) for label, run in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(curves)
    header = list(rows[0])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    atomic_write_text(out / "runs.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "epoch", "step", "minutes", "val_dice", "val_dice_sd", "val_cases"])
    for c in curves:
        for p in c.val:
            w.writerow(
                [
                    c.label,
                    p.epoch,
                    p.step,
                    f"{p.minutes:.2f}",
                    f"{p.dice:.4f}",
                    "" if p.sd is None else f"{p.sd:.4f}",
                    "" if p.n is None else p.n,
                ]
            )
    atomic_write_text(out / "runs.csv", buf.getvalue())
    return [_plot(curves, out / "runs.png", title), out / "runs.md", out / "runs.csv"]


def _plot(curves: Sequence[RunCurve], out_png: Path, title: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from h2aseg.analysis.plotting import save_png

    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax_step, ax_time = fig.subplots(1, 2, sharey=True)
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        for ax, xs in ((ax_step, [p.step for p in c.val]), (ax_time, [p.minutes for p in c.val])):
            ys = [p.dice for p in c.val]
            ax.plot(xs, ys, "-o", color=color, markersize=3, label=c.label)
            if all(p.se is not None for p in c.val) and c.val:
                lo = [p.dice - (p.se or 0.0) for p in c.val]
                hi = [p.dice + (p.se or 0.0) for p in c.val]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax_step.set_xlabel("optimiser step")
    ax_time.set_xlabel("training time (min, as measured per epoch)")
    ax_step.set_ylabel("validation Dice (%)")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
    ax_step.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, out_png)
