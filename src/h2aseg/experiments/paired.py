"""Paired comparisons: every method against the experiment's ``reference``, study by study.

With only a few dozen test studies, the spread of Dice between studies (a faint lesion against a big one)
is far larger than the difference between two methods; comparing the *same* studies removes it. For each
``evaluate_on`` part (validation, test) and metric (Dice, by default) this module reads every done run's
``per_case.csv`` and writes ``paired.md`` / ``paired.json``:

* per method: the mean over studies with lesions of its seed-averaged metric, with the standard error over
  studies (``sd / sqrt(n)``);
* against the reference, over the seeds both have: the mean of the per-study differences (each study's
  difference averaged over those seeds), its standard error over studies, the studies where the method
  is better / worse, and the difference of each seed's means (how much of it the seed moves).

Decisions are made on the validation part; the test part then says what it says (docs/results.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.evaluation.paired import Estimate, estimate
from h2aseg.evaluation.report import read_per_case_csv
from h2aseg.experiments.plan import Layout, plan_runs, read_done
from h2aseg.experiments.spec import ExperimentSpec, MethodSpec
from h2aseg.files import atomic_write_text

#: ``{seed: {case_id: value}}`` of one method, one part, one metric (studies with lesions only).
SeedValues = dict[int | None, dict[str, float]]


@dataclass(frozen=True)
class PairedRow:
    """One method on one part: its own mean and, unless it is the reference, the paired difference."""

    label: str
    title: str
    seeds: list[int | None]
    level: Estimate | None
    diff: Estimate | None = None
    common_seeds: list[int | None] | None = None
    better: int = 0
    worse: int = 0
    seed_diffs: list[float] | None = None


def method_values(
    spec: ExperimentSpec, layout: Layout, method: MethodSpec, part: str, metric: str = "dice"
) -> SeedValues:
    """The metric of every study with lesions, per done seed of ``method`` (seed None: training-free)."""
    out: SeedValues = {}
    for run in plan_runs(spec):
        if run.method.label != method.label or read_done(layout, run) is None:
            continue
        path = layout.evaluation(run, part) / "per_case.csv"
        if not path.is_file():
            continue
        values = {}
        for row in read_per_case_csv(path):
            v = row.get(metric)
            if row.get("has_lesion") == 1.0 and isinstance(v, float) and math.isfinite(v):
                values[str(row["case_id"])] = v
        out[run.seed] = values
    return out


def seed_mean(values: SeedValues, seeds: list[int | None]) -> dict[str, float]:
    """Each study's value averaged over ``seeds`` (studies present in every one of them)."""
    common = set.intersection(*(set(values[s]) for s in seeds)) if seeds else set()
    return {c: float(np.mean([values[s][c] for s in seeds])) for c in sorted(common)}


def compare(method: SeedValues, reference: SeedValues) -> tuple[Estimate | None, list, int, int, list[float]]:
    """Paired difference of ``method`` minus ``reference`` over their common seeds (a training-free
    side has one seed, None, which pairs with every seed of the other)."""
    if None in reference:
        reference = {s: reference[None] for s in method}
    if None in method:
        method = {s: method[None] for s in reference}
    seeds = sorted((s for s in method if s in reference), key=lambda s: -1 if s is None else s)
    if not seeds:
        return None, [], 0, 0, []
    m, r = seed_mean(method, seeds), seed_mean(reference, seeds)
    cases = sorted(set(m) & set(r))
    d = [m[c] - r[c] for c in cases]
    per_seed = []
    for s in seeds:
        both = sorted(set(method[s]) & set(reference[s]))
        if both:
            per_seed.append(float(np.mean([method[s][c] - reference[s][c] for c in both])))
    return estimate(d), seeds, sum(x > 0 for x in d), sum(x < 0 for x in d), per_seed


def paired_rows(
    spec: ExperimentSpec, layout: Layout, part: str, metric: str = "dice", reference: str | None = None
) -> list[PairedRow]:
    """A row per method (the reference first: ``reference``, else the experiment's) on ``part``."""
    values = {m.label: method_values(spec, layout, m, part, metric) for m in spec.methods}
    return rows_against(spec, values, reference or spec.reference)


