"""Running Table 3's analysis: load a trained H2ASeg as ``h2aseg predict`` does, choose the cases from its
split, run it with the TAMW recorder of :mod:`h2aseg.analysis.tamw_weights`, and write the tables
(``h2aseg analyze tamw``); and the recorder ``h2aseg experiment``'s predict step uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from h2aseg.analysis.tamw_weights import (
    WEIGHTINGS,
    AnalysisError,
    CaseWeights,
    OnCase,
    TamwRecorder,
    Weighting,
    aggregate_case,
    tamw_modules,
    write_tamw_outputs,
)


@dataclass
class LoadedModel:
    """A trained H2ASeg as ``h2aseg predict`` loads it, with where its split is recorded."""

    path: Path
    predictor: Any  # h2aseg.inference.predictor.Predictor

    @property
    def stored_split(self) -> dict[str, Any] | None:
        return self.predictor.stored_split  # type: ignore[no-any-return]

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def variant(self) -> str:
        return str(getattr(self.model, "variant", "paper"))

    def describe(self) -> str:
        """``"MCSA + TAMW"`` or ``"TAMW only"`` (with the variant when not the paper's)."""
        from h2aseg.models.mcsa import MCSA

        mcsa = any(isinstance(m, MCSA) for m in self.model.modules())
        name = "MCSA + TAMW" if mcsa else "TAMW only"
        return name if self.variant == "paper" else f"{name} ({self.variant} variant)"


def load_h2aseg(checkpoint: str | Path, overrides: Sequence[str] | None = None) -> LoadedModel:
    """Load a checkpoint as ``h2aseg predict`` does (:meth:`Predictor.from_checkpoint`, ``overrides`` as its
    ``--set``) and check that it is an H2ASeg with TAMW (:class:`AnalysisError` otherwise); the stored
    config is checked before any network is built."""
    from h2aseg.checkpoint import load_checkpoint
    from h2aseg.config import Config
    from h2aseg.inference.predictor import Predictor

    path = Path(checkpoint)
    payload = load_checkpoint(path)
    name = Config.from_dict(payload["config"], source=f"{path} (stored config)").model.name
    del payload
    if name != "h2aseg":
        raise AnalysisError(f"{path}: a {name!r} checkpoint; the TAMW analysis needs an H2ASeg checkpoint")
    predictor = Predictor.from_checkpoint(path, list(overrides or []))
    tamw_modules(predictor.model, str(path))
    return LoadedModel(path, predictor)


def select_cases(
    loaded: LoadedModel, data: str | Path, part: str = "test", limit: int | None = None
) -> tuple[list[Any], str]:
    """The cases under ``data`` (the model's layout settings) in ``part`` (train, val, test or all) of its
    split (:func:`h2aseg.inference.case_selection.cases_in_part`), in case-id order, at most ``limit``; and
    a line saying which."""
    from h2aseg.data.layouts import discover
    from h2aseg.errors import InputError
    from h2aseg.inference.case_selection import cases_in_part

    cfg = loaded.predictor.cfg.data
    cases = discover(data, cfg.layout, swap_channels=cfg.swap_channels)
    try:
        chosen, where = cases_in_part(
            cases, part, checkpoint=loaded.path, data=cfg, stored=loaded.stored_split, root=data
        )
    except InputError as e:
        raise AnalysisError(str(e)) from None
    if limit is not None:
        if limit < 1:
            raise AnalysisError(f"--cases must be at least 1, got {limit}")
        chosen = chosen[:limit]
    return chosen, where


def case_weights(loaded: LoadedModel, recorder: TamwRecorder, case: Any, weighting: Weighting) -> CaseWeights:
    """Run the predictor's sliding windows over one case (inside ``recorder``) and average its weights."""
    from h2aseg.data.preprocess import preprocess_images

    recorder.take()
    pc = preprocess_images(case.ct, case.pet, loaded.predictor.cfg.data, case_id=case.case_id)
    loaded.predictor.probabilities(pc)
    return aggregate_case(case.case_id, recorder.take(), loaded.variant, weighting)


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
    order = "F = concat(F_pet, F_ct, D~)" if loaded.variant == "paper" else "F = concat(F_ct, F_pet, D~)"
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
    loaded = load_h2aseg(checkpoint, overrides)
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
            self.results[case_id] = aggregate_case(case_id, calls, self.loaded.variant, self.weighting)

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
