"""The one-command demo: synthetic cohort -> train -> predict -> evaluate -> report.

``h2aseg demo --out demo_out`` (what ``make demo`` runs), with no downloads:

1. writes a synthetic whole-body PET/CT cohort in the AutoPET layout (``h2aseg synth``);
2. takes the H2ASeg checkpoint shipped with the package (trained on another synthetic cohort by the
   command in ``docs/model-card.md``) as it is; ``--fine-tune-epochs N`` fine-tunes it on this cohort first
   (kept only if the validation Dice rises), ``--from-scratch`` trains a new model with the ``synthetic``
   preset;
3. predicts the held-out test cases (sliding window, masks in the CT geometry);
4. segments the same cases with the clinicians' classic SUV thresholds (SUV >= 2.5, and 41 % of SUVmax per
   connected region);
5. scores everything with the evaluation code behind ``h2aseg evaluate``;
6. writes ``summary.json``, ``report.md``, the training curves and Fig.-3 style overlays.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.checkpoint import load_checkpoint
from h2aseg.config import Config, load_config
from h2aseg.data.layouts import Case, discover, write_manifest
from h2aseg.data.preprocess import CaseCache
from h2aseg.data.splits import make_split
from h2aseg.evaluation.detection import GtLesion, method_lesions, stratify, write_detection
from h2aseg.evaluation.paired import estimate
from h2aseg.evaluation.pipeline import evaluate_folders
from h2aseg.evaluation.report import write_evaluation
from h2aseg.files import atomic_write_text
from h2aseg.hardware import usable_cpus
from h2aseg.inference.predictor import Predictor, predict_cases
from h2aseg.inference.thresholding import write_threshold_mask
from h2aseg.models.naming import network_title
from h2aseg.synth import lesion_sites, write_cohort

SHIPPED_CHECKPOINT = "demo_checkpoint.pt"
#: The demo's methods; the network's label is replaced by what its checkpoint holds (``network_title``).
METHODS = {
    "h2aseg": "H2ASeg",
    "suv_2.5": "SUV >= 2.5",
    "suv_41pct": "41% SUVmax",
}
REPORT_METRICS = (
    ("dice", "Dice (%)"),
    ("hd95", "HD95 (mm)"),
    ("precision", "Precision (%)"),
    ("recall", "Recall (%)"),
    ("fp_volume_ml", "FP volume (ml)"),
    ("fn_volume_ml", "FN volume (ml)"),
)


@dataclass
class DemoOptions:
    out: Path
    cases: int = 40
    seed: int = 2024
    from_scratch: bool = False
    epochs: int | None = None  # training from scratch: None is the preset's
    fine_tune_epochs: int = 0  # 0: the shipped checkpoint is used as it is
    overrides: tuple[str, ...] = ()
    progress: bool = True
    shape: tuple[int, int, int] | None = None  # phantom grid (None: the phantom's default 128x128x160)
    spacing: tuple[float, float, float] | None = None  # phantom voxel size in mm (None: 4 x 4 x 5)


def shipped_checkpoint() -> Path | None:
    """The demo checkpoint inside the installed package, if present."""
    path = Path(str(resources.files("h2aseg") / "assets" / SHIPPED_CHECKPOINT))
    return path if path.is_file() else None


def demo_config(opts: DemoOptions, data_root: Path) -> tuple[Config, str, bool]:
    """The training config, a sentence saying how the model was obtained, and whether to train at all."""
    overrides = [f"data.root={data_root}", "data.layout=autopet"]
    init = None if opts.from_scratch else shipped_checkpoint()
    if init is not None and opts.fine_tune_epochs <= 0:
        cfg = load_config("synthetic", [*overrides, *opts.overrides])
        how = (
            f"the checkpoint shipped with the package (`h2aseg/assets/{SHIPPED_CHECKPOINT}`, trained on a "
            "different synthetic cohort, `docs/model-card.md`), not fine-tuned on this cohort (the default; "
            "`--fine-tune-epochs N` fine-tunes it and keeps the result only if validation Dice rises)"
        )
        return cfg, how, False
    if init is not None:
        epochs = opts.fine_tune_epochs
        overrides += [  # gentle: a fresh Adam state at a high lr would undo the pre-training
            f"train.init_checkpoint={init}",
            f"train.epochs={epochs}",
            "train.lr=5.0e-5",
            "train.warmup_steps=5",
            f"train.val_every={max(1, epochs // 2)}",
        ]
        how = (
            f"fine-tuned for {epochs} epochs from the checkpoint shipped with the package "
            f"(`h2aseg/assets/{SHIPPED_CHECKPOINT}`, trained on a different synthetic cohort by the command "
            "in `docs/model-card.md`)"
        )
    else:
        if opts.epochs:
            overrides.append(f"train.epochs={opts.epochs}")
        why = "" if opts.from_scratch else " (no shipped checkpoint was found)"
        how = f"trained from scratch{why}"
    cfg = load_config("synthetic", [*overrides, *opts.overrides])
    if init is None:
        how = f"{how} for {cfg.train.epochs} epochs"
    else:  # fine-tuning continues the shipped network, whatever the preset's is
        stored = Config.from_dict(load_checkpoint(init)["config"], source=f"{init} (stored config)")
        cfg = dataclasses.replace(cfg, model=stored.model)
    return cfg, how, True


def _threshold_masks(cases: list[Case], cfg: Config, out: Path) -> None:
    """SUV >= 2.5 and 41 % of SUVmax masks for ``cases``, written in the CT geometry."""
    cache = CaseCache(out / "cache", cfg.data)
    for case in cases:
        pc = cache.get(case)
        for name in ("suv_2.5", "suv_41pct"):
            write_threshold_mask(pc, name, out / name / f"{case.case_id}.nii.gz")


def run_demo(opts: DemoOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step; returns the summary written to ``summary.json``."""
    from h2aseg.data.splits import save_split

    t_start = time.perf_counter()
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "phantom.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        log(f"[1/6] writing {opts.cases} synthetic whole-body PET/CT studies to {data}")
        jobs = min(4, usable_cpus())  # the same files for any number of processes
        write_cohort(
            data, opts.cases, "autopet", opts.seed, shape=opts.shape, spacing=opts.spacing, jobs=jobs
        )
    else:
        log(f"[1/6] reusing the synthetic cohort in {data}")
    cases = discover(data, "autopet")
    split = make_split(cases, (0.6, 0.2, 0.2), seed=opts.seed)
    split_file = out / "split.json"
    save_split(split, split_file)
    cfg, how, do_train = demo_config(opts, data)
    cfg = cfg.override([f"data.split_file={split_file}", f"data.cache_dir={out / 'cache'}"])
    run = out / "run"
    epochs, best_val, train_s, best_epoch = 0, None, 0.0, None
    if not do_train:
        ckpt = shipped_checkpoint()
        assert ckpt is not None
        log(f"[2/6] using the shipped checkpoint {ckpt.name} as it is (not fine-tuned)")
    else:
        log(f"[2/6] training {network_title(cfg.model)} ({how}) in {run}")
        epochs, best_val, train_s = _train(cfg, run, opts.progress, log)
        ckpt = run / "checkpoints" / ("best.pt" if (run / "checkpoints" / "best.pt").exists() else "last.pt")
        best_epoch = int(load_checkpoint(ckpt)["epoch"])
        if best_epoch == 0:
            how += (
                "; the fine-tuning did not raise the validation Dice, so the best checkpoint, used below, "
                "holds the shipped weights unchanged"
            )
        else:
            how += f"; the best validation Dice came after epoch {best_epoch}, whose weights are used below"

    by_id = {c.case_id: c for c in cases}
    test_cases = [by_id[i] for i in split.test]
    preds = out / "predictions"
    log(f"[3/6] predicting {len(test_cases)} held-out test studies with {ckpt.name}")
    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(ckpt)
    labels = {**METHODS, "h2aseg": network_title(predictor.cfg.model)}
    predict_cases(predictor, test_cases, preds / "h2aseg", overwrite=True)
    predict_s = time.perf_counter() - t0
    log("[4/6] SUV thresholding baselines (SUV >= 2.5; 41% of SUVmax per region)")
    _threshold_masks(test_cases, cfg, preds)

    log("[5/6] evaluating (the code behind `h2aseg evaluate`, paper protocol)")
    test_manifest = write_manifest(test_cases, out / "test_cases.csv")
    summaries: dict[str, Any] = {}
    per_case: dict[str, list[dict[str, Any]]] = {}
    for method in METHODS:
        res = evaluate_folders(preds / method, test_manifest, protocol="paper", gt_layout="csv")
        write_evaluation(out / "evaluation" / method, res.rows, res.summary)
        summaries[method] = res.summary
        per_case[method] = res.rows
    lesions = _lesions(test_cases, preds, data, out / "detection")

    log("[6/6] figures and report")
    figures = _figures(out, test_cases, preds, per_case["h2aseg"], run, labels)
    summary = {
        "training": {
            "how": how,
            "epochs": epochs,
            "seconds": round(train_s, 1),
            "best_val_dice": best_val,
            "best_epoch": best_epoch,
            "checkpoint": str(ckpt),
            "preset": "synthetic",
            "network": labels["h2aseg"],
        },
        "labels": labels,
        "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "predict_seconds": round(predict_s, 1),
        "metrics": {m: _metric_table(summaries[m]) for m in METHODS},
        "dice_over_lesion_studies": {m: _dice_estimate(per_case[m]) for m in METHODS},
        "detection": {m: detection(per_case[m]) for m in METHODS},
        "detection_by_suvmax": _by_suvmax(lesions),
        "evaluation": {m: str(out / "evaluation" / m) for m in METHODS},
        "figures": [str(f) for f in figures],
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    atomic_write_text(out / "report.md", _report(summary, figures, out))
    return summary


def _train(cfg: Config, run: Path, progress: bool, log: Callable[[str], None]) -> tuple[int, Any, float]:
    """Train (or reuse a finished run of a demo re-run); returns epochs, best validation Dice, seconds."""
    from h2aseg.analysis.curves import plot_training_curves
    from h2aseg.training.callbacks import CurvesPlot, default_callbacks
    from h2aseg.training.trainer import train

    if (run / "finished.json").exists():  # a re-run after a later step failed: keep the trained model
        log("      (reusing the finished training run)")
        finished = json.loads((run / "finished.json").read_text())
        return finished["epochs"], finished["best_val_dice"], finished["seconds"]
    resume = (run / "checkpoints" / "last.pt").exists()
    callbacks = [*default_callbacks(progress), CurvesPlot(plot_training_curves)]  # + run/curves.png
    result = train(cfg, run, resume=resume, progress=progress, callbacks=callbacks)
    return result.epochs, result.best_val_dice, sum(row.get("seconds") or 0.0 for row in result.history)


def detection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Lesion-wise detection over the test cases (18-connected lesions; a lesion counts as found when a
    predicted voxel touches it): found / ground-truth lesions, and false-positive lesions per case."""
    gt = sum(int(r.get("gt_lesions") or 0) for r in rows)
    tp = sum(int(r.get("tp_lesions") or 0) for r in rows)
    fp = sum(int(r.get("fp_lesions") or 0) for r in rows)
    return {
        "gt_lesions": gt,
        "found": tp,
        "sensitivity": 100.0 * tp / gt if gt else None,
        "fp_lesions": fp,
        "fp_per_case": fp / len(rows) if rows else None,
    }


def _lesions(cases: list[Case], preds: Path, data: Path, out: Path) -> list[GtLesion]:
    """Every test lesion with each method's verdict (``h2aseg analyze detection``), written to ``out``."""
    sites = lesion_sites(data)
    rows = [les for m in METHODS for les in method_lesions(m, preds / m, cases, sites=sites)]
    write_detection(rows, list(METHODS), out)
    return rows


def _by_suvmax(rows: list[GtLesion]) -> list[dict[str, Any]]:
    """Found / total lesions per method and SUVmax stratum (the default strata of ``analyze detection``)."""
    return [
        {"stratum": t.stratum, "method": t.method, "found": t.detected, "lesions": t.lesions}
        for t in stratify(rows, list(METHODS))
        if t.by in ("all", "SUVmax")
    ]


def _dice_estimate(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean Dice over the studies with lesions with its standard error over studies (paper protocol)."""
    values = [r["dice"] for r in rows if r.get("has_lesion") and r.get("dice") == r.get("dice")]
    est = estimate([float(v) for v in values])
    return None if est is None else dataclasses.asdict(est)


def _metric_table(summary: dict[str, Any]) -> dict[str, Any]:
    metrics = summary.get("metrics", summary)
    out = {}
    for key, _ in REPORT_METRICS:
        if key in metrics:
            out[key] = metrics[key]
    return out


def _fmt(stat: Any) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "n/a"
    mean, std = stat["mean"], stat.get("std")
    if mean != mean:  # NaN
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None and std == std else f"{mean:.2f}"


def _figures(
    out: Path, cases: list[Case], preds: Path, rows: list[dict[str, Any]], run: Path, labels: dict[str, str]
) -> list[Path]:
    from h2aseg.analysis.overlays import render_overlay
    from h2aseg.data.io import read_volume

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if (run / "curves.png").exists():
        shutil.copyfile(run / "curves.png", fig_dir / "training_curves.png")
        figures.append(fig_dir / "training_curves.png")
    lesion_rows = [r for r in rows if r.get("has_lesion")]
    lesion_rows.sort(key=lambda r: -r["dice"] if r.get("dice") == r.get("dice") else 0.0)  # best first
    by_id = {c.case_id: c for c in cases}
    for r in lesion_rows[:3]:
        case = by_id[r["case_id"]]
        ct, pet = read_volume(case.ct), read_volume(case.pet)
        gt = read_volume(case.label, dtype=None).array > 0 if case.label else np.zeros(ct.shape, bool)
        for method in ("h2aseg", "suv_41pct"):
            pred = read_volume(preds / method / f"{case.case_id}.nii.gz", dtype=None).array > 0
            path = fig_dir / f"{_safe(case.case_id)}_{method}.png"
            render_overlay(
                ct.array,
                pet.array,
                pred,
                gt,
                path,
                spacing=ct.spacing,
                affine=ct.affine,
                title=f"{labels[method]} — {case.case_id}",
            )
            figures.append(path)
    return figures


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]


def _model_sentence(t: dict[str, Any]) -> str:
    text = f"**Model:** {t['network']} ({t['preset']} preset), {t['how']}"
    if not t["epochs"]:
        return text + "."
    text += f"; {t['seconds']:.0f} s of training on this machine"
    if t["best_val_dice"] is not None:
        text += f"; best validation Dice {t['best_val_dice']:.1f}%"
    return text + "."


def _report(summary: dict[str, Any], figures: list[Path], out: Path) -> str:
    t = summary["training"]
    labels = summary["labels"]
    lines = [
        "# h2aseg demo report",
        "",
        "Synthetic whole-body PET/CT phantom (AutoPET layout), patient-level split "
        f"{summary['cases']['train']}/{summary['cases']['val']}/{summary['cases']['test']} (train/val/test).",
        "",
        _model_sentence(t),
        "",
        "## Test-set metrics (mean ± std over cases; Dice, HD95, precision and recall over cases with "
        "lesions, FP volume over all cases — the paper's protocol)",
        "",
        "| method | " + " | ".join(label for _, label in REPORT_METRICS) + " |",
        "|---|" + "---|" * len(REPORT_METRICS),
    ]
    for method, label in labels.items():
        m = summary["metrics"][method]
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k)) for k, _ in REPORT_METRICS) + " |")
    lines += ["", "Dice over the test studies with lesions ± its standard error over studies:", ""]
    for method, label in labels.items():
        e = summary["dice_over_lesion_studies"][method]
        se = "" if e is None or e["se"] is None else f" ± {e['se']:.1f}"
        lines.append(f"- {label}: " + ("n/a" if e is None else f"**{e['mean']:.1f}{se} %** (n = {e['n']})"))
    lines += [
        "",
        "## Lesion-wise detection (test set; 18-connected lesions, a lesion is found when a predicted voxel "
        "touches it)",
        "",
        "| method | lesions found | sensitivity (%) | false-positive lesions per study |",
        "|---|---|---|---|",
    ]
    for method, label in labels.items():
        d = summary["detection"][method]
        sens = "n/a" if d["sensitivity"] is None else f"{d['sensitivity']:.1f}"
        fpc = "n/a" if d["fp_per_case"] is None else f"{d['fp_per_case']:.2f}"
        lines.append(f"| {label} | {d['found']} / {d['gt_lesions']} | {sens} | {fpc} |")
    strata = list(dict.fromkeys(r["stratum"] for r in summary["detection_by_suvmax"]))
    cell = {(r["stratum"], r["method"]): r for r in summary["detection_by_suvmax"]}
    lines += [
        "",
        "Lesions found, by their SUVmax (the PET at the lesion's voxels):",
        "",
        "| lesion SUVmax | " + " | ".join(labels.values()) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for st in strata:
        found = [f"{cell[st, m]['found']} / {cell[st, m]['lesions']}" for m in METHODS]
        lines.append(f"| {st} | " + " | ".join(found) + " |")
    lines += [
        "",
        f"By volume and anatomical site, and every lesion: `{out / 'detection'}/detection.md` and "
        "`lesions.csv`.",
        "",
        "SUV >= 2.5: every voxel with SUV of at least 2.5. 41% SUVmax: connected regions of SUV >= 2.5, "
        "each kept where SUV >= 41% of that region's maximum (`h2aseg.inference.thresholding`). Both are "
        "fooled by physiological uptake (brain, heart, kidneys, bladder), which a network can learn "
        "to ignore.",
        "",
        f"Per-case tables: `{out / 'evaluation'}/<method>/per_case.csv`.",
        "",
        "## Figures",
        "",
        "Overlays as in the paper's Fig. 3: true positives red, misses blue, false positives yellow.",
        "",
    ]
    for f in figures:
        lines.append(f"![{f.stem}]({f.relative_to(out)})")
        lines.append("")
    lines.append(f"Total demo time: {summary['total_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"
