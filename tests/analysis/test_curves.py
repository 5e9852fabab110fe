"""Training curves from the metrics CSV (empty cells allowed)."""

from __future__ import annotations

import matplotlib
import pytest

from h2aseg.analysis.curves import plot_training_curves, read_metrics_csv

matplotlib.use("Agg")


def _csv(tmp_path, text: str):
    p = tmp_path / "metrics.csv"
    p.write_text(text)
    return p


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
    assert img.shape[0] >= 300 and img.shape[1] >= 800 and out.stat().st_size > 10000


def test_curves_without_validation_yet(tmp_path):
    p = _csv(tmp_path, "epoch,step,train_loss,val_dice,lr\n0,1,0.9,,\n0,2,0.8,,\n")
    assert plot_training_curves(p, tmp_path / "c.png").stat().st_size > 5000


def test_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        read_metrics_csv(_csv(tmp_path, "epoch,loss\n0,1\n"))
    with pytest.raises(ValueError, match="no train_loss or val_dice"):
        read_metrics_csv(_csv(tmp_path, "epoch,step,train_loss,val_dice,lr\n0,1,,,\n"))
    with pytest.raises(ValueError, match="not found"):
        read_metrics_csv(tmp_path / "nope.csv")