def rows_against(
    spec: ExperimentSpec, values: dict[str, SeedValues], reference: str | None
) -> list[PairedRow]:
    """:func:`paired_rows` from each method's values already read (``values``: label -> seed values)."""
    assert reference is not None
    by_label = {m.label: m for m in spec.methods}
    ordered = [by_label[reference], *(m for m in spec.methods if m.label != reference)]
    ref = values[reference]
    rows = []
    for m in ordered:
        own = values[m.label]
        seeds = sorted(own, key=lambda s: -1 if s is None else s)
        level = estimate(list(seed_mean(own, seeds).values())) if seeds else None
        if m.label == reference:
            rows.append(PairedRow(m.label, m.title, seeds, level))
            continue
        diff, common, better, worse, per_seed = compare(own, ref)
        rows.append(PairedRow(m.label, m.title, seeds, level, diff, common, better, worse, per_seed))
    return rows


def _seeds_text(seeds: list[int | None] | None) -> str:
    if not seeds:
        return "–"
    return "fixed" if seeds == [None] else ", ".join(str(s) for s in seeds if s is not None)


def paired_markdown(
    spec: ExperimentSpec, rows_by_part: dict[str, list[PairedRow]], reference: str | None = None
) -> str:
    """``paired.md``: one table per part (against ``reference``, else the experiment's)."""
    reference = reference or spec.reference
    ref = next(m.title for m in spec.methods if m.label == reference)
    lines = [
        f"# {spec.name}: paired differences against {ref}",
        "",
        "Dice (%) over the studies with lesions: each method's mean of its seed-averaged per-study Dice ±"
        " its standard error over studies; the paired difference to the reference (mean of per-study"
        " differences over the seeds both have ± standard error over studies); studies better / worse;"
        " the difference of the means of each common seed. Decide on the validation part.",
    ]
    for part, rows in rows_by_part.items():
        n = max((r.level.n for r in rows if r.level is not None), default=0)
        lines += [
            "",
            f"## {part} part ({n} studies with lesions)",
            "",
            "| method | seeds | Dice | Δ vs reference | better / worse | Δ per seed |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            level = "–" if r.level is None else r.level.text()
            if r.label == reference:
                lines.append(f"| {r.title} (reference) | {_seeds_text(r.seeds)} | {level} | | | |")
                continue
            seeds = _seeds_text(r.common_seeds)
            diff = "–" if r.diff is None else f"{r.diff.text(signed=True)} (seeds {seeds})"
            per_seed = ", ".join(f"{v:+.1f}" for v in r.seed_diffs or []) or "–"
            counts = f"{r.better} / {r.worse}" if r.diff is not None else "–"
            lines.append(f"| {r.title} | {_seeds_text(r.seeds)} | {level} | {diff} | {counts} | {per_seed} |")
    return "\n".join(lines) + "\n"


def write_paired(spec: ExperimentSpec, layout: Layout) -> list[Path]:
    """``paired.md`` and ``paired.json`` when the experiment names a ``reference`` (else nothing), and
    ``paired-vs-<label>.md/.json`` for each further label of ``reference: [...]``."""
    if spec.reference is None:
        return []
    values = {  # read once, paired against each reference
        part: {m.label: method_values(spec, layout, m, part, "dice") for m in spec.methods}
        for part in spec.evaluate_on
    }
    written = []
    for reference in (spec.reference, *spec.also_against):
        stem = "paired" if reference == spec.reference else f"paired-vs-{reference}"
        rows_by_part = {part: rows_against(spec, values[part], reference) for part in spec.evaluate_on}
        doc: dict[str, Any] = {
            "reference": reference,
            "metric": "dice",
            "parts": {part: [asdict(r) for r in rows] for part, rows in rows_by_part.items()},
        }
        written += [
            atomic_write_text(layout.out / f"{stem}.md", paired_markdown(spec, rows_by_part, reference)),
            atomic_write_text(layout.out / f"{stem}.json", json.dumps(doc, indent=2) + "\n"),
        ]
    return written
