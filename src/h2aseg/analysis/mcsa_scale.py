"""How large MCSA's attention terms are against the features they are added to (``h2aseg analyze mcsa``).

Each MCSA stage (:mod:`h2aseg.models.mcsa`) adds an attention term to the encoder's features: the
inter-window term (window tokens attended across windows, up-sampled) to ``E``, then the intra-window term
to ``Ê``. This module measures, per MCSA level and modality, ``||term|| / ||feature||``: the norms are taken
over every sliding window of a case (the model runs as ``h2aseg predict`` runs it), the ratio per case, then
mean ± sample std over cases. A ratio near 0 means that MCSA is close to the identity; a ratio far above 1
means that the attention term has replaced the convolutional features (``docs/results.md``, Table 2 of the
paper schedule). ``init=True`` measures the same network, with the same cases, at its initialisation.

Outputs (:func:`write_outputs`): ``mcsa_scale.md`` and ``mcsa_scale.csv`` (per case, module and term).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from h2aseg.analysis.common import AnalysisError, LoadedModel, load_model, rows_csv, run_case, select_cases
from h2aseg.files import atomic_write_text
from h2aseg.models.mcsa import MCSA

#: The measured terms, in the table's column order, and their headers.
TERMS = {
    "inter_ct": "Inter-window CT",
    "inter_pet": "Inter-window PET",
    "intra_ct": "Intra-window CT",
    "intra_pet": "Intra-window PET",
}
#: Order of the sums of squares the probe keeps: the features, then the terms added to them.
_PARTS = ("e_ct", "e_pet", "inter_ct", "inter_pet", "e_hat_ct", "e_hat_pet", "intra_ct", "intra_pet")
_OF = {"inter_ct": "e_ct", "inter_pet": "e_pet", "intra_ct": "e_hat_ct", "intra_pet": "e_hat_pet"}


def mcsa_modules(model: nn.Module, source: str) -> dict[str, MCSA]:
    """Every MCSA module of ``model`` by name; :class:`AnalysisError` when there is none."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, MCSA)}
    if not found:
        raise AnalysisError(
            f"{source}: the network has no MCSA module (an H2ASeg without MCSA, or another network); "
            "nothing to measure"
        )
    return found


def level_of(name: str) -> str:
    """The encoder level of a module name (``encoder.sa3`` -> ``"3"``), else the name."""
    m = re.search(r"sa(\d+)$", name)
    return m.group(1) if m else name


@dataclass
class CaseScale:
    """One case: per MCSA module, the ratio of each term (:data:`TERMS`) and the map shape ``(C, X, Y, Z)``
    of the first window."""

    case_id: str
    ratios: dict[str, dict[str, float]]
    shapes: dict[str, tuple[int, ...]]


class ScaleRecorder:
    """Inside ``with``: every MCSA module's probe adds the squared norms of its features and attention terms
    to running sums (per module); :meth:`take` returns and resets them. The probes are removed on exit."""

    def __init__(self, model: nn.Module, source: str) -> None:
        self.modules = mcsa_modules(model, source)
        self.sums: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def __enter__(self) -> ScaleRecorder:
        for name, m in self.modules.items():
            m.probe = self._probe(name)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.modules.values():
            m.probe = None

    def _probe(self, name: str) -> Callable[..., None]:
        def probe(_m: MCSA, inputs: Any, inter: Any, hat: Any, intra: Any) -> None:
            parts = (*inputs, *inter, *hat, *intra)
            sq = [float(t.detach().float().pow(2).sum()) for t in parts]
            self.sums[name] = self.sums.get(name, np.zeros(len(_PARTS))) + np.asarray(sq)
            self.shapes.setdefault(name, tuple(inputs[0].shape[1:]))

        return probe

    def take(self) -> dict[str, np.ndarray]:
        out, self.sums = self.sums, {}
        return out


def ratios(sums: np.ndarray) -> dict[str, float]:
    """``||term|| / ||feature||`` of each term from the sums of squares (NaN where the feature is zero)."""
    norms = dict(zip(_PARTS, np.sqrt(sums), strict=True))
    return {t: float(norms[t] / norms[_OF[t]]) if norms[_OF[t]] > 0 else float("nan") for t in TERMS}


