"""Running Table 3's analysis: load a trained H2ASeg as ``h2aseg predict`` does and choose the cases from its
split (:mod:`h2aseg.analysis.common`), run it with the TAMW recorder of :mod:`h2aseg.analysis.tamw_weights`,
and write the tables (``h2aseg analyze tamw``); and the recorder ``h2aseg experiment``'s predict step uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from h2aseg.analysis.common import AnalysisError, LoadedModel, load_model, run_case, select_cases
from h2aseg.analysis.tamw_weights import (
    WEIGHTINGS,
    CaseWeights,
    OnCase,
    TamwRecorder,
    Weighting,
    aggregate_case,
    tamw_modules,
    tamw_order,
    write_tamw_outputs,
)


def case_weights(loaded: LoadedModel, recorder: TamwRecorder, case: Any, weighting: Weighting) -> CaseWeights:
    """Run the predictor's sliding windows over one case (inside ``recorder``) and average its weights."""
    recorder.take()
    run_case(loaded, case)
    return aggregate_case(case.case_id, recorder.take(), recorder.order, weighting)


def analyze_cases(
    loaded: LoadedModel,
    cases: Sequence[Any],
    *,
    weighting: Weighting = "uniform",
    on_case: OnCase | None = None,
) -> list[CaseWeights]:
    """:class:`CaseWeights` of every case (sliding windows as ``h2aseg predict``)."""
    out = []
    with TamwRecorder(loaded.model, str(loaded.path)) as rec:
        for case in cases:
            out.append(case_weights(loaded, rec, case, weighting))
            if on_case:
                on_case(case.case_id, "done")
    return out


def run_notes(loaded: LoadedModel, where: str, weighting: Weighting) -> list[str]:
    """The lines under Table 3: model, channel order, cases, windows."""
    infer = loaded.predictor.cfg.infer
    roi = "x".join(str(v) for v in loaded.predictor.roi_size)
    released = tamw_order(loaded.model, str(loaded.path)) == "released"
    order = "F = concat(F_ct, F_pet, D~)" if released else "F = concat(F_pet, F_ct, D~)"
    return [
        f"Model: {loaded.path} ({loaded.describe()}); TAMW channel order {order}.",
        f"Cases: {where}.",
        f"Windows: sliding windows of {roi}, overlap {infer.overlap}, flip TTA "
        f"{'on' if infer.tta_flips else 'off'}; a case's weights are the {weighting} mean over its windows "
        + (
            "(every window once)."
            if weighting == "uniform"
            else "(foreground weights by each window's mean P~, background weights by its mean 1 - P~)."
        ),
        "Depth 1 is the full-resolution decoder level, 4 the deepest TAMW; raw numbers in "
        "tamw_weights_per_case.csv and tamw_weights_channels.csv.",
    ]


def analyze_tamw(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    part: str = "test",
    limit: int | None = None,
    weighting: Weighting = "uniform",
    overrides: Sequence[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_case: OnCase | None = None,
) -> list[Path]:
    """``h2aseg analyze tamw``: load, choose the cases, record the weights, write Table 3 and the raw CSVs."""
    if weighting not in WEIGHTINGS:
        raise AnalysisError(f"window weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    loaded = load_model(checkpoint, overrides, h2aseg_for="the TAMW analysis", check=tamw_modules)
    cases, where = select_cases(loaded, data, part, limit)
    if on_start:
        on_start(len(cases))
    results = analyze_cases(loaded, cases, weighting=weighting, on_case=on_case)
    return write_tamw_outputs(
        results, out_dir, title=f"Table 3 ({loaded.describe()})", notes=run_notes(loaded, where, weighting)
    )


def has_tamw(model: nn.Module) -> bool:
    """Whether ``model`` is an H2ASeg with TAMW modules."""
    try:
        tamw_modules(model)
    except AnalysisError:
        return False
    return True


class PredictionRecorder:
    """Table 3 from a prediction pass that runs anyway (the experiment's predict step): inside ``with``,
    :meth:`on_case` (``predict_cases``' hook) turns the TAMW calls since the previous case into that case's
    weights; :meth:`write` analyses the cases whose masks existed before (skipped, so not run) and writes
    :func:`write_tamw_outputs`."""

    def __init__(self, predictor: Any, checkpoint: str | Path, weighting: Weighting = "uniform") -> None:
        self.loaded = LoadedModel(Path(checkpoint), predictor)
        self.recorder = TamwRecorder(predictor.model, str(checkpoint))
        self.weighting = weighting
        self.results: dict[str, CaseWeights] = {}

    def __enter__(self) -> PredictionRecorder:
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.recorder.__exit__(*exc)

    def on_case(self, case_id: str, status: str) -> None:
        calls = self.recorder.take()
        if status == "done":
            self.results[case_id] = aggregate_case(case_id, calls, self.recorder.order, self.weighting)

    def write(
        self, cases: Sequence[Any], out_dir: str | Path, *, where: str, on_case: OnCase | None = None
    ) -> list[Path]:
        with self.recorder:
            for case in cases:
                if case.case_id not in self.results:
                    self.results[case.case_id] = case_weights(
                        self.loaded, self.recorder, case, self.weighting
                    )
                    if on_case:
                        on_case(case.case_id, "done")
        return write_tamw_outputs(
            [self.results[c.case_id] for c in cases],
            out_dir,
            title=f"Table 3 ({self.loaded.describe()})",
            notes=run_notes(self.loaded, where, self.weighting),
        )
