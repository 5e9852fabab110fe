"""What a training run reports, and to whom: callbacks handed to :func:`h2aseg.training.trainer.train`.

A callback subclasses :class:`TrainingCallbacks` and overrides the hooks it needs; they are called on the
main rank only, in this order::

    on_start(run_dir, start_epoch, total_steps)   after setup, before any step (and the fine-tuning
                                                  epoch-0 validation)
    on_step(step, loss, lr)                       after every optimizer step; loss is None for a skipped
                                                  (non-finite) step
    on_message(text)                              a line for the user (warnings, best.pt, ...)
    on_epoch_end(row)                             after the epoch's checkpoint and metrics.csv are written
    on_finish(run_dir, history)                   after the last epoch, before finished.json is written
    close()                                       always, also when training fails

:func:`default_callbacks` is what ``train()`` uses when given none: the rich console display and
TensorBoard. The training-curves figure is drawn by :class:`CurvesPlot`, given the plotting function by the
caller (the ``h2aseg train`` command and the demo hand in ``h2aseg.analysis.curves.plot_training_curves``),
so that training does not depend on the analysis code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from h2aseg.progress import progress_bar


class TrainingCallbacks:
    """No-op hooks; subclass and override the ones you need (see the module docstring for the order)."""

    def on_start(self, run_dir: Path, start_epoch: int, total_steps: int) -> None:
        pass

    def on_step(self, step: int, loss: float | None, lr: float) -> None:
        pass

    def on_message(self, text: str) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        pass

    def on_finish(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class CallbackList(TrainingCallbacks):
    """Several callbacks called in turn, in the order given."""

    def __init__(self, callbacks: Iterable[TrainingCallbacks] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_start(self, run_dir: Path, start_epoch: int, total_steps: int) -> None:
        for cb in self.callbacks:
            cb.on_start(run_dir, start_epoch, total_steps)

    def on_step(self, step: int, loss: float | None, lr: float) -> None:
        for cb in self.callbacks:
            cb.on_step(step, loss, lr)

    def on_message(self, text: str) -> None:
        for cb in self.callbacks:
            cb.on_message(text)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(row)

    def on_finish(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        for cb in self.callbacks:
            cb.on_finish(run_dir, history)

    def close(self) -> None:
        for cb in self.callbacks:
            cb.close()


class RichProgress(TrainingCallbacks):
    """The console: a progress bar (when ``enabled``), one line per epoch, and the run's messages.

    The epoch lines and messages are printed also when the bar is disabled.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.bar = progress_bar("", enabled, time="both", loss=True)
        self.task: Any = None
        self.running = False
        self.epoch = 0  # epochs completed
        self.loss_sum, self.n = 0.0, 0  # finite losses of the current epoch

    def on_start(self, run_dir: Path, start_epoch: int, total_steps: int) -> None:
        self.epoch = start_epoch
        self.task = self.bar.add_task("train", total=total_steps, loss=float("nan"), epoch=start_epoch)
        self.bar.start()
        self.running = True

    def on_step(self, step: int, loss: float | None, lr: float) -> None:
        if loss is not None:
            self.loss_sum, self.n = self.loss_sum + loss, self.n + 1
        self.bar.update(self.task, advance=1, loss=self.loss_sum / max(1, self.n), epoch=self.epoch + 1)

    def on_message(self, text: str) -> None:
        self.bar.console.print(text, highlight=False)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.epoch, self.loss_sum, self.n = row["epoch"], 0.0, 0
        self.on_message(epoch_line(row))

    def on_finish(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        self.close()

    def close(self) -> None:
        if self.running:
            self.bar.stop()
            self.running = False


class TensorBoardLogger(TrainingCallbacks):
    """``run_dir/tb``: train/loss and train/lr per step, val/dice per validated epoch."""

    def __init__(self) -> None:
        self.writer: Any = None

    def on_start(self, run_dir: Path, start_epoch: int, total_steps: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def on_step(self, step: int, loss: float | None, lr: float) -> None:
        if self.writer is not None and loss is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self.writer is not None and row["val_dice"] is not None:
            self.writer.add_scalar("val/dice", row["val_dice"], row["step"])

    def on_finish(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CurvesPlot(TrainingCallbacks):
    """``run_dir/curves.png`` from ``metrics.csv`` at the end, by ``plot(metrics_csv, out_png)``."""

    def __init__(self, plot: Callable[[Path, Path], Any]) -> None:
        self.plot = plot

    def on_finish(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        if history:
            self.plot(run_dir / "metrics.csv", run_dir / "curves.png")


def default_callbacks(progress: bool = True) -> list[TrainingCallbacks]:
    """The callbacks ``train()`` uses unless given some: the console (bar if ``progress``), TensorBoard."""
    return [RichProgress(enabled=progress), TensorBoardLogger()]


def epoch_line(row: dict[str, Any]) -> str:
    val = ""
    if row["val_dice"] is not None:
        sd = row.get("val_dice_sd")
        spread = f" ± {sd:.1f}" if sd is not None else ""
        val = f"  val Dice {row['val_dice']:.1f}%{spread} (n={row.get('val_cases')})"
    loss = f"loss {row['train_loss']:.4f}"
    return f"epoch {row['epoch']}: {loss}{val}  lr {row['lr']:.2e}  ({row['seconds']:.0f} s)"
