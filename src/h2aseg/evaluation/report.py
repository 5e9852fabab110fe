"""Per-case CSV, summary JSON/markdown, and Table-1 style tables over several runs and methods.

Summary rule: a metric's mean/std are over the cases in its population (:data:`LESION_CASE_METRICS`: the
lesion cases, ``has_lesion == 1``, for Dice, HD95, precision, recall and FN volume — the paper: "we only
calculate Dice and HD95 in samples with lesions"; every case for FP volume, the lesion counts and MTVs) whose
per-case value is a number (``NaN`` = undefined, e.g. HD95 of a missed lesion case without a penalty).
``std`` is the sample standard deviation over cases (``ddof=1``, as ``pandas.Series.describe`` used by the
AutoPET organisers). Several runs (the paper averages four) are combined by :func:`aggregate_runs`: mean of
the run means ± mean of the run stds (the paper's ± is a spread over cases, not over runs); the spread of the
run means is kept as ``std_runs``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.errors import InputError
from h2aseg.evaluation.metrics import CORE_COLUMNS, HECKTOR_CLASSES, LESION_COLUMNS, hecktor_aggregate
from h2aseg.files import atomic_write_text

PROTOCOLS = ("paper", "autopet", "hecktor")

#: Metrics averaged over the cases with lesions only; every other metric is averaged over all cases.
LESION_CASE_METRICS = frozenset({"dice", "hd95", "precision", "recall", "fn_volume_ml"})


@dataclass(frozen=True)
class MetricInfo:
    """Display name, direction and unit of a summary metric."""

    label: str
    higher_is_better: bool
    unit: str = ""


METRICS: dict[str, MetricInfo] = {
    "dice": MetricInfo("Dice", True, "%"),
    "hd95": MetricInfo("HD95", False, "mm"),
    "precision": MetricInfo("Precision", True, "%"),
    "recall": MetricInfo("Recall", True, "%"),
    "fp_volume_ml": MetricInfo("FPV", False, "ml"),
    "fn_volume_ml": MetricInfo("FNV", False, "ml"),
    "gt_lesions": MetricInfo("GT lesions", True),
    "pred_lesions": MetricInfo("Pred. lesions", True),
    "tp_lesions": MetricInfo("Detected lesions", True),
    "fn_lesions": MetricInfo("Missed lesions", False),
    "fp_lesions": MetricInfo("False lesions", False),
    "mtv_gt_ml": MetricInfo("MTV GT", True, "ml"),
    "mtv_pred_ml": MetricInfo("MTV pred.", True, "ml"),
    "dice_gtvp": MetricInfo("Dice GTVp", True, "%"),
    "dice_gtvn": MetricInfo("Dice GTVn", True, "%"),
    "dsc_agg_gtvp": MetricInfo("DSCagg GTVp", True, "%"),
    "dsc_agg_gtvn": MetricInfo("DSCagg GTVn", True, "%"),
    "dsc_agg_mean": MetricInfo("DSCagg mean", True, "%"),
}

#: Headline columns of each protocol's markdown table.
PROTOCOL_COLUMNS: dict[str, tuple[str, ...]] = {
    "paper": ("dice", "hd95", "precision", "recall"),
    "autopet": ("dice", "fp_volume_ml", "fn_volume_ml"),
    "hecktor": ("dsc_agg_gtvp", "dsc_agg_gtvn", "dsc_agg_mean", "dice", "hd95", "precision", "recall"),
}


def per_case_columns(protocol: str) -> tuple[str, ...]:
    """CSV columns for ``protocol`` (``case_id`` first; the HECKTOR per-class columns for ``hecktor``)."""
    from h2aseg.evaluation.metrics import hecktor_columns

    extra = hecktor_columns() if protocol == "hecktor" else ()
    return (
        "case_id",
        "has_lesion",
        *CORE_COLUMNS,
        *LESION_COLUMNS,
        *extra,
        "prediction_missing",
        "resampled",
    )


def _finite_values(rows: Iterable[Mapping[str, Any]], key: str) -> np.ndarray:
    vals = []
    for r in rows:
        v = r.get(key)
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            vals.append(f)
    return np.asarray(vals, dtype=np.float64)


def describe(values: np.ndarray) -> dict[str, float | int | None]:
    """``mean, std (ddof=1), median, min, max, n`` of finite values (None where undefined)."""
    n = int(values.size)
    if n == 0:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if n > 1 else None,
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
        "n": n,
    }


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    protocol: str = "paper",
    hd95_convention: str = "medpy",
    hd95_empty_penalty: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Summary of per-case rows: one :func:`describe` per metric, HECKTOR aggregates, counts and rules."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    cols = [c for c in per_case_columns(protocol) if c in METRICS]
    lesion_rows = [r for r in rows if _is_lesion_case(r)]
    metrics = {
        c: describe(_finite_values(lesion_rows if c in LESION_CASE_METRICS else rows, c)) for c in cols
    }
    if protocol == "hecktor":
        for k, v in hecktor_aggregate(rows, HECKTOR_CLASSES).items():
            metrics[k] = {
                "mean": _none_if_nan(v),
                "std": None,
                "median": None,
                "min": None,
                "max": None,
                "n": len(rows),
            }
    n_lesion = len(lesion_rows)
    out: dict[str, Any] = {
        "protocol": protocol,
        "hd95_convention": hd95_convention,
        "hd95_empty_penalty_mm": hd95_empty_penalty,
        "n_cases": len(rows),
        "n_lesion_cases": n_lesion,
        "n_lesion_free_cases": len(rows) - n_lesion,
        "columns": list(PROTOCOL_COLUMNS[protocol]),
        "metrics": metrics,
        "rules": {
            "dice_hd95_precision_recall_fnv": "mean over cases with lesions (has_lesion = 1)",
            "fpv_lesion_counts_mtv": "mean over all cases",
            "per_case": "Dice/FPV/FNV as autoPET val_script.py (Dice NaN only if both masks are empty, "
            "FNV 0 without lesions); precision/recall as medpy (0 on a zero denominator)",
            "hd95_empty_prediction": "excluded (NaN)"
            if hd95_empty_penalty is None
            else f"penalty {hd95_empty_penalty} mm",
            "std": "sample standard deviation over cases (ddof=1)",
            "components": "18-connectivity (cc3d), as the AutoPET scripts",
        },
    }
    if extra:
        out.update(extra)
    return out


def _is_lesion_case(row: Mapping[str, Any]) -> bool:
    try:
        return float(row.get("has_lesion") or 0) > 0
    except (TypeError, ValueError):
        return False


def _none_if_nan(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf as ``None``, NumPy scalars as Python numbers and paths as strings (for JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        if not math.isfinite(f):
            return "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)  # lossless
    return str(v)


def write_per_case_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write the per-case table (NaN written as ``nan``), atomically."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(r.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def read_per_case_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a per-case CSV back (numbers as float, ``case_id`` as str)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "case_id" else _float_or_str(v)) for k, v in r.items()})
    return rows


def _float_or_str(v: str) -> float | str:
    try:
        return float(v)
    except ValueError:
        return v


def format_cell(mean: float | None, std: float | None, digits: int = 2) -> str:
    """``"60.03±14.75"``, or the mean alone when there is no std; ``"–"`` when undefined."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None else f"±{std:.{digits}f}")


