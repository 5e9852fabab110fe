"""Training reports through callbacks: called in order, with the run's numbers; no analysis import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from training_fixtures import tiny_config, write_tiny_cohort

from h2aseg.training.callbacks import CallbackList, CurvesPlot, TrainingCallbacks
from h2aseg.training.trainer import train


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))


class Recorder(TrainingCallbacks):
    def __init__(self, run_dir: Path, fail_at_epoch: int | None = None) -> None:
        self.run_dir = run_dir
        self.events: list[tuple[Any, ...]] = []
        self.fail_at_epoch = fail_at_epoch

    def on_start(self, run_dir: Path, start_epoch: int, total_steps: int) -> None:
        self.events.append(("start", run_dir, start_epoch, total_steps))

    def on_step(self, step: int, loss: float | None, lr: float) -> None:
        self.events.append(("step", step, loss, lr))

    def on_message(self, text: str) -> None:
        self.events.append(("message", text))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.events.append(("epoch", row, (self.run_dir / "metrics.csv").is_file()))
        if row["epoch"] == self.fail_at_epoch:
            raise KeyboardInterrupt

    def on_finish(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        self.events.append(("finish", run_dir, list(history), (run_dir / "finished.json").exists()))

    def close(self) -> None:
        self.events.append(("close",))


def test_callbacks_are_called_in_order_with_the_run_numbers(cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cohort)
    rec = Recorder(tmp_path / "run")
    result = train(cfg, rec.run_dir, progress=False, callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    assert kinds == ["start", *["step"] * 2, "epoch", *["step"] * 2, "epoch", "finish", "message", "close"]
    assert rec.events[0] == ("start", rec.run_dir, 0, 4)
    steps = [e for e in rec.events if e[0] == "step"]
    assert [e[1] for e in steps] == [1, 2, 3, 4]
    assert all(isinstance(e[2], float) and e[3] > 0 for e in steps)
    rows = [e[1] for e in rec.events if e[0] == "epoch"]
    assert rows == result.history and [r["epoch"] for r in rows] == [1, 2]
    assert all(e[2] for e in rec.events if e[0] == "epoch")  # metrics.csv is written before on_epoch_end
    finish = rec.events[kinds.index("finish")]
    assert finish[1] == rec.run_dir and finish[2] == result.history
    assert not finish[3]  # finished.json is written after on_finish
    assert rec.events[kinds.index("message")][1].startswith("best.pt: epoch ")
    # callbacks handed in replace the defaults: no TensorBoard, and no curves unless CurvesPlot is given
    assert not (rec.run_dir / "tb").exists() and not (rec.run_dir / "curves.png").exists()
    assert (rec.run_dir / "finished.json").is_file()


def test_close_is_called_when_training_fails(cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cohort, extra=("train.val_every=0",))
    rec = Recorder(tmp_path / "run", fail_at_epoch=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, rec.run_dir, progress=False, callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    assert kinds == ["start", "step", "step", "epoch", "close"]
    assert not (rec.run_dir / "finished.json").exists()


def test_curves_plot_calls_the_given_plot_function(tmp_path: Path) -> None:
    calls: list[tuple[Path, Path]] = []
    cbs = CallbackList([CurvesPlot(lambda csv, png: calls.append((csv, png)))])
    cbs.on_finish(tmp_path, [])
    assert calls == []  # nothing trained, nothing to plot
    cbs.on_finish(tmp_path, [{"epoch": 1}])
    assert calls == [(tmp_path / "metrics.csv", tmp_path / "curves.png")]


def test_training_does_not_import_the_analysis_code() -> None:
    code = (
        "import sys\n"
        "import h2aseg.training.trainer\n"
        "import h2aseg.training.callbacks, h2aseg.training.loop, h2aseg.training.run\n"
        "bad = sorted(m for m in sys.modules if m == 'h2aseg.analysis' or m.startswith('h2aseg.analysis.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    training = Path(__file__).parents[2] / "src" / "h2aseg" / "training"
    for source in training.glob("*.py"):  # not even a lazy import inside a function
        assert not re.search(r"(from|import)\s+h2aseg\.analysis", source.read_text()), source
