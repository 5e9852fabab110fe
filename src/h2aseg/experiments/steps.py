"""The stages of one run: the shared split, training (resumed from its last checkpoint), the cost probe,
prediction of the test split (network or SUV threshold), evaluation with the paper's protocol, and the
done marker. :mod:`h2aseg.experiments.runner` calls them in order under the run's lock."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from h2aseg.config import Config
from h2aseg.data.layouts import Case, discover, manifest_text
from h2aseg.experiments.locks import Heartbeat
from h2aseg.experiments.plan import Layout, Run, fingerprint
from h2aseg.experiments.spec import EVAL_PARTS, ExperimentSpec
from h2aseg.files import atomic_write_text
from h2aseg.training.callbacks import TrainingCallbacks


class HeartbeatCallback(TrainingCallbacks):
    """Keeps the run's lock fresh during training, and stops training if another process took it over."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat

    def on_step(self, step: int, loss: float | None, lr: float) -> None:
        self.heartbeat.beat()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.heartbeat.beat()


class CaseTimer:
    """``on_case`` hook of the predict step: seconds per predicted case; keeps the lock fresh."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat
        self.seconds: list[float] = []
        self._t = time.perf_counter()

    def __call__(self, case_id: str, status: str) -> None:
        now = time.perf_counter()
        if status == "done":
            self.seconds.append(now - self._t)
        self._t = now
        self.heartbeat.beat()


# ------------------------------------------------------------------------------------------- data
def prepare_data(spec: ExperimentSpec, layout: Layout) -> dict[str, list[Case]]:
    """The one split every run uses (made once, then reused) and a manifest per ``evaluate_on`` part;
    the cases of each part (``{"test": [...], "validation": [...]}``)."""
    from h2aseg.data.splits import SplitError, check_split, load_split, make_split, save_split

    cfg = spec.base_config()
    if not spec.dataset.root.exists():
        raise spec.error("dataset.root", f"{spec.dataset.root}: no such file or folder")
    cases = discover(spec.dataset.root, cfg.data.layout, swap_channels=cfg.data.swap_channels)
    if layout.split.exists():
        split = load_split(layout.split)
        try:
            check_split(split, cases)
        except SplitError as e:
            raise SplitError(f"{layout.split}: {e} (a split of another dataset? use a new --out)") from None
    else:
        split = make_split(cases, tuple(cfg.data.split_ratios), cfg.data.split_seed)  # type: ignore[arg-type]
        save_split(split, layout.split)
    by_id = {c.case_id: c for c in cases}
    parts: dict[str, list[Case]] = {}
    for part in spec.evaluate_on:
        chosen = [by_id[i] for i in split.part(EVAL_PARTS[part])]
        if not chosen:
            raise spec.error("dataset.root", f"the split of {len(cases)} cases has no {part} cases")
        atomic_write_text(layout.manifest_of(part), _manifest(chosen))
        parts[part] = chosen
    return parts


def _manifest(cases: Sequence[Case]) -> str:
    """A CSV manifest (``case_id,patient_id,ct,pet,label``) with absolute paths."""
    return manifest_text(cases)


# ------------------------------------------------------------------------------------------- training
def trained_epochs(run_dir: Path) -> int | None:
    """Epochs in the run's last checkpoint (None: no checkpoint)."""
    from h2aseg.checkpoint import load_checkpoint

    last = run_dir / "checkpoints" / "last.pt"
    return int(load_checkpoint(last)["epoch"]) if last.exists() else None


def train_network(
    cfg: Config,
    run_dir: Path,
    heartbeat: Heartbeat,
    *,
    progress: bool,
    callbacks: Sequence[TrainingCallbacks] = (),
) -> str:
    """Train, or continue a killed run from its last checkpoint; what was done (for the progress line)."""
    from h2aseg.analysis.curves import plot_training_curves
    from h2aseg.training.callbacks import CurvesPlot, default_callbacks
    from h2aseg.training.trainer import train

    if (run_dir / "finished.json").exists():
        return "already trained"
    epochs = trained_epochs(run_dir)
    if epochs is not None and epochs >= cfg.train.epochs:
        return "already trained"
    cbs = [
        *default_callbacks(progress),
        CurvesPlot(plot_training_curves),
        HeartbeatCallback(heartbeat),
        *callbacks,
    ]
    train(cfg, run_dir, resume=epochs is not None, progress=progress, callbacks=cbs)
    return "trained" if epochs is None else f"resumed after epoch {epochs}"


