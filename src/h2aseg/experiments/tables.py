"""The experiment's tables, from whatever runs are done: Table 1, Table 2 (ablations), cost.

Written by whichever process finishes a run (under a short ``tables.lock``, atomically), so they always
reflect every finished run:

* ``table1.md`` / ``table1.tex`` / ``table1.json``: a row per method (its seed count in the row name),
  the protocol's columns, mean over seeds ± (``std_over: cases``, the paper's convention and
  :func:`~h2aseg.evaluation.report.aggregate_runs`'s ``std``) the standard deviation over test cases
  averaged over seeds, or (``std_over: seeds``) the standard deviation of the seed means; best bold,
  second underlined (:func:`~h2aseg.evaluation.report.table1`);
* ``table2.md`` when the methods hold all four H2ASeg ablation configurations (MCSA x TAMW);
* ``cost.md``: per network method, parameters, forward GFLOP, train-step time and peak memory
  (:mod:`h2aseg.experiments.cost`), whole-case prediction time and training time per run;
* ``table3.md`` / ``table3.csv``: TAMW's PET/CT weights per depth for each H2ASeg method with TAMW
  (recorded by the predict step, :mod:`h2aseg.analysis.tamw_weights`);
* ``paired.md`` / ``paired.json`` when the experiment names a ``reference`` method: paired per-study
  differences with standard errors, on each ``evaluate_on`` part (:mod:`h2aseg.experiments.paired`).

:func:`write_figures` (called by the runner after the tables, outside the lock) draws ``fig3.png``
(the methods side by side) and ``fig4_<case>.png`` (level-2 features TAMW selects) beside them, and writes
``detection/`` (``h2aseg analyze detection`` over every method's first seed: lesions found per SUVmax,
volume and, on a synthetic cohort, anatomical site).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from h2aseg.data.layouts import Case
from h2aseg.evaluation.report import (
    METRICS,
    PROTOCOL_COLUMNS,
    aggregate_runs,
    json_safe,
    load_summary,
    metric_header,
    rank_positions,
    table1,
)
from h2aseg.experiments.locks import held
from h2aseg.experiments.paired import write_paired
from h2aseg.experiments.plan import PART_SUFFIX, Layout, Run, plan_runs, read_done
from h2aseg.experiments.spec import Ablation, ExperimentSpec, MethodSpec
from h2aseg.files import atomic_write_text, read_json

if TYPE_CHECKING:
    from h2aseg.synth.cohort import LesionSite

ABLATION_ORDER = (Ablation(False, False), Ablation(True, False), Ablation(False, True), Ablation(True, True))
Cells = dict[str, dict[str, Any]]


def collect(spec: ExperimentSpec, layout: Layout) -> dict[str, list[tuple[int | None, dict[str, Any]]]]:
    """``{label: [(seed, evaluation summary), ...]}`` over the finished runs."""
    done: dict[str, list[tuple[int | None, dict[str, Any]]]] = {m.label: [] for m in spec.methods}
    for run in plan_runs(spec):
        if read_done(layout, run) is None:
            continue
        try:
            done[run.method.label].append((run.seed, load_summary(layout.run_dir(run) / "evaluation")))
        except ValueError:
            continue  # a marker without its summary (copied folders): not counted
    return done


def write_tables(spec: ExperimentSpec, layout: Layout) -> list[Path]:
    """(Re)write every table from the finished runs; returns the files written."""
    with held(layout.tables_lock, timeout_s=120.0, wait_s=60.0):
        done = collect(spec, layout)
        paths = write_table1(spec, layout, done)
        t2 = table2_markdown(spec, done)
        if t2 is not None:
            paths.append(atomic_write_text(layout.out / "table2.md", t2))
        if any(not m.training_free for m in spec.methods):
            paths.append(atomic_write_text(layout.out / "cost.md", cost_markdown(spec, layout, done)))
        paths += write_table3(spec, layout)
        paths += write_paired(spec, layout)
    return paths


def method_cells(spec: ExperimentSpec, summaries: list[dict[str, Any]]) -> Cells:
    """Aggregated metrics of a method's runs, with ``std`` as the experiment's ``std_over`` asks."""
    if not summaries:
        return {}
    cells = aggregate_runs(summaries)
    if spec.std_over == "seeds":
        cells = {k: {**v, "std": v.get("std_runs")} for k, v in cells.items()}
    return cells


def row_name(spec: ExperimentSpec, method: MethodSpec, n_done: int) -> str:
    if method.training_free:
        return f"{method.title} (training-free)"
    return f"{method.title} ({n_done}/{len(spec.seeds)} seeds)"


def _spread(spec: ExperimentSpec) -> str:
    if spec.std_over == "seeds":
        return "mean over seeds ± std of the seed means"
    return "mean over seeds ± std over test cases, averaged over seeds as in the paper"


def write_table1(spec: ExperimentSpec, layout: Layout, done: dict[str, list]) -> list[Path]:
    """``table1.md``, ``table1.tex``, ``table1.json``."""
    group = spec.dataset.name
    columns = [(group, c) for c in PROTOCOL_COLUMNS[spec.protocol]]
    rows: dict[str, dict[str, Cells]] = {}
    for m in spec.methods:
        summaries = [s for _, s in done[m.label]]
        rows[row_name(spec, m, len(summaries))] = {group: method_cells(spec, summaries)}
    caption = f"{spec.name}: {_spread(spec)}. The best is in bold, the second underlined."
    notes = _table1_notes(spec, done)
    doc = {
        "caption": caption,
        "protocol": spec.protocol,
        "std_over": spec.std_over,
        "columns": [list(c) for c in columns],
        "rows": json_safe(rows),
        "seeds_done": {m.label: [s for s, _ in done[m.label]] for m in spec.methods},
    }
    return [
        atomic_write_text(layout.out / "table1.md", table1(rows, columns, caption=caption) + notes),
        atomic_write_text(layout.out / "table1.tex", table1(rows, columns, fmt="latex", caption=caption)),
        atomic_write_text(layout.out / "table1.json", json.dumps(doc, indent=2) + "\n"),
    ]


def _table1_notes(spec: ExperimentSpec, done: dict[str, list]) -> str:
    parts = []
    for m in spec.methods:
        seeds = [s for s, _ in done[m.label]]
        if m.training_free:
            parts.append(f"{m.label}: {'done' if seeds else 'pending'} (deterministic, no seeds)")
        else:
            parts.append(
                f"{m.label}: {len(seeds)} of {len(spec.seeds)} seeds"
                + (f" ({', '.join(map(str, seeds))})" if seeds else "")
            )
    first = next((s for runs in done.values() for _, s in runs), None)
    cases = (
        ""
        if first is None
        else (f" Test set: {first.get('n_cases')} cases ({first.get('n_lesion_cases')} with lesions).")
    )
    extra = len(spec.schedule.overrides) + len(spec.overrides)
    schedule = spec.schedule.base + (f" + {extra} override(s)" if extra else "")
    return f"\nRuns done: {'; '.join(parts)}.{cases} Protocol: {spec.protocol}; schedule: {schedule}.\n"


def table2_markdown(spec: ExperimentSpec, done: dict[str, list]) -> str | None:
    """Table 2 (MCSA x TAMW) when all four ablation configurations are methods of the experiment."""
    by_ablation = {m.ablation: m for m in spec.methods if m.ablation is not None}
    if any(a not in by_ablation for a in ABLATION_ORDER):
        return None
    metrics = PROTOCOL_COLUMNS[spec.protocol]
    cells = {a: method_cells(spec, [s for _, s in done[by_ablation[a].label]]) for a in ABLATION_ORDER}
    marks: dict[str, list[int]] = {}
    for k in metrics:
        means = [cells[a].get(k, {}).get("mean") for a in ABLATION_ORDER]
        marks[k] = rank_positions(means, METRICS[k].higher_is_better, 2)
    lines = [
        f"{spec.name}: effects of MCSA and TAMW; {_spread(spec)}. The best is in bold, the second "
        "underlined.",
        "",
        "| MCSA | TAMW | " + " | ".join(metric_header(k) for k in metrics) + " | Seeds |",
        "|:-:|:-:|" + "---:|" * len(metrics) + "---:|",
    ]
    for i, a in enumerate(ABLATION_ORDER):
        vals = [_mark(cells[a].get(k, {}), marks[k][i]) for k in metrics]
        n = len(done[by_ablation[a].label])
        lines.append(
            f"| {'✓' if a.mcsa else ''} | {'✓' if a.tamw else ''} | "
            + " | ".join(vals)
            + f" | {n}/{len(spec.seeds)} |"
        )
    return "\n".join(lines) + "\n"


def _mark(cell: dict[str, Any], rank: int) -> str:
    mean, std = cell.get("mean"), cell.get("std")
    if mean is None:
        return "–"
    num = f"{mean:.2f}"
    num = f"**{num}**" if rank == 0 else f"<u>{num}</u>" if rank == 1 else num
    return num + ("" if std is None else f" ±{std:.2f}")


def cost_markdown(spec: ExperimentSpec, layout: Layout, done: dict[str, list]) -> str:
    """``cost.md``: a row per network method (cost probe, prediction and training times of its runs)."""
    lines = [
        f"# {spec.name}: cost per method",
        "",
        "| Method | Network | Parameters (M) | Forward (GFLOP) | Train step (s) | Peak memory (MiB) "
        "| Prediction (s/case) | Training (min/run) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes: dict[str, list[str]] = {}
    for m in spec.methods:
        if m.training_free:
            continue
        cost = {} if m.nnunet is not None else _read_json(layout.cost(m)) or {}
        pred, train = _run_times(spec, layout, m)
        cells = [
            _num(cost.get("params"), 1e-6, 2),
            _num(cost.get("gflop"), 1, 1),
            _num(cost.get("train_step_s"), 1, 3),
            _num(cost.get("peak_memory_mib"), 1, 0),
            pred,
            train,
        ]
        lines.append(f"| {m.title} | {m.network} | " + " | ".join(cells) + " |")
        notes.setdefault(_cost_note(m, cost), []).append(m.title)
    lines += [
        "",
        *_grouped_notes(notes),
        "",
        "Prediction: seconds per whole test case (read, preprocess, "
        "sliding window, write), mean over the cases each run predicted (n). Training: wall-clock "
        "minutes per run (finished.json), mean over the runs done.",
    ]
    return "\n".join(lines) + "\n"


def _grouped_notes(notes: dict[str, list[str]]) -> list[str]:
    """The notes under the cost table; where the rows were measured differently (another thread count, a
    probe that failed), each note names the rows it holds for."""
    if len(notes) == 1:
        return list(notes)
    return [f"- {', '.join(titles)}: {note[2:]}" for note, titles in sorted(notes.items())]


def _cost_note(m: MethodSpec, cost: dict[str, Any]) -> str:
    if m.nnunet is not None:
        return (
            "- nnU-Net's own network and patch (its plans): not probed here; prediction "
            "time is nnU-Net's wall time over the cases (one process for all), training time its "
            "nnUNetv2_train wall time."
        )
    if not cost:
        return "- not measured yet: the cost probe runs before a method's first training run."
    if "error" in cost:
        return f"- the cost probe failed ({cost['error']})."
    patch = "x".join(str(v) for v in cost.get("patch", []))
    return (
        f"- Forward: one eval forward at {patch}, batch 1 (FlopCounterMode). Train step: batch "
        f"{cost.get('train_batch')} patches of {patch}, amp {cost.get('amp')}, on {cost.get('device')}. "
        f"Peak memory: {cost.get('memory_kind')}."
    )


def _run_times(spec: ExperimentSpec, layout: Layout, method: MethodSpec) -> tuple[str, str]:
    """Mean prediction seconds per case (with n) and mean training minutes per run, over done runs."""
    per_case: list[float] = []
    minutes: list[float] = []
    for run in plan_runs(spec):
        if run.method.label != method.label or read_done(layout, run) is None:
            continue
        timing = _read_json(layout.run_dir(run) / "timing.json") or {}
        per_case += [float(s) for s in timing.get("predict_seconds_per_case", [])]
        finished = _read_json(layout.run_dir(run) / "finished.json") or {}
        if finished.get("seconds") is not None:
            minutes.append(float(finished["seconds"]) / 60.0)
    pred = f"{sum(per_case) / len(per_case):.2f} (n={len(per_case)})" if per_case else "–"
    train = f"{sum(minutes) / len(minutes):.2f}" if minutes else "–"
    return pred, train


def _num(value: Any, scale: float, digits: int) -> str:
    return "–" if value is None else f"{float(value) * scale:.{digits}f}"


def _read_json(path: Path) -> dict[str, Any] | None:
    doc = read_json(path)
    return doc if isinstance(doc, dict) else None


# ------------------------------------------------------------------------------------------- Table 3, figures
def done_runs(spec: ExperimentSpec, layout: Layout, method: MethodSpec) -> list[Run]:
    """A method's finished runs, in seed order."""
    return [r for r in plan_runs(spec) if r.method.label == method.label and read_done(layout, r) is not None]


