"""``h2aseg evaluate`` (score a prediction folder), ``h2aseg evaluate-table`` (Table 1 from several runs),
``h2aseg evaluate-paired`` (two models on the same studies, and the shipping rule)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from h2aseg.cli.common import err_console, fail

if TYPE_CHECKING:
    from h2aseg.evaluation.matching import Matching
    from h2aseg.evaluation.pipeline import EvaluationResult


class Protocol(StrEnum):
    paper = "paper"
    autopet = "autopet"
    hecktor = "hecktor"


class HD95Convention(StrEnum):
    medpy = "medpy"
    monai = "monai"


class GTLayout(StrEnum):
    auto = "auto"
    folder = "folder"
    autopet = "autopet"
    autopet_nnunet = "autopet-nnunet"
    hecktor = "hecktor"
    csv = "csv"


def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of predicted masks named <case_id>.nii.gz."),
    gt: Path = typer.Option(
        ...,
        "--gt",
        help="Ground truth: a dataset root (any supported layout), a CSV "
        "manifest, or a plain folder of masks named <case_id>.nii.gz.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for per_case.csv, summary.json, summary.md."),
    protocol: Protocol = typer.Option(
        Protocol.paper,
        "--protocol",
        help="paper: Table 1 (Dice, HD95, "
        "precision, recall); autopet: Dice, FPV, FNV; hecktor: per-class and "
        "aggregated Dice (labels 0/1/2).",
    ),
    gt_layout: GTLayout = typer.Option(GTLayout.auto, "--gt-layout", help="Layout of --gt."),
    hd95: HD95Convention = typer.Option(
        HD95Convention.medpy,
        "--hd95",
        help="medpy: 95th percentile of both "
        "directions pooled (the paper); monai: max of the directed 95th "
        "percentiles.",
    ),
    hd95_empty_penalty: float | None = typer.Option(
        None,
        "--hd95-empty-penalty",
        help="HD95 (mm) for a lesion case with an empty prediction; default: excluded (NaN).",
    ),
    resample: bool = typer.Option(
        False,
        "--resample",
        help="Resample predictions on another grid onto the "
        "ground truth (nearest neighbour) instead of refusing them.",
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Score cases without a prediction as empty predictions instead of failing.",
    ),
    label_map: list[str] = typer.Option(
        [],
        "--label-map",
        help="VALUE=LABEL: map a label value in ground "
        "truth and prediction before scoring (repeatable, e.g. --label-map "
        "7=1 --label-map 2=0). Without it, labels other than 0/1 (hecktor: "
        "0/1/2) are an error.",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Cases evaluated in parallel (processes)."),
    nnunet_cases: Path | None = typer.Option(
        None,
        "--nnunet-cases",
        help="h2aseg_cases.json (or its dataset "
        "folder) from export-nnunet: mask files named by an nnU-Net "
        "identifier (in --pred and --gt) count as its case id.",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="train | val | test: score only the ground-truth cases of that part of --split-file (e.g. "
        "after h2aseg predict --split val).",
    ),
    split_file: Path | None = typer.Option(
        None, "--split-file", help="The split.json that --split reads (a run folder's, or data.split_file)."
    ),
) -> None:
    """Score predictions against ground truth by case id; writes per-case and summary tables."""
    _check_flags(pred)
    only_cases = _split_cases(split, split_file)
    res, paths = _score(
        pred,
        gt,
        out,
        protocol=protocol.value,
        gt_layout=gt_layout.value,
        hd95_convention=hd95.value,
        hd95_empty_penalty=hd95_empty_penalty,
        resample=resample,
        allow_missing=allow_missing,
        label_map=label_map,
        jobs=jobs,
        nnunet_cases=nnunet_cases,
        only_cases=only_cases,
    )
    _warn_unmatched(res.matching)
    _print_summary(res.summary, paths)


def _check_flags(pred: Path) -> None:
    """The flags that can be checked before anything is read (a one-line error)."""
    if not pred.is_dir():
        raise fail(f"{pred}: prediction folder not found")


def _split_cases(part: str | None, split_file: Path | None) -> list[str] | None:
    """The case ids of ``part`` of ``split_file`` (``--split`` / ``--split-file``), or None for every case."""
    from h2aseg.data.splits import PARTS, SplitError, load_split

    if part is None and split_file is None:
        return None
    if part is None or split_file is None:
        raise fail("--split and --split-file go together: --split PART --split-file SPLIT.json")
    if part not in PARTS:
        raise fail(f"--split {part!r}: choose one of {', '.join(PARTS)}")
    try:
        return load_split(split_file).part(part)
    except (SplitError, OSError) as e:
        raise fail(str(e)) from None


def _score(
    pred: Path,
    gt: Path,
    out: Path,
    *,
    protocol: str,
    gt_layout: str,
    hd95_convention: str,
    hd95_empty_penalty: float | None,
    resample: bool,
    allow_missing: bool,
    label_map: list[str],
    jobs: int,
    nnunet_cases: Path | None,
    only_cases: list[str] | None = None,
) -> tuple[EvaluationResult, dict[str, Path]]:
    """Evaluate every case under a progress bar (:func:`~h2aseg.evaluation.pipeline.evaluate_folders`) and
    write the tables; an input or file error is a one-line error."""
    from h2aseg.data.nnunet_export import load_case_map
    from h2aseg.errors import H2ASegError
    from h2aseg.evaluation.matching import parse_label_map
    from h2aseg.evaluation.pipeline import evaluate_folders
    from h2aseg.evaluation.report import write_evaluation

    try:
        mapping = parse_label_map(label_map)
        case_ids = None if nnunet_cases is None else load_case_map(nnunet_cases)
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as prog:
            task = prog.add_task("evaluating", total=None)

            def _tick(case_id: str, done: int, total: int) -> None:
                prog.update(task, completed=done, total=total, description=f"evaluated {escape(case_id)}")

            res = evaluate_folders(
                pred,
                gt,
                protocol=protocol,
                gt_layout=gt_layout,
                hd95_convention=hd95_convention,
                hd95_empty_penalty=hd95_empty_penalty,
                resample=resample,
                allow_missing=allow_missing,
                label_map=mapping,
                case_ids=case_ids,
                only_cases=only_cases,
                jobs=jobs,
                on_case=_tick,
            )
        paths = write_evaluation(out, res.rows, res.summary)
    except (H2ASegError, OSError) as e:
        raise fail(str(e)) from None
    return res, paths


def _warn_unmatched(matching: Matching) -> None:
    """Warnings for predictions without ground truth and cases scored without a prediction."""
    if matching.extra:
        err_console.print(
            f"[yellow]warning:[/yellow] {len(matching.extra)} prediction(s) without ground truth, "
            f"not scored: {escape(', '.join(matching.extra[:8]))}"
            + (" ..." if len(matching.extra) > 8 else "")
        )
    if matching.missing:
        err_console.print(
            f"[yellow]warning:[/yellow] {len(matching.missing)} case(s) without prediction scored "
            f"as empty: {escape(', '.join(matching.missing[:8]))}"
            + (" ..." if len(matching.missing) > 8 else "")
        )


def _print_summary(s: dict[str, Any], paths: dict[str, Path]) -> None:
    """The summary table (mean ± std and n per metric) and the files written, on stdout."""
    from h2aseg.evaluation.report import METRICS, format_cell

    table = Table(
        title=f"{s['protocol']} protocol: {s['n_cases']} cases "
        f"({s['n_lesion_cases']} with lesions), HD95 {s['hd95_convention']}"
    )
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("n", justify="right")
    for key in s["columns"]:
        m = s["metrics"][key]
        info = METRICS[key]
        table.add_row(
            f"{info.label} [{info.unit}]" if info.unit else info.label,
            format_cell(m["mean"], m["std"]),
            str(m["n"]),
        )
    con = Console()
    con.print(table)
    for p in paths.values():
        con.print(f"wrote {escape(str(p))}")


def evaluate_table(
    run: list[str] = typer.Option(
        ...,
        "--run",
        help="METHOD=PATH or METHOD@DATASET=PATH, PATH being an "
        "evaluation folder or its summary.json; repeat (same METHOD[@DATASET] "
        "again = another run, averaged).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for table.md, table.tex, table.json."),
) -> None:
    """Aggregate runs (mean of run means ± mean of per-case stds) into a Table-1 style table."""
    from h2aseg.errors import H2ASegError
    from h2aseg.evaluation.report import load_summary, write_runs_table

    runs: dict[str, dict[str, list[dict]]] = {}
    try:
        for spec in run:
            key, sep, path = spec.partition("=")
            if not sep or not key or not path:
                raise H2ASegError(f"--run {spec!r}: expected METHOD=PATH or METHOD@DATASET=PATH")
            method, _, group = key.partition("@")
            runs.setdefault(method, {}).setdefault(group, []).append(load_summary(path))
        paths = write_runs_table(runs, out)
    except (H2ASegError, OSError) as e:
        raise fail(str(e)) from None
    con = Console()
    con.print(paths["markdown"].read_text(encoding="utf-8"))
    for p in paths.values():
        con.print(f"wrote {escape(str(p))}")


def evaluate_paired(
    candidate: Path = typer.Option(
        ..., "--candidate", help="Evaluation folder (or its per_case.csv) of the model under test."
    ),
    reference: Path = typer.Option(
        ..., "--reference", help="Evaluation folder (or its per_case.csv) of the model it is judged against."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for paired.md and paired.json."),
    candidate_name: str = typer.Option(
        "candidate", "--candidate-name", help="The candidate's name in the table."
    ),
    reference_name: str = typer.Option(
        "reference", "--reference-name", help="The reference's name in the table."
    ),
) -> None:
    """Two models on the same studies: paired Dice difference ± SE, lesions found, FP lesions per study,
    and the shipping rule of docs/training-notes.md section 14."""
    from h2aseg.errors import H2ASegError
    from h2aseg.evaluation.paired import compare_evaluations, write_comparison

    try:
        cmp = compare_evaluations(candidate, reference, candidate_name, reference_name)
        paths = write_comparison(cmp, out)
    except (H2ASegError, OSError) as e:
        raise fail(str(e)) from None
    con = Console()
    con.print(escape(paths["markdown"].read_text(encoding="utf-8")), soft_wrap=True)
    for p in paths.values():
        con.print(f"wrote {escape(str(p))}")


def register(app: typer.Typer) -> None:
    """Add ``evaluate``, ``evaluate-table`` and ``evaluate-paired`` to the ``h2aseg`` app."""
    app.command("evaluate")(evaluate)
    app.command("evaluate-table")(evaluate_table)
    app.command("evaluate-paired")(evaluate_paired)
