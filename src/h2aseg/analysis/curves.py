"""Training curves from the trainer's metrics CSV (columns ``epoch, step, train_loss, val_dice, lr``)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from h2aseg.errors import InputError

REQUIRED_COLUMNS = ("epoch", "train_loss", "val_dice")


def csv_number(v: str | None) -> float | None:
    """A CSV cell as a finite float; None for an empty, non-numeric or non-finite cell."""
    if v is None or not v.strip():
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def read_metrics_rows(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a trainer's metrics CSV (keys and missing cells normalised to ``str``), in file order.

    Raises :class:`InputError` naming the file when it is missing or lacks a ``required`` column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in cols]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols)})")
            return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]
    except FileNotFoundError as e:
        raise InputError(f"{path}: metrics CSV not found (is it a run folder of h2aseg train?)") from e


def read_metrics_csv(path: str | Path) -> dict[str, dict[float, list[float]]]:
    """``{column: {epoch: [values...]}}`` for ``train_loss``, ``val_dice``, ``lr``; empty cells skipped.

    Raises ``ValueError`` naming the file when it is missing, empty or lacks a required column.
    """
    columns = ("train_loss", "val_dice", "lr")
    out: dict[str, dict[float, list[float]]] = {k: defaultdict(list) for k in columns}
    for row in read_metrics_rows(path, REQUIRED_COLUMNS):
        epoch = csv_number(row.get("epoch"))
        if epoch is None:
            continue
        for k in out:
            v = csv_number(row.get(k))
            if v is not None:
                out[k][epoch].append(v)
    if not any(out[k] for k in ("train_loss", "val_dice")):
        raise InputError(f"{path}: no train_loss or val_dice values")
    return out


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path, *, title: str | None = None) -> Path:
    """Plot train loss (per-epoch mean, with the per-step values faint) and validation Dice vs epoch.

    The learning rate, when present, is drawn on a log axis under the loss. Written atomically (Agg).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from h2aseg.analysis.plotting import save_png

    data = read_metrics_csv(metrics_csv)
    has_lr = bool(data["lr"])
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_dice = fig.subplots(1, 2)
    loss = data["train_loss"]
    if loss:
        epochs = sorted(loss)
        raw_x = [e for e in epochs for _ in loss[e]]
        raw_y = [v for e in epochs for v in loss[e]]
        if len(raw_x) > len(epochs):
            ax_loss.plot(raw_x, raw_y, ".", color="tab:blue", alpha=0.2, markersize=3, label="per step")
        ax_loss.plot(
            epochs,
            [float(np.mean(loss[e])) for e in epochs],
            "-o",
            color="tab:blue",
            markersize=3,
            label="epoch mean",
        )
        ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    if has_lr:
        ax_lr = ax_loss.twinx()
        lr_e = sorted(data["lr"])
        lrs = [data["lr"][e][-1] for e in lr_e]
        ax_lr.plot(lr_e, lrs, "--", color="tab:gray", linewidth=1)
        if min(lrs) > 0:  # a zero learning rate (frozen run) cannot be drawn on a log axis
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate", color="tab:gray")
    dice = data["val_dice"]
    if dice:
        de = sorted(dice)
        dv = [float(np.mean(dice[e])) for e in de]
        ax_dice.plot(de, dv, "-o", color="tab:red", markersize=3)
        best = int(np.argmax(dv))
        ax_dice.annotate(
            f"best {dv[best]:.3g} (epoch {de[best]:g})",
            (de[best], dv[best]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    else:
        ax_dice.text(
            0.5, 0.5, "no validation Dice yet", ha="center", va="center", transform=ax_dice.transAxes
        )
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_title("validation Dice")
    ax_dice.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, out_png)