def write_table3(spec: ExperimentSpec, layout: Layout) -> list[Path]:
    """``table3.md``/``table3.csv``: per H2ASeg method whose runs recorded TAMW's weights (the predict step's
    ``analysis/table3.csv``), Table 3 over its done runs: mean of the run means ± mean of the run stds over
    test cases, as Table 1 (:func:`h2aseg.analysis.tamw_weights.combine_tables`)."""
    from h2aseg.analysis import tamw_weights as tw

    sections, rows = [], []
    for m in spec.methods:
        files = [layout.run_dir(r) / "analysis" / "table3.csv" for r in done_runs(spec, layout, m)]
        tables = [tw.read_table3_csv(f) for f in files if f.is_file()]
        if not tables:
            continue
        combined = tw.combine_tables(tables)
        notes = [
            f"{len(tables)} of {len(spec.seeds)} seeds; each run: its test cases, sliding windows as "
            f"its predict step; per-run tables and raw CSVs in runs/{m.label}/seed<N>/analysis/."
        ]
        sections.append(tw.table3_markdown(combined, title=f"Table 3: {m.title}", notes=notes))
        rows += [{"method": m.label, **r} for r in combined]
    if not sections:
        return []
    csv_text = tw.rows_csv(rows, ("method", *tw.TABLE_COLUMNS, "n_runs"))
    return [
        atomic_write_text(layout.out / "table3.md", "\n".join(sections)),
        atomic_write_text(layout.out / "table3.csv", csv_text),
    ]