def measure_cases(
    loaded: LoadedModel, cases: Sequence[Any], on_case: Callable[[str], None] | None = None
) -> list[CaseScale]:
    """:class:`CaseScale` of every case (sliding windows as ``h2aseg predict``)."""
    out = []
    with ScaleRecorder(loaded.model, str(loaded.path)) as rec:
        for case in cases:
            rec.take()
            run_case(loaded, case)
            sums = rec.take()
            out.append(CaseScale(case.case_id, {n: ratios(s) for n, s in sums.items()}, dict(rec.shapes)))
            if on_case:
                on_case(case.case_id)
    return out


def summary_rows(results: Sequence[CaseScale]) -> list[dict[str, Any]]:
    """Per MCSA module and term: mean and sample std of the ratio over cases (NaN-free cases only)."""
    rows = []
    names = sorted({n for r in results for n in r.ratios}, key=lambda n: (len(n), n))
    for name in names:
        shape = next(r.shapes[name] for r in results if name in r.shapes)
        for term in TERMS:
            vals = np.array([r.ratios[name][term] for r in results if name in r.ratios])
            vals = vals[np.isfinite(vals)]
            rows.append(
                {
                    "module": name,
                    "level": level_of(name),
                    "shape": "x".join(map(str, shape[1:])),
                    "channels": shape[0],
                    "term": term,
                    "mean": float(vals.mean()) if vals.size else None,
                    "std": float(vals.std(ddof=1)) if vals.size > 1 else None,
                    "n_cases": int(vals.size),
                }
            )
    return rows


def _cell(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return "–"
    return f"{row['mean']:.2f}" + (f"±{row['std']:.2f}" if row["std"] is not None else "")


def table_markdown(rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()) -> str:
    """The table: a row per MCSA level, a column per term."""
    by_module: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_module.setdefault(r["module"], {})[r["term"]] = r
    lines = [
        f"# {title}",
        "",
        "||attention term|| / ||feature it is added to||, per MCSA level and modality (norms over all "
        "sliding windows of a case; mean ± sample std over cases). Near 0: MCSA is close to the identity; "
        "above 1: the attention term outweighs the convolutional features.",
        "",
        "| MCSA level (channels, map) | " + " | ".join(TERMS.values()) + " |",
        "|---|" + "---:|" * len(TERMS),
    ]
    for terms in by_module.values():
        first = next(iter(terms.values()))
        label = f"{first['level']} ({first['channels']}, {first['shape']})"
        lines.append(f"| {label} | " + " | ".join(_cell(terms[t]) for t in TERMS) + " |")
    lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def write_outputs(
    results: Sequence[CaseScale], out_dir: str | Path, *, title: str, notes: Sequence[str] = ()
) -> list[Path]:
    """``mcsa_scale.md`` (the summary table) and ``mcsa_scale.csv`` (per case, module and term)."""
    if not results:
        raise AnalysisError("no case was measured")
    out_dir = Path(out_dir)
    rows = summary_rows(results)
    per_case = [
        {"case_id": r.case_id, "module": n, "level": level_of(n), "term": t, "ratio": v}
        for r in results
        for n, terms in r.ratios.items()
        for t, v in terms.items()
    ]
    return [
        atomic_write_text(out_dir / "mcsa_scale.md", table_markdown(rows, title, notes)),
        atomic_write_text(
            out_dir / "mcsa_scale.csv", rows_csv(per_case, ("case_id", "module", "level", "term", "ratio"))
        ),
    ]


def analyze_mcsa(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    part: str = "test",
    limit: int | None = None,
    init: bool = False,
    overrides: Sequence[str] = (),
    on_start: Callable[[int], None] | None = None,
    on_case: Callable[[str], None] | None = None,
) -> list[Path]:
    """``h2aseg analyze mcsa``: load (or re-initialise), choose the cases, measure, write the table."""
    loaded = load_model(checkpoint, overrides, check=mcsa_modules, init=init)
    cases, where = select_cases(loaded, data, part, limit)
    if on_start:
        on_start(len(cases))
    results = measure_cases(loaded, cases, on_case)
    infer = loaded.predictor.cfg.infer
    seed = loaded.predictor.cfg.train.seed
    weights = (
        f"a fresh initialisation of its network (seed {seed}), not its trained weights"
        if init
        else ("its trained weights")
    )
    notes = [
        f"Model: {loaded.path} ({loaded.variant} variant), {weights}.",
        f"Cases: {where}.",
        f"Windows: sliding windows of {'x'.join(map(str, loaded.predictor.roi_size))}, overlap "
        f"{infer.overlap}; map = the MCSA input of one window (channels, X x Y x Z).",
    ]
    return write_outputs(results, out_dir, title="MCSA scale", notes=notes)