def metric_header(metric: str) -> str:
    """A table column head: the metric's label, its better direction and its unit."""
    info = METRICS[metric]
    arrow = "↑" if info.higher_is_better else "↓"
    return f"{info.label} ({arrow})" + (f" [{info.unit}]" if info.unit and info.unit != "%" else "")


def summary_markdown(summary: Mapping[str, Any], name: str = "this run") -> str:
    """Markdown table of the protocol's headline columns (mean ± std), plus the case counts and rules."""
    cols = list(summary["columns"])
    m = summary["metrics"]
    lines = [
        f"| {summary['protocol']} | " + " | ".join(metric_header(c) for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
        f"| {name} | " + " | ".join(format_cell(m[c]["mean"], m[c]["std"]) for c in cols) + " |",
        "",
        f"{summary['n_cases']} cases ({summary['n_lesion_cases']} with lesions, "
        f"{summary['n_lesion_free_cases']} lesion-free). Dice, precision, recall in %; "
        "mean ± sample std over cases with lesions (FPV: all cases). "
        f"HD95 convention: {summary['hd95_convention']}; empty prediction: "
        f"{summary['rules']['hd95_empty_prediction']}.",
    ]
    return "\n".join(lines) + "\n"


def write_evaluation(
    out_dir: str | Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_case": write_per_case_csv(rows, out / "per_case.csv", per_case_columns(summary["protocol"])),
        "summary": atomic_write_text(out / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n"),
        "markdown": atomic_write_text(out / "summary.md", summary_markdown(summary)),
    }
    return paths


# --------------------------------------------------------------------------------------------------------
# Several runs and methods: Table 1


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` (or the ``summary.json`` inside a folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise InputError(f"{p}: summary not found") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from e
    if not isinstance(data, dict) or "metrics" not in data:
        raise InputError(f"{p}: not an h2aseg evaluation summary (no 'metrics')")
    return data


def aggregate_runs(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Combine runs per metric: ``mean`` (of run means), ``std`` (mean of run stds), ``std_runs``, ``n_runs``.

    ``std`` is None unless every run has one.
    """
    if not summaries:
        raise ValueError("no runs to aggregate")
    keys = [k for k in summaries[0]["metrics"] if all(k in s["metrics"] for s in summaries)]
    out: dict[str, dict[str, float | int | None]] = {}
    for k in keys:
        means = [s["metrics"][k]["mean"] for s in summaries if s["metrics"][k].get("mean") is not None]
        stds = [s["metrics"][k]["std"] for s in summaries if s["metrics"][k].get("std") is not None]
        out[k] = {
            "mean": float(np.mean(means)) if means else None,
            "std": float(np.mean(stds)) if stds and len(stds) == len(means) else None,
            "std_runs": float(np.std(means, ddof=1)) if len(means) > 1 else None,
            "n_runs": len(means),
        }
    return out


Cell = Mapping[str, float | int | None]


def rank_positions(values: Sequence[float | None], higher_is_better: bool, digits: int) -> list[int]:
    """0 = best, 1 = second, 2 = other, on values rounded as displayed (ties share a rank)."""
    shown = sorted({round(v, digits) for v in values if v is not None}, reverse=higher_is_better)
    return [2 if v is None else min(shown.index(round(v, digits)), 2) for v in values]


def table1(
    rows: Mapping[str, Mapping[str, Mapping[str, Cell]]],
    columns: Sequence[tuple[str, str]],
    *,
    fmt: str = "markdown",
    digits: int = 2,
    caption: str = "Quantitative comparison (mean±std). The best is in bold, the second underlined.",
) -> str:
    """Table-1 style table of ``rows[method][group][metric] = {mean, std}`` over ``columns`` (group, metric).

    Per column the best mean is bold and the second underlined (ties share the mark), as in the paper.
    ``fmt``: ``"markdown"`` (underline as ``<u>..</u>``) or ``"latex"`` (booktabs, bold, underline).
    """
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"unknown table format {fmt!r} (markdown, latex)")
    methods = list(rows)
    cells: dict[str, list[str]] = {m: [] for m in methods}
    for group, metric in columns:
        vals = [rows[m].get(group, {}).get(metric, {}) for m in methods]
        means = [v.get("mean") for v in vals]
        ranks = rank_positions(means, METRICS[metric].higher_is_better, digits)  # type: ignore[arg-type]
        for m, v, rank in zip(methods, vals, ranks, strict=True):
            mean, std = v.get("mean"), v.get("std")
            if mean is None:
                cells[m].append("–")
                continue
            num = f"{mean:.{digits}f}"
            if fmt == "markdown":
                num = f"**{num}**" if rank == 0 else f"<u>{num}</u>" if rank == 1 else num
                cells[m].append(num + ("" if std is None else f" ±{std:.{digits}f}"))
            else:
                num = f"\\textbf{{{num}}}" if rank == 0 else f"\\underline{{{num}}}" if rank == 1 else num
                cells[m].append(num + ("" if std is None else f"$\\pm${std:.{digits}f}"))
    groups = list(dict.fromkeys(g for g, _ in columns))
    heads = [metric_header(metric) for _, metric in columns]
    if fmt == "markdown":
        top = (
            "| Methods | "
            + " | ".join(
                f"{g}: {h}" if len(groups) > 1 else h for (g, _), h in zip(columns, heads, strict=True)
            )
            + " |"
        )
        lines = [f"{caption}", "", top, "|---|" + "---:|" * len(columns)]
        lines += [f"| {_md_escape(m)} | " + " | ".join(cells[m]) + " |" for m in methods]
        return "\n".join(lines) + "\n"
    spans = [(g, sum(1 for gg, _ in columns if gg == g)) for g in groups]
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{_tex_escape(caption)}}}",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
    ]
    if len(groups) > 1 or groups[0]:
        lines.append(
            "Methods & "
            + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{_tex_escape(g)}}}" for g, n in spans)
            + " \\\\"
        )
        lines.append("".join(f"\\cmidrule(lr){{{a}-{a + n - 1}}}" for a, n in _starts(spans)))
    lines.append(
        " & "
        + " & ".join(_tex_escape(h).replace("↑", "$\\uparrow$").replace("↓", "$\\downarrow$") for h in heads)
        + " \\\\"
    )
    lines.append("\\midrule")
    lines += [f"{_tex_escape(m)} & " + " & ".join(cells[m]) + " \\\\" for m in methods]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _starts(spans: Sequence[tuple[str, int]]) -> list[tuple[int, int]]:
    out, col = [], 2
    for _, n in spans:
        out.append((col, n))
        col += n
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _tex_escape(s: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("$", "\\$"),
        ("{", "\\{"),
        ("}", "\\}"),
    ):
        s = s.replace(a, b)
    return s


def runs_table(
    runs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    columns: Sequence[tuple[str, str]] | None = None,
) -> tuple[dict[str, dict[str, dict[str, Cell]]], list[tuple[str, str]]]:
    """Aggregate ``runs[method][group] = [summary, ...]``; default columns = each group's protocol columns."""
    rows = {m: {g: aggregate_runs(list(s)) for g, s in groups.items()} for m, groups in runs.items()}
    if columns is None:
        seen: dict[str, tuple[str, ...]] = {}
        for groups in runs.values():
            for g, s in groups.items():
                seen.setdefault(g, tuple(s[0].get("columns") or PROTOCOL_COLUMNS["paper"]))
        columns = [(g, c) for g, cols in seen.items() for c in cols if c in METRICS]
    return rows, list(columns)


def write_runs_table(
    runs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    out_dir: str | Path,
    columns: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Path]:
    """Write ``table.md``, ``table.tex`` and ``table.json`` (the aggregated numbers) into ``out_dir``."""
    rows, cols = runs_table(runs, columns)
    out = Path(out_dir)
    return {
        "markdown": atomic_write_text(out / "table.md", table1(rows, cols, fmt="markdown")),
        "latex": atomic_write_text(out / "table.tex", table1(rows, cols, fmt="latex")),
        "json": atomic_write_text(
            out / "table.json",
            json.dumps(
                json_safe(
                    {
                        "columns": [list(c) for c in cols],
                        "rows": rows,
                        "n_runs": {m: {g: len(s) for g, s in gr.items()} for m, gr in runs.items()},
                    }
                ),
                indent=2,
            )
            + "\n",
        ),
    }
