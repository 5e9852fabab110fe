"""Training curves from the metrics CSV (empty cells allowed)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from png_pixels import coloured, crop, middle, panel_boxes

from h2aseg.analysis.curves import plot_training_curves, read_metrics_csv

matplotlib.use("Agg")


def _csv(tmp_path, text: str):
    p = tmp_path / "metrics.csv"
    p.write_text(text)
    return p


TAB_BLUE, TAB_RED = (31, 119, 180), (214, 39, 40)  # the loss and Dice curves' colours


def _curve_rows(mask: np.ndarray, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per column holding the colour: the column and the lowest (or highest) such pixel's row."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.array([np.flatnonzero(mask[:, c])[-1 if lowest else 0] for c in cols])
    return cols, rows


def test_plot_training_curves(tmp_path):
    lines = ["epoch,step,train_loss,val_dice,lr"]
    for e in range(6):
        for s in range(3):
            val = f"{0.1 * e:.2f}" if s == 2 else ""
            lines.append(f"{e},{e * 3 + s},{1 / (e + 1) + 0.01 * s},{val},{1e-4 * 0.9**e}")
    lines.append("6,18,,,")  # a row with empty cells
    p = _csv(tmp_path, "\n".join(lines) + "\n")
    data = read_metrics_csv(p)
    assert len(data["train_loss"][0.0]) == 3 and data["val_dice"][5.0] == [0.5]
    assert 6.0 not in data["val_dice"]
    out = plot_training_curves(p, tmp_path / "out" / "curves.png")
    img = matplotlib.image.imread(out)
    loss_box, dice_box = panel_boxes(img)
    assert loss_box[3] <= dice_box[2]  # loss on the left, Dice on the right
    blue, red = coloured(img, TAB_BLUE), coloured(img, TAB_RED)
    # each curve in its own panel, nowhere else
    assert crop(blue, loss_box).sum() == blue.sum() > 0
    assert crop(red, dice_box).sum() == red.sum() > 0
    height = dice_box[1] - dice_box[0]
    width = dice_box[3] - dice_box[2]
    # validation Dice 0, 0.1, ..., 0.5 over epochs 0..5: a straight line rising across the whole panel
    cols, rows = _curve_rows(crop(red, dice_box), lowest=False)
    assert cols[0] < 0.1 * width and cols[-1] > 0.9 * width
    assert rows[0] - rows[-1] > 0.7 * height and (np.diff(rows) <= 2).all()  # up, never down
    fit = np.polyval(np.polyfit(cols, rows, 1), cols)
    assert np.abs(fit - rows).max() < 4  # linear, as the values are
    # training loss 1/(epoch + 1): falls across the panel, steeply first (the legend sits above the curve)
    loss_width = loss_box[3] - loss_box[2]
    cols, rows = _curve_rows(crop(blue, loss_box), lowest=True)
    assert cols[0] < 0.1 * loss_width and cols[-1] > 0.9 * loss_width
    assert rows[-1] - rows[0] > 0.7 * height and (np.diff(rows) >= -2).all()  # down, never up
    one_fifth = rows[np.searchsorted(cols, cols[0] + (cols[-1] - cols[0]) / 5)]
    assert one_fifth - rows[0] > 0.5 * (rows[-1] - rows[0])  # half the fall in the first epoch


def test_curves_without_validation_yet(tmp_path):
    p = _csv(tmp_path, "epoch,step,train_loss,val_dice,lr\n0,1,0.9,,\n0,2,0.8,,\n")
    img = matplotlib.image.imread(plot_training_curves(p, tmp_path / "c.png"))
    loss_box, dice_box = panel_boxes(img)
    assert not coloured(img, TAB_RED).any()  # no Dice curve
    # the one epoch's mean loss (0.85) is a marker in the middle of the loss panel
    assert crop(coloured(img, TAB_BLUE), middle(loss_box, (0.4, 0.6), (0.4, 0.6))).any()
    # "no validation Dice yet" written in the middle of the Dice panel
    text = crop(img[..., :3], middle(dice_box, (0.4, 0.6), (0.25, 0.75)))
    assert (text.max(axis=-1) < 0.3).sum() > 100


def test_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        read_metrics_csv(_csv(tmp_path, "epoch,loss\n0,1\n"))
    with pytest.raises(ValueError, match="no train_loss or val_dice"):
        read_metrics_csv(_csv(tmp_path, "epoch,step,train_loss,val_dice,lr\n0,1,,,\n"))
    with pytest.raises(ValueError, match="not found"):
        read_metrics_csv(tmp_path / "nope.csv")
