"""``h2aseg predict``: segment new patients with a trained checkpoint."""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from h2aseg.cli.common import err_console, fail
from h2aseg.cli.convert import DOSE_OPTION, INJECTION_OPTION, WEIGHT_OPTION, dicom_to_autopet, suv_overrides
from h2aseg.progress import progress_bar

if TYPE_CHECKING:
    from h2aseg.analysis.html_report import ViewerLink
    from h2aseg.data.layouts import Case
    from h2aseg.data.suv import SuvOverrides
    from h2aseg.inference.predictor import Predictor


def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by h2aseg train."),
    ct: Path | None = typer.Option(None, "--ct", help="CT image of one patient."),
    pet: Path | None = typer.Option(None, "--pet", help="PET image (SUV) of the same patient."),
    out: Path | None = typer.Option(None, "--out", help="Output mask (.nii.gz) for --ct/--pet."),
    input_dir: Path | None = typer.Option(None, "--input", help="A dataset folder (any supported layout)."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Output folder: <case_id>.nii.gz per case."),
    layout: str | None = typer.Option(None, "--layout", help="Layout of --input [data.layout]."),
    split: str = typer.Option(
        "all",
        "--split",
        help="all | train | val | test: with --input, only the cases of that part of the model's split "
        "(stored in the checkpoint, else data.split_file, else the run's split.json): e.g. train, to "
        "score a model on the studies it was trained on.",
    ),
    overlap: float | None = typer.Option(None, "--overlap", help="Sliding-window overlap [infer.overlap]."),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="Flip test-time augmentation [infer.tta_flips]."
    ),
    body_box: bool | None = typer.Option(
        None,
        "--body-box/--no-body-box",
        help="Slide windows over the body's bounding box only; background outside [infer.body_box].",
    ),
    probabilities: bool | None = typer.Option(
        None,
        "--probabilities/--no-probabilities",
        help="Also write <case>_probability.nii.gz and, with --tta, <case>_flip_masks.nii.gz (each flip's "
        "mask, one bit per flip) [infer.save_probabilities]; on by default with --quantify/--report, whose "
        "lesion confidence columns they feed (docs/quantify.md).",
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda [infer.device]."),
    amp: str | None = typer.Option(None, "--amp", help="auto | bf16 | fp16 | off [infer.amp]."),
    cpu_fast_path: bool | None = typer.Option(
        None,
        "--cpu-fast-path/--no-cpu-fast-path",
        help="On the CPU, channels-last weights and windows: the same probabilities to float rounding; "
        "whether it is faster depends on the machine (docs/benchmarks.md) [infer.cpu_fast_path].",
    ),
    mcsa_knockout: bool | None = typer.Option(
        None,
        "--mcsa-knockout",
        help="An analysis: every MCSA stage adds no attention term, to measure what MCSA contributes "
        "(docs/analysis.md) [infer.mcsa_knockout].",
    ),
    assignments: list[str] = typer.Option([], "--set", help="Override a stored config field (infer.*)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute cases whose output exists."),
    shard: str | None = typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="With --input: only shard I of N (0 <= I < N): case k of the folder sorted by case id goes to "
        "shard k mod N, so N processes (e.g. one per GPU via CUDA_VISIBLE_DEVICES) started with 0/N ... "
        "N-1/N on one folder and --out-dir never predict a study twice; a killed one resumes when rerun "
        "(masks are written atomically and kept). With --report, no index.html: rerun without --shard "
        "once all are done (masks kept) for it. A run option, like --input (no config field).",
    ),
    weight_kg: float | None = WEIGHT_OPTION,
    dose_mbq: float | None = DOSE_OPTION,
    injection_time: str | None = INJECTION_OPTION,
    quantify: bool = typer.Option(
        False,
        "--quantify",
        help="Also write <case>_lesions.csv and <case>_patient.csv (PET measures, "
        "docs/quantify.md) beside each mask, measured on the case's SUV.",
    ),
    report: bool = typer.Option(
        False,
        "--report",
        help="Also write report/<case>.html beside the masks (and report/index.html for --input): PET MIPs "
        "with the lesions outlined, the lesion and patient tables, the settings (docs/report.md). "
        "Implies --quantify.",
    ),
    challenge_io: tuple[Path, Path] | None = typer.Option(
        None,
        "--challenge-io",
        metavar="INPUT OUTPUT",
        help="The autoPET grand-challenge interface: read "
        "INPUT/images/{ct,pet}/*.mha, write OUTPUT/images/automated-petct-lesion-segmentation/<uuid>.mha "
        "(docs/challenge.md).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Sliding-window prediction; masks are uint8 NIfTI in the original CT geometry."""
    from h2aseg.errors import H2ASegError
    from h2aseg.inference.predictor import Predictor

    mode = _check_flags(
        ct, pet, out, input_dir, out_dir, split=split, report=report, challenge=challenge_io, shard=shard
    )
    shard_of = _parse_shard(shard)
    fields = {
        "infer.overlap": overlap,
        "infer.tta_flips": tta,
        "infer.body_box": body_box,
        "infer.save_probabilities": True if probabilities is None and (quantify or report) else probabilities,
        "infer.device": device,
        "infer.amp": amp,
        "infer.cpu_fast_path": cpu_fast_path,
        "infer.mcsa_knockout": mcsa_knockout,
    }
    overrides = [*assignments, *(f"{k}={_set_value(v)}" for k, v in fields.items() if v is not None)]
    try:
        predictor = Predictor.from_checkpoint(checkpoint, overrides)
        if mode == "challenge":
            assert challenge_io is not None
            _predict_challenge(predictor, challenge_io)
        elif mode == "one":
            assert ct is not None and pet is not None and out is not None
            _predict_one(predictor, checkpoint, ct, pet, out, quantify=quantify, report=report)
        else:
            assert input_dir is not None and out_dir is not None
            dicom_failed = _predict_folder(
                predictor,
                checkpoint,
                input_dir,
                out_dir,
                layout=layout,
                split=split,
                suv=suv_overrides(weight_kg, dose_mbq, injection_time),
                overwrite=overwrite,
                shard=shard_of,
                progress=progress,
                quantify=quantify,
                report=report,
            )
            if dicom_failed:
                raise typer.Exit(code=1)  # the failed studies were reported above
    except H2ASegError as e:
        raise fail(str(e)) from None


def _check_flags(
    ct: Path | None,
    pet: Path | None,
    out: Path | None,
    input_dir: Path | None,
    out_dir: Path | None,
    *,
    split: str,
    report: bool,
    challenge: tuple[Path, Path] | None,
    shard: str | None = None,
) -> Literal["challenge", "one", "folder"]:
    """Which mode the flags ask for (the challenge interface, one patient, a folder); a flag that does not
    belong to it, or one missing, is a one-line error."""
    single = ct is not None or pet is not None or out is not None
    folder = input_dir is not None or out_dir is not None
    if challenge is not None and (single or folder):
        raise fail("--challenge-io takes no --ct/--pet/--out or --input/--out-dir")
    if challenge is not None and report:
        raise fail("--report is for --ct/--pet/--out or --input/--out-dir, not --challenge-io")
    if single == folder and challenge is None:
        raise fail("give either --ct, --pet and --out (one patient) or --input and --out-dir (a folder)")
    if single and (ct is None or pet is None or out is None):
        raise fail("--ct, --pet and --out must be given together")
    if folder and (input_dir is None or out_dir is None):
        raise fail("--input and --out-dir must be given together")
    if split != "all" and not folder:
        raise fail("--split chooses cases of an --input folder; it takes no --ct/--pet or --challenge-io")
    if shard is not None and not folder:
        raise fail("--shard splits an --input folder; it takes no --ct/--pet or --challenge-io")
    return "challenge" if challenge is not None else "one" if single else "folder"


def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` as ``(I, N)``; a malformed value, or one outside ``0 <= I < N``, is a one-line
    error."""
    if shard is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", shard.strip(), flags=re.ASCII)
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise fail(f"--shard {shard}: expected I/N with whole numbers 0 <= I < N (e.g. 0/2 and 1/2)")
    return int(match[1]), int(match[2])


def _set_value(value: object) -> str:
    """A flag's value as a ``--set`` value (booleans lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _predict_challenge(predictor: Predictor, challenge_io: tuple[Path, Path]) -> None:
    """``--challenge-io INPUT OUTPUT``: the autoPET grand-challenge interface."""
    from h2aseg.inference.challenge import run_challenge

    masks = run_challenge(
        predictor, *challenge_io, on_case=lambda p: err_console.print(f"wrote {p}", highlight=False)
    )
    err_console.print(f"wrote {len(masks)} mask(s) with their lesion CSVs", highlight=False)


def _predict_one(
    predictor: Predictor, checkpoint: Path, ct: Path, pet: Path, out: Path, *, quantify: bool, report: bool
) -> None:
    """``--ct --pet --out``: one patient's mask (and with ``--quantify``/``--report`` its measures)."""
    from h2aseg.inference.predictor import write_prediction

    pred = predictor.predict_files(ct, pet, case_id=ct.name)
    path = write_prediction(pred, out, inputs=(ct, pet))
    err_console.print(f"wrote {path}", highlight=False)
    if quantify or report:
        settings = _report_settings(checkpoint, predictor) if report else None
        _quantify([(path, pet, ct)], settings, index=False)


def _predict_folder(
    predictor: Predictor,
    checkpoint: Path,
    input_dir: Path,
    out_dir: Path,
    *,
    layout: str | None,
    split: str,
    suv: SuvOverrides,
    overwrite: bool,
    shard: tuple[int, int] | None = None,
    progress: bool,
    quantify: bool,
    report: bool,
) -> int:
    """``--input --out-dir``: a mask per case of the folder (DICOM studies converted first), of the model's
    ``split`` part when not ``all``, of shard ``(I, N)`` when given; returns the number of DICOM studies that
    could not be converted."""
    from h2aseg.inference.predictor import predict_cases

    input_dir, layout, dicom_failed = dicom_to_autopet(  # DICOM: converted into out_dir/.dicom first
        input_dir, out_dir, layout, suv, overwrite
    )
    cases = _folder_cases(predictor, checkpoint, input_dir, layout=layout, split=split, shard=shard)
    statuses: Counter[str] = Counter()
    with progress_bar("predict", progress, console=err_console) as bar:
        task = bar.add_task("", total=len(cases))

        def on_case(case_id: str, status: str) -> None:
            statuses[status] += 1
            bar.update(task, advance=1, description=f"{case_id} {status}")

        paths = predict_cases(predictor, cases, out_dir, overwrite=overwrite, on_case=on_case)
    counts = f"{statuses['done']} predicted, {statuses['skipped']} kept (output existed)"
    err_console.print(f"wrote {len(paths)} masks to {out_dir} ({counts})", highlight=False)
    if quantify or report:
        settings = _report_settings(checkpoint, predictor) if report else None
        studies = [(p, c.pet, c.ct) for c, p in zip(cases, paths, strict=True)]
        viewer = viewer_link(out_dir, input_dir, layout) if report else None
        _quantify(studies, settings, index=shard is None, viewer=viewer)  # a shard's index: that shard only
    return dicom_failed


def _folder_cases(
    predictor: Predictor,
    checkpoint: Path,
    input_dir: Path,
    *,
    layout: str | None,
    split: str,
    shard: tuple[int, int] | None,
) -> list[Case]:
    """The cases of ``input_dir`` to predict: of the model's ``split`` part unless ``all``, then of shard
    ``(I, N)`` when given (each choice reported on stderr)."""
    from h2aseg.data.layouts import discover
    from h2aseg.inference.predictor import shard_cases

    cases = discover(
        input_dir, layout or predictor.cfg.data.layout, swap_channels=predictor.cfg.data.swap_channels
    )
    if split != "all":
        from h2aseg.inference.case_selection import cases_in_part

        cases, where = cases_in_part(
            cases,
            split,
            checkpoint=checkpoint,
            data=predictor.cfg.data,
            stored=predictor.stored_split,
            root=input_dir,
        )
        err_console.print(f"predicting {where}", highlight=False)
    if shard is not None:
        total = len(cases)
        cases = shard_cases(cases, *shard)
        err_console.print(f"shard {shard[0]}/{shard[1]}: {len(cases)} of {total} cases", highlight=False)
    return cases


def _quantify(
    studies: list[tuple[Path, Path, Path]],
    report: dict[str, object] | None,
    *,
    index: bool,
    viewer: ViewerLink | None = None,
) -> None:
    """``--quantify``: ``<case>_lesions.csv`` and ``<case>_patient.csv`` beside each (mask, SUV, CT).

    ``--report`` (``report`` = the run's settings): also ``report/<case>.html`` beside the masks, from the
    same measures, and with ``index`` ``report/index.html`` linking them; ``viewer`` adds to each page the
    link to the study in ``h2aseg view`` and the command that starts it.
    """
    from h2aseg.analysis.html_report import INDEX_NAME, page_href, report_prediction, write_index
    from h2aseg.evaluation.quantify import quantify_mask_file

    pages = []
    for mask, suv, ct in studies:
        if report is None:
            quantify_mask_file(mask, suv)
            continue
        settings = {"CT": ct, "PET (SUV)": suv, "mask": mask, **report}
        q, page = report_prediction(
            mask, suv, settings, index_href=INDEX_NAME if index else None, viewer=viewer
        )
        pages.append((q, page))
    err_console.print(f"wrote lesion and patient CSVs beside {len(studies)} mask(s)", highlight=False)
    if not pages:
        return
    where = pages[0][1].parent
    if index:
        write_index(where / INDEX_NAME, [(q, page_href(page)) for q, page in pages], settings=report)
    pages_text = f"{len(pages)} report page(s){' and the index' if index else ''}"
    err_console.print(f"wrote {pages_text} to {where}", highlight=False)


def viewer_link(out_dir: Path, input_dir: Path, layout: str | None) -> ViewerLink:
    """Where ``h2aseg view`` on this prediction folder and its data serves a study, and how to start it."""
    from h2aseg.analysis.html_report import ViewerLink
    from h2aseg.viewer.server import DEFAULT_PORT, HOST

    parts = ["h2aseg", "view", "--pred", str(out_dir.resolve()), "--data", str(input_dir.resolve())]
    if layout and layout != "auto":
        parts += ["--layout", layout]
    return ViewerLink(f"http://{HOST}:{DEFAULT_PORT}/study/", shlex.join(parts))


def _report_settings(checkpoint: Path, predictor: Predictor) -> dict[str, object]:
    """What the report pages list as the run's settings."""
    from datetime import datetime

    model, infer = predictor.cfg.model, predictor.cfg.infer
    roi = "×".join(map(str, predictor.roi_size))
    return {
        "checkpoint": checkpoint,
        "network": f"{model.name} ({model.variant} variant)" if model.name == "h2aseg" else model.name,
        "sliding window": f"ROI {roi}, overlap {infer.overlap}, {infer.blend} blending"
        + (", over the body's bounding box" if infer.body_box else ""),
        "flip TTA": infer.tta_flips,
        **({"MCSA knocked out (an analysis, not the model)": True} if infer.mcsa_knockout else {}),
        "threshold": infer.threshold,
        "precision (amp)": infer.amp,
        "device": predictor.device,
        "lesions": "18-connected components of the mask (docs/quantify.md)",
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