def write_figures(
    spec: ExperimentSpec,
    layout: Layout,
    cases: list[Case],
    log: Callable[[str], None],
    n_cases: int = 3,
    validation: list[Case] | None = None,
) -> list[Path]:
    """Fig. 3 (``fig3.png``: every method with a done run, the predictions of its first seed predicted
    on this machine) and Fig. 4 (``fig4_<case>.png``: a row per H2ASeg method with TAMW whose checkpoint is
    here, TAMW only first) on the ``n_cases`` test cases with the most ground truth, and the lesion
    detection tables of those predictions on every test case (``detection/``); with ``validation`` (the
    validation cases of an experiment that evaluates them), the same tables of the same runs' validation
    predictions (``detection-val/``: what a decision may read). Runs finished elsewhere and
    copied as small files (no predictions) are left out, and the log names their methods. Not under the
    tables lock (they read images and run models); an output that cannot be made is logged, not raised."""
    from h2aseg.analysis.overlays import method_comparison, pick_cases
    from h2aseg.experiments.steps import run_checkpoint

    firsts, elsewhere = _runs_with_predictions(spec, layout)
    if elsewhere:
        log(
            f"Fig. 3, Fig. 4 and detection/ leave out {', '.join(elsewhere)}: no done run of theirs has its "
            "predictions here (made on another machine: only their small files were copied)"
        )
    chosen = pick_cases(cases, n_cases, _gt_volumes(layout, firsts)) if firsts else []
    if not chosen:
        return []
    paths: list[Path] = []
    titles = [r.method.title for r in firsts]
    names = titles if len(set(titles)) == len(titles) else [r.method.label for r in firsts]
    dirs = {name: layout.run_dir(run) / "predictions" for name, run in zip(names, firsts, strict=True)}
    try:
        paths.append(method_comparison(chosen, dirs, layout.out / "fig3.png", title=f"{spec.name}: Fig. 3"))
    except Exception as e:  # a figure is never worth failing the experiment over
        log(f"fig3.png not drawn ({type(e).__name__}: {e})")
    paths += _detection_tables(spec, layout, dirs, cases, validation, log)
    tamw = [
        run
        for run in firsts
        if (layout.run_dir(run) / "analysis" / "table3.csv").is_file()
        and run_checkpoint(layout.run_dir(run)).is_file()
    ]
    if tamw:
        try:
            tamw.sort(key=lambda r: bool(r.method.ablation and r.method.ablation.mcsa))  # TAMW only first
            paths += _fig4(layout, tamw, chosen)
        except Exception as e:
            log(f"fig4 not drawn ({type(e).__name__}: {e})")
    return paths


