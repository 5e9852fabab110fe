"""``h2aseg analyze``: the paper's analysis figures and tables from trained models and predictions.

- ``analyze tamw``: Table 3 (TAMW's PET/CT channel weights per depth) from an H2ASeg checkpoint;
- ``analyze features``: Fig. 4 (the level-2 feature maps TAMW weights most), one or two checkpoints;
- ``analyze mcsa``: how large MCSA's attention terms are against the features they are added to;
- ``analyze overlays``: Fig. 3 (several methods' masks side by side on the same cases);
- ``analyze runs``: several training runs' validation Dice against steps and training time;
- ``analyze detection``: which ground-truth lesions each method finds, by SUVmax and by volume;
- ``analyze confidence``: how well lesion confidence (lesions.csv's prob_mean, prob_max, tta_volume_cv)
  separates true from false-positive predicted lesions (ROC AUC; docs/quantify.md);
- ``analyze thresholds``: Dice, lesions found and FP lesions at several foreground thresholds, from the
  probability maps predict saved (choose the operating point on validation studies).

See docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail
from h2aseg.progress import progress_bar

analyze_app = typer.Typer(
    name="analyze",
    help="Table 3 (TAMW weights), Fig. 4 (level-2 features), Fig. 3 (method overlays), run curves, "
    "lesion detection by uptake and size, lesion confidence ROC AUC, MCSA attention scale, operating "
    "points from probability maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show the progress bar.")


def _errors() -> tuple[type[Exception], ...]:
    from h2aseg.errors import H2ASegError

    return (H2ASegError, OSError)


def _over_cases(
    title: str, progress: bool, run: Callable[[Callable[[int], None], Callable[[str], None]], list[Path]]
) -> None:
    """Run a per-case analysis under a progress bar (``run(start, advance)``: ``start(n)`` once the cases
    are known, ``advance(case_id)`` after each); print what it wrote; its errors as one line."""
    try:
        with progress_bar(title, progress, console=err_console) as bar:
            task = bar.add_task("", total=None)
            paths = run(
                lambda n: bar.update(task, total=n),
                lambda cid: bar.update(task, advance=1, description=cid),
            )
    except _errors() as e:
        raise fail(str(e)) from None
    for p in paths:
        err_console.print(f"wrote {p}", highlight=False)


@analyze_app.command("tamw")
def tamw(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A trained H2ASeg checkpoint (with TAMW)."),
    data: Path = typer.Option(..., "--data", help="The dataset folder (any supported layout)."),
    out: Path = typer.Option(..., "--out", help="Output folder: table3.md/.csv and the raw CSVs."),
    cases: int | None = typer.Option(None, "--cases", help="At most this many cases (in case-id order)."),
    split: str = typer.Option(
        "test",
        "--split",
        help="test | val | train | all: which cases of the model's "
        "split (the split stored in the checkpoint, else data.split_file, else the run "
        "folder's split.json, else one made as training would).",
    ),
    weighting: str = typer.Option(
        "uniform",
        "--window-weighting",
        help="uniform: a case's weights are the "
        "mean over its sliding windows; mass: foreground weights weighted by each "
        "window's predicted foreground share, background weights by the rest.",
    ),
    assignments: list[str] = typer.Option([], "--set", help="Override a stored config field (infer.*)."),
    progress: bool = PROGRESS,
) -> None:
    """Table 3: mean TAMW foreground/background weight (x100) of the PET and CT channels per depth."""
    from h2aseg.analysis.tamw_run import analyze_tamw

    _over_cases(
        "TAMW weights",
        progress,
        lambda start, advance: analyze_tamw(
            checkpoint,
            data,
            out,
            part=split,
            limit=cases,
            weighting=weighting,  # type: ignore[arg-type]
            overrides=assignments,
            on_start=start,
            on_case=lambda cid, _s: advance(cid),
        ),
    )


@analyze_app.command("features")
def features(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A trained H2ASeg checkpoint (with TAMW)."),
    compare: Path | None = typer.Option(
        None, "--compare", help="A second one (e.g. TAMW only), drawn as the second row."
    ),
    data: Path = typer.Option(..., "--data", help="The dataset folder holding the cases."),
    out: Path = typer.Option(..., "--out", help="Output folder: fig4_<case>.png per case."),
    case_ids: list[str] = typer.Option(..., "--case", help="A case id (repeat for several)."),
    top_k: int = typer.Option(3, "--top-k", help="Channels per modality (largest foreground weight)."),
    view: str = typer.Option("axial", "--view", help="axial | coronal."),
    progress: bool = PROGRESS,
) -> None:
    """Fig. 4: the level-2 PET and CT feature maps TAMW weights most for foreground emphasis."""
    from h2aseg.analysis.features import feature_figures

    ckpts = [checkpoint] if compare is None else [checkpoint, compare]

    def run(start: Callable[[int], None], advance: Callable[[str], None]) -> list[Path]:
        start(len(case_ids))
        return feature_figures(
            ckpts,
            data,
            case_ids,
            out,
            top_k=top_k,
            view=view,  # type: ignore[arg-type]
            on_case=lambda cid, _s: advance(cid),
        )

    _over_cases("Fig. 4", progress, run)


@analyze_app.command("mcsa")
def mcsa(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An H2ASeg checkpoint with MCSA."),
    data: Path = typer.Option(..., "--data", help="The dataset folder (any supported layout)."),
    out: Path = typer.Option(..., "--out", help="Output folder: mcsa_scale.md/.csv."),
    cases: int | None = typer.Option(None, "--cases", help="At most this many cases (in case-id order)."),
    split: str = typer.Option("test", "--split", help="test | val | train | all (as analyze tamw)."),
    init: bool = typer.Option(
        False, "--init", help="Measure the same network at its initialisation instead of its weights."
    ),
    assignments: list[str] = typer.Option([], "--set", help="Override a stored config field (infer.*)."),
    progress: bool = PROGRESS,
) -> None:
    """How large MCSA's attention terms are against the features they are added to, per level."""
    from h2aseg.analysis.mcsa_scale import analyze_mcsa

    _over_cases(
        "MCSA scale",
        progress,
        lambda start, advance: analyze_mcsa(
            checkpoint,
            data,
            out,
            part=split,
            limit=cases,
            init=init,
            overrides=assignments,
            on_start=start,
            on_case=advance,
        ),
    )


