"""What every model analysis shares: its error, its CSV writer, loading a trained model as ``h2aseg predict``
does, choosing the cases from the model's split, and running the model over one case.

Used by :mod:`~h2aseg.analysis.tamw_run` (Table 3), :mod:`~h2aseg.analysis.mcsa_scale` (MCSA's attention
scale) and :mod:`~h2aseg.analysis.features` (Fig. 4).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from h2aseg.errors import H2ASegError

#: A model check run once the network is built: ``check(model, source)`` raises :class:`AnalysisError`
#: (``source`` names the checkpoint in the message), e.g. :func:`h2aseg.analysis.tamw_weights.tamw_modules`.
ModelCheck = Callable[[nn.Module, str], object]


class AnalysisError(H2ASegError):
    """A checkpoint, model or case selection the analysis cannot use; the message names it."""


def rows_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` (``columns`` in order; floats to 6 significant digits, None empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: "" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                for k in columns
            }
        )
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- the model
@dataclass
class LoadedModel:
    """A trained model as ``h2aseg predict`` loads it, with where its split is recorded."""

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


def load_model(
    checkpoint: str | Path,
    overrides: Sequence[str] | None = None,
    *,
    h2aseg_for: str | None = None,
    check: ModelCheck | None = None,
    init: bool = False,
) -> LoadedModel:
    """Load a checkpoint as ``h2aseg predict`` does (:meth:`Predictor.from_checkpoint`, ``overrides`` as its
    ``--set``).

    ``h2aseg_for`` (the analysis, e.g. ``"the TAMW analysis"``): the stored config must be an H2ASeg's,
    checked before any network is built (:class:`AnalysisError` naming the analysis otherwise). ``check``
    then inspects the built network (``check(model, str(checkpoint))``). With ``init``, the weights are
    replaced by a freshly initialised network of the same config (``torch.manual_seed(train.seed)``).
    """
    from h2aseg.inference.predictor import Predictor

    path = Path(checkpoint)
    if h2aseg_for is not None:
        from h2aseg.checkpoint import load_checkpoint
        from h2aseg.config import Config

        payload = load_checkpoint(path)
        name = Config.from_dict(payload["config"], source=f"{path} (stored config)").model.name
        del payload
        if name != "h2aseg":
            raise AnalysisError(f"{path}: a {name!r} checkpoint; {h2aseg_for} needs an H2ASeg checkpoint")
    predictor = Predictor.from_checkpoint(path, list(overrides or ()))
    if check is not None:
        check(predictor.model, str(path))
    if init:
        import torch

        from h2aseg.models.factory import build_from_config

        cfg = predictor.cfg
        torch.manual_seed(cfg.train.seed)
        fresh = build_from_config(cfg.model, cfg.data.patch_size, cfg.data.input_layout())
        predictor.model.load_state_dict(fresh.state_dict())
    return LoadedModel(path, predictor)


# ------------------------------------------------------------------------------------------- the cases
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
        if limit < len(chosen):
            where += f"; the first {limit} in case-id order (--cases {limit})"
            chosen = chosen[:limit]
    return chosen, where


def run_case(loaded: LoadedModel, case: Any) -> None:
    """Run the model over one case as ``h2aseg predict`` does (preprocessed with the model's data settings,
    its sliding windows and flips), for the hooks and probes an analysis has set; the output is dropped."""
    from h2aseg.data.preprocess import preprocess_images

    pc = preprocess_images(case.ct, case.pet, loaded.predictor.cfg.data, case_id=case.case_id)
    loaded.predictor.probabilities(pc)