def _runs_with_predictions(spec: ExperimentSpec, layout: Layout) -> tuple[list[Run], list[str]]:
    """Per method, its first done run whose test predictions are on this machine; and the labels of the
    methods with done runs but none of them predicted here (their figures' column would be empty)."""
    firsts: list[Run] = []
    elsewhere: list[str] = []
    for m in spec.methods:
        runs = done_runs(spec, layout, m)
        here = [r for r in runs if _has_masks(layout.run_dir(r) / "predictions")]
        if here:
            firsts.append(here[0])
        elif runs:
            elsewhere.append(m.label)
    return firsts, elsewhere


def _has_masks(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.endswith((".nii.gz", ".nii")) for p in folder.iterdir())


def _detection_tables(
    spec: ExperimentSpec,
    layout: Layout,
    dirs: dict[str, Path],
    cases: list[Case],
    validation: list[Case] | None,
    log: Callable[[str], None],
) -> list[Path]:
    """``detection/`` from the test predictions ``dirs``; ``detection-val/`` from the same runs' validation
    predictions when ``validation`` is given and they are here. Problems are logged, not raised."""
    from h2aseg.synth.cohort import phantom_sites

    val_dirs = {k: d.with_name("predictions" + PART_SUFFIX["validation"]) for k, d in dirs.items()}
    val_dirs = {k: d for k, d in val_dirs.items() if _has_masks(d)}
    parts = [("detection", dirs, cases)]
    if validation and val_dirs:
        parts.append(("detection-val", val_dirs, validation))
    try:  # a synthetic cohort's record, read once: lesion sites and decoys
        sites = phantom_sites(spec.dataset.root) if spec.dataset.root.is_dir() else ({}, {})
    except Exception as e:
        log(f"detection tables not written ({type(e).__name__}: {e})")
        return []
    paths: list[Path] = []
    for folder, part_dirs, part_cases in parts:
        try:
            paths += _detection(part_dirs, part_cases, layout.out / folder, *sites)
        except Exception as e:
            log(f"{folder}/ tables not written ({type(e).__name__}: {e})")
    return paths