def parse_pred(text: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (the label from the folder's name:
    :func:`~h2aseg.analysis.overlays.prediction_label`)."""
    from h2aseg.analysis.overlays import prediction_label

    label, sep, folder = text.partition("=")
    if sep and label and folder:
        return label, Path(folder)
    return prediction_label(text), Path(text)


@analyze_app.command("overlays")
def overlays(
    preds: list[str] = typer.Option(
        ...,
        "--pred",
        help="A method's prediction folder (<case_id>.nii.gz, as "
        "h2aseg predict writes), as DIR or LABEL=DIR; repeat, a column each.",
    ),
    data: Path = typer.Option(..., "--data", help="The dataset folder (ground truth, CT, PET)."),
    out: Path = typer.Option(..., "--out", help="Output folder: fig3.png."),
    case_ids: list[str] = typer.Option(
        [],
        "--case",
        help="A case id, a row each (default: the --max-cases cases with the most ground-truth voxels).",
    ),
    max_cases: int = typer.Option(3, "--max-cases", help="Rows when no --case is given."),
    layout: str = typer.Option("auto", "--layout", help="Layout of --data."),
    view: str = typer.Option("coronal", "--view", help="coronal | axial."),
    base: str = typer.Option("ct", "--base", help="ct | pet: the image under the masks."),
) -> None:
    """Fig. 3: the same cases for several methods side by side (TP red, FN blue, FP yellow)."""
    from h2aseg.analysis.overlays import method_comparison, pick_cases
    from h2aseg.data.layouts import discover

    try:
        dirs = dict(parse_pred(p) for p in preds)
        if len(dirs) != len(preds):
            raise fail("two --pred folders have the same label; name them with LABEL=DIR")
        for label, folder in dirs.items():
            if not folder.is_dir():
                raise fail(f"{folder}: no such prediction folder (--pred {label})")
        cases = discover(data, layout)
        by_id = {c.case_id: c for c in cases}
        missing = [i for i in case_ids if i not in by_id]
        if missing:
            raise fail(f"{data}: no case(s) {', '.join(missing)} (found {len(cases)} cases)")
        chosen = [by_id[i] for i in case_ids] if case_ids else pick_cases(cases, max_cases)
        if not chosen:
            raise fail(f"{data}: no case with a lesion in its ground truth; name cases with --case")
        path = method_comparison(chosen, dirs, out / "fig3.png", axis=view, base=base)  # type: ignore[arg-type]
    except _errors() as e:
        raise fail(str(e)) from None
    err_console.print(f"wrote {path}", highlight=False)


@analyze_app.command("runs")
def runs(
    run_dirs: list[str] = typer.Option(
        ..., "--run", help="A run folder of h2aseg train (or its metrics.csv), as DIR or LABEL=DIR; repeat."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: runs.png, runs.md, runs.csv."),
    title: str | None = typer.Option(None, "--title", help="Figure title."),
) -> None:
    """Validation Dice of several runs against optimiser steps and training time, and a summary table."""
    from h2aseg.analysis.run_comparison import compare_runs

    try:
        pairs = [parse_run(r) for r in run_dirs]
        paths = compare_runs(pairs, out, title=title)
    except _errors() as e:
        raise fail(str(e)) from None
    for p in paths:
        err_console.print(f"wrote {p}", highlight=False)


@analyze_app.command("detection")
def detection(
    preds: list[str] = typer.Option(
        ...,
        "--pred",
        help="A method's prediction folder (<case_id>.nii.gz), as DIR or LABEL=DIR; repeat, a column each.",
    ),
    data: Path = typer.Option(..., "--data", help="The dataset folder (ground truth and PET/SUV)."),
    out: Path = typer.Option(..., "--out", help="Output folder: detection.md/.csv and lesions.csv."),
    layout: str = typer.Option("auto", "--layout", help="Layout of --data."),
    suv_edges: str = typer.Option("3,5,8", "--suv-edges", help="SUVmax strata edges."),
    volume_edges: str = typer.Option("1,10", "--volume-edges", help="Volume strata edges (ml)."),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Score a case another folder predicts but this one does not as an empty mask "
        "(cases no folder predicts are not scored).",
    ),
    resample: bool = typer.Option(
        False, "--resample", help="Resample predictions on another grid onto the ground truth's."
    ),
    sites_file: Path | None = typer.Option(
        None,
        "--sites",
        help="A synthetic cohort's phantom.json: adds each lesion's anatomical site and a per-site table, "
        "and, for a cohort with symmetric decoys, decoys.md/.csv: which decoys each method marks "
        "(default: DATA/phantom.json when it exists).",
    ),
    progress: bool = PROGRESS,
) -> None:
    """Which ground-truth lesions each method finds, by SUVmax, volume and site (docs/evaluation.md)."""
    from h2aseg.data.layouts import discover
    from h2aseg.evaluation.decoys import method_decoys, write_decoys
    from h2aseg.evaluation.detection import method_lesions, parse_edges, predicted_cases, write_detection
    from h2aseg.synth.cohort import phantom_sites

    try:
        dirs = dict(parse_pred(p) for p in preds)
        if len(dirs) != len(preds):
            raise fail("two --pred folders have the same label; name them with LABEL=DIR")
        suv = parse_edges(suv_edges, "--suv-edges", "SUVmax")
        vol = parse_edges(volume_edges, "--volume-edges", "volume")
        cases = predicted_cases(discover(data, layout), list(dirs.values()))
        sites, decoys = phantom_sites(data if sites_file is None else sites_file)
        rows = []
        with progress_bar("Lesions", progress, console=err_console) as bar:
            for label, folder in dirs.items():
                task = bar.add_task(label, total=sum(c.label is not None for c in cases))
                rows += method_lesions(
                    label,
                    folder,
                    cases,
                    allow_missing=allow_missing,
                    resample=resample,
                    sites=sites,
                    on_case=lambda _cid, task=task: bar.update(task, advance=1),
                )
        paths = write_detection(rows, list(dirs), out, suv_edges=suv, volume_edges_ml=vol)
        if decoys:  # a cohort with symmetric decoys (h2aseg synth --symmetric-decoys)
            marks = [r for label, folder in dirs.items() for r in method_decoys(label, folder, decoys)]
            paths += write_decoys(marks, list(dirs), out)
    except _errors() as e:
        raise fail(str(e)) from None
    for table in (p for p in paths if p.suffix == ".md"):  # detection.md, then decoys.md if any
        typer.echo(table.read_text(encoding="utf-8").rstrip("\n"))
    for p in paths:
        err_console.print(f"wrote {p}", highlight=False)


@analyze_app.command("confidence")
def confidence(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="A prediction folder with <case>_lesions.csv beside each mask (h2aseg predict --quantify; "
        "with --tta for tta_volume_cv).",
    ),
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="Ground truth: a dataset folder (any layout) or a folder of masks <case_id>.nii.gz; gives each "
        "predicted lesion's detected flag where its lesions.csv has none.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: confidence.md/.csv and the pooled lesions.csv."
    ),
    layout: str = typer.Option("auto", "--layout", help="Layout of --gt (auto | folder | a dataset layout)."),
    progress: bool = PROGRESS,
) -> None:
    """ROC AUC of each lesion-confidence column (and SUVmax, volume) for telling TP from FP lesions."""
    from h2aseg.analysis.lesion_confidence import analyze_confidence
    from h2aseg.evaluation.matching import ground_truth_masks

    def run(start: Callable[[int], None], advance: Callable[[str], None]) -> list[Path]:
        truth = None if gt is None else ground_truth_masks(gt, layout)
        return analyze_confidence(pred, truth, out, on_case=advance)

    _over_cases("Lesion confidence", progress, run)
    typer.echo((out / "confidence.md").read_text(encoding="utf-8").rstrip("\n"))


@analyze_app.command("thresholds")
def thresholds(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="A prediction folder with <case>_probability.nii.gz beside each mask (h2aseg predict "
        "--probabilities).",
    ),
    gt: Path = typer.Option(
        ..., "--gt", help="Ground truth: a dataset folder (any layout) or a folder of masks <case_id>.nii.gz."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: thresholds.md/.csv, masks-t<T>/ (mask = probability >= T) and eval-t<T>/.",
    ),
    values: str = typer.Option(
        "0.2,0.3,0.4,0.5", "--thresholds", help="Foreground thresholds to try, between 0 and 1."
    ),
    reference: float = typer.Option(
        0.5,
        "--reference",
        help="The threshold the folder's masks were predicted at [infer.threshold]; the table says in how "
        "many studies the thresholded maps reproduce them.",
    ),
    layout: str = typer.Option("auto", "--layout", help="Layout of --gt (auto | folder | a dataset layout)."),
    protocol: str = typer.Option("paper", "--protocol", help="paper | autopet (binary masks)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Processes scoring cases in parallel."),
    progress: bool = PROGRESS,
) -> None:
    """Dice, lesions found and FP lesions at several thresholds, from saved probability maps: choose the
    operating point on validation studies (docs/analysis.md)."""
    from h2aseg.analysis.thresholds import parse_thresholds, sweep_thresholds

    def run(start: Callable[[int], None], advance: Callable[[str], None]) -> list[Path]:
        _rows, _checks, paths = sweep_thresholds(
            pred,
            gt,
            parse_thresholds(values),
            out,
            reference=reference,
            protocol=protocol,
            gt_layout=layout,
            jobs=jobs,
            on_start=start,
            on_case=advance,
        )
        return paths

    _over_cases("Thresholds", progress, run)
    typer.echo((out / "thresholds.md").read_text(encoding="utf-8").rstrip("\n"))


def parse_run(text: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (labelled by the folder's name)."""
    label, sep, folder = text.partition("=")
    if sep and label and folder:
        return label, Path(folder)
    return Path(text).name or text, Path(text)


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