def ensure_cost(spec: ExperimentSpec, layout: Layout, run: Run, cfg: Config) -> None:
    """Measure the method's cost once (``cost/<label>.json``); a failure is recorded, not raised."""
    from h2aseg.experiments.cost import measure_cost

    path = layout.cost(run.method)
    if path.exists():
        return
    try:
        result: dict[str, Any] = measure_cost(cfg)
    except (RuntimeError, ValueError, MemoryError) as e:
        result = {"network": run.method.network, "error": f"{type(e).__name__}: {e}"}
    result["label"] = run.method.label
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- predicting
def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run predicts with: best.pt (last.pt without validation)."""
    ckpts = run_dir / "checkpoints"
    return ckpts / "best.pt" if (ckpts / "best.pt").exists() else ckpts / "last.pt"


def predict_network(
    run_dir: Path, cases: list[Case], out: Path, heartbeat: Heartbeat, *, record: bool
) -> list[float]:
    """Predict ``cases`` with :func:`run_checkpoint` into ``out``; seconds per predicted case. With
    ``record`` (the test part), an H2ASeg with TAMW records TAMW's weights in the same pass: the run's
    Table 3 in ``analysis/`` (docs/analysis.md)."""
    from h2aseg.analysis.tamw_run import PredictionRecorder, has_tamw
    from h2aseg.inference.predictor import Predictor, predict_cases

    ckpt = run_checkpoint(run_dir)
    predictor = Predictor.from_checkpoint(ckpt)
    timer = CaseTimer(heartbeat)
    if not record or not has_tamw(predictor.model):
        predict_cases(predictor, cases, out, on_case=timer)
        return timer.seconds
    with PredictionRecorder(predictor, ckpt) as rec:
        predict_cases(
            predictor,
            cases,
            out,
            on_case=lambda cid, status: (rec.on_case(cid, status), timer(cid, status)),
        )
    rec.write(
        cases,
        run_dir / "analysis",
        where=f"the experiment's {len(cases)} test cases",
        on_case=lambda *_: heartbeat.beat(),
    )
    return timer.seconds


def predict_threshold(
    method: str, cfg: Config, cache_dir: Path, cases: list[Case], out: Path, heartbeat: Heartbeat
) -> list[float]:
    """SUV >= 2.5 or 41 % of SUVmax per region (as the demo), written in the CT geometry into ``out``."""
    from h2aseg.data.preprocess import CaseCache
    from h2aseg.inference.thresholding import write_threshold_mask

    cache = CaseCache(cache_dir, cfg.data)
    timer = CaseTimer(heartbeat)
    for case in cases:
        target = out / f"{case.case_id}.nii.gz"
        if target.exists():
            timer(case.case_id, "skipped")
            continue
        write_threshold_mask(cache.get(case), method, target)
        timer(case.case_id, "done")
    return timer.seconds


def save_timing(run_dir: Path, seconds: list[float]) -> None:
    """``timing.json``: seconds per whole predicted case (kept from before when nothing was predicted)."""
    path = run_dir / "timing.json"
    if not seconds and path.exists():
        return
    doc = {"predict_seconds_per_case": [round(s, 3) for s in seconds], "cases": len(seconds)}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- evaluating
def evaluate_run(
    spec: ExperimentSpec, layout: Layout, run: Run, heartbeat: Heartbeat, part: str = "test"
) -> dict:
    """Score the run's predictions of ``part`` against its manifest (``spec.protocol``) into its
    evaluation folder (``evaluation/``, or ``evaluation-val/`` for the validation part)."""
    from h2aseg.evaluation.pipeline import evaluate_folders
    from h2aseg.evaluation.report import write_evaluation

    res = evaluate_folders(
        layout.predictions(run, part),
        layout.manifest_of(part),
        protocol=spec.protocol,
        gt_layout="csv",
        on_case=lambda *_: heartbeat.beat(),
    )
    write_evaluation(layout.evaluation(run, part), res.rows, res.summary)
    return res.summary


def write_done(layout: Layout, run: Run, cfg: Config, summary: dict, trained: str) -> None:
    """The done marker, written last and atomically: a rerun skips the run from now on."""
    doc = {
        "label": run.method.label,
        "network": run.method.network,
        "seed": run.seed,
        "fingerprint": fingerprint(cfg, run.method),
        "training": trained,
        "n_cases": summary.get("n_cases"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    atomic_write_text(layout.done(run), json.dumps(doc, indent=2) + "\n")