def _detection(
    dirs: dict[str, Path],
    cases: list[Case],
    out: Path,
    sites: dict[str, list[LesionSite]],
    decoys: dict[str, list[LesionSite]],
) -> list[Path]:
    """``analyze detection``'s tables of ``dirs`` on ``cases`` (and the decoys marked, for a decoy cohort)."""
    from h2aseg.evaluation.decoys import method_decoys, write_decoys
    from h2aseg.evaluation.detection import method_lesions, write_detection

    rows = [les for name, d in dirs.items() for les in method_lesions(name, d, cases, sites=sites)]
    paths = write_detection(rows, list(dirs), out)
    if decoys:
        marks = [r for name, d in dirs.items() for r in method_decoys(name, d, decoys)]
        paths += write_decoys(marks, list(dirs), out)
    return paths


def _gt_volumes(layout: Layout, runs: list[Run]) -> dict[str, float] | None:
    """``{case_id: ground-truth volume (ml)}`` from a done run's evaluation (None: read the labels)."""
    import csv

    for run in runs:
        try:
            with open(layout.run_dir(run) / "evaluation" / "per_case.csv", newline="", encoding="utf-8") as f:
                return {r["case_id"]: float(r.get("mtv_gt_ml") or 0.0) for r in csv.DictReader(f)}
        except (OSError, KeyError, ValueError):
            continue
    return None


def _fig4(layout: Layout, runs: list[Run], cases: list[Case]) -> list[Path]:
    from h2aseg.analysis.common import load_model as load_h2aseg
    from h2aseg.analysis.features import draw_feature_figures
    from h2aseg.experiments.steps import run_checkpoint

    models = [load_h2aseg(run_checkpoint(layout.run_dir(r))) for r in runs]
    return draw_feature_figures(models, cases, layout.out)
