"""Table 3 of the paper from any trained H2ASeg: TAMW's foreground/background channel weights per modality.

At decoder depth k (1 = full resolution, 4 = deepest TAMW) TAMW gives one foreground and one background
weight per channel of ``F = concat(F_pet, F_ct, D~)`` (paper variant; ``concat(F_ct, F_pet, D~)`` in the
released variant), ``W = tanh(MLP(GAP(...)))`` in (-1, 1) (eq. 3, :mod:`h2aseg.models.tamw`). The paper's
Table 3 reports, per depth, the "effect (%)" of PET and of CT "for emphasis": read here as 100 x the mean
weight over the modality's ``C_k`` channels (the decoder channels ``D~`` are kept in the raw CSV only).

How a case's weights are made: the model runs over the case as ``h2aseg predict`` runs it (the
:class:`~h2aseg.inference.predictor.Predictor`: sliding windows of the training patch, the stored
``infer`` settings, flips when ``infer.tta_flips``), with ``TAMW.record`` on and a forward hook on every
TAMW module, so every window (and flip) gives one ``(W_fore, W_back)`` per depth. A case's weight per channel
is the mean over its windows: ``uniform`` (every window counts once; the default) or ``mass`` (the
foreground weight of a window counts in proportion to the window's mean ``P~`` at that depth, the
background weight to its mean ``1 - P~``: the share of the window each branch of eq. 2 pools; a case whose
windows all have ``P~ = 0`` falls back to ``uniform``). Table 3 is then mean ± sample std over cases;
``table3.md`` also gives the spread over channels, the other reading of the paper's ±.

Outputs (:func:`write_tamw_outputs`): ``table3.md``, ``table3.csv`` (long: depth, branch, modality, mean,
std over cases, std over channels, counts), ``tamw_weights_per_case.csv`` (per case and depth: the
modality means x 100, windows, mean ``P~``) and ``tamw_weights_channels.csv`` (per case, depth, channel).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from h2aseg.analysis.common import AnalysisError, rows_csv
from h2aseg.evaluation.report import describe, format_cell
from h2aseg.files import atomic_write_text
from h2aseg.models.tamw import TAMW

DEPTHS = (1, 2, 3, 4)
BRANCHES = ("fore", "back")
MODALITIES = ("pet", "ct", "dec")
TABLE_MODALITIES = ("pet", "ct")
WEIGHTINGS = ("uniform", "mass")
Weighting = Literal["uniform", "mass"]
OnCase = Callable[[str, str], None]
PER_CASE_COLUMNS = (
    "case_id",
    "depth",
    "windows",
    "fore_probability",
    *(f"{m}_{b}" for b in BRANCHES for m in MODALITIES),
)
TABLE_COLUMNS = ("depth", "branch", "modality", "mean", "std", "std_channels", "n_cases", "n_channels")


# ------------------------------------------------------------------------------------------- the model
def tamw_modules(model: nn.Module, source: str = "the model") -> dict[int, TAMW]:
    """``{k: decoder.tamw{k}}`` for k = 1..4; :class:`AnalysisError` for a model without them."""
    from h2aseg.models.h2aseg import H2ASeg

    if not isinstance(model, H2ASeg):
        raise AnalysisError(f"{source}: a {type(model).__name__}, not an H2ASeg network (no TAMW to analyse)")
    mods = {k: getattr(model.decoder, f"tamw{k}", None) for k in DEPTHS}
    if not all(isinstance(m, TAMW) for m in mods.values()):
        raise AnalysisError(f"{source}: an H2ASeg without TAMW (model.use_tamw=false); nothing to analyse")
    return mods  # type: ignore[return-value]


def tamw_order(model: nn.Module, source: str = "the model") -> str:
    """The concatenation order of the model's TAMW modules, from the modules themselves: ``"paper"``
    (the paper's and ours) or ``"released"`` (the authors' code), whatever the network's variant is called."""
    return _order(tamw_modules(model, source), source)


def _order(modules: dict[int, TAMW], source: str) -> str:
    orders = {m.variant for m in modules.values()}
    if len(orders) != 1:
        raise AnalysisError(f"{source}: its TAMW modules disagree on the channel order ({sorted(orders)})")
    return orders.pop()


def modality_slices(order: str, skip_channels: int, total: int) -> dict[str, slice]:
    """Where PET, CT and the decoder feature sit among TAMW's ``total`` channels (``skip_channels`` = C_k),
    for a TAMW of structural ``order`` (:func:`tamw_order`): paper ``[F_pet, F_ct, D~]``, released
    ``[F_ct, F_pet, D~]``."""
    if order not in ("paper", "released"):
        raise AnalysisError(f"TAMW channel order must be 'paper' or 'released', got {order!r}")
    c = int(skip_channels)
    first, second = (slice(0, c), slice(c, 2 * c))
    pet, ct = (second, first) if order == "released" else (first, second)
    return {"pet": pet, "ct": ct, "dec": slice(2 * c, int(total))}


@dataclass
class TamwCall:
    """One TAMW call (one batch of windows): weights ``(B, C)`` and each window's mean ``P~``."""

    depth: int
    skip_channels: int
    w_fore: torch.Tensor
    w_back: torch.Tensor
    fore_fraction: torch.Tensor


class TamwRecorder:
    """``with TamwRecorder(model) as rec:`` turns ``TAMW.record`` on and hooks every TAMW module, so each call
    appends a :class:`TamwCall` to ``rec.calls``; on exit the hooks go and the flags are restored."""

    def __init__(self, model: nn.Module, source: str = "the model") -> None:
        self.modules = tamw_modules(model, source)
        self.order = _order(self.modules, source)  # the channel order of every call it records
        self.calls: list[TamwCall] = []
        self._handles: list[Any] = []
        self._flags: dict[int, bool] = {}

    def __enter__(self) -> TamwRecorder:
        for k, m in self.modules.items():
            self._flags[k] = m.record
            m.record = True
            self._handles.append(m.register_forward_hook(self._hook(k)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for k, m in self.modules.items():
            m.record = self._flags.get(k, False)
            m.last_weights = None

    def _hook(self, depth: int) -> Callable[..., None]:
        def hook(module: TAMW, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            assert module.last_weights is not None
            w_fore, w_back = module.last_weights
            p_up = args[3]
            self.calls.append(
                TamwCall(
                    depth,
                    int(args[0].shape[1]),
                    w_fore.float().cpu(),
                    w_back.float().cpu(),
                    p_up.detach().float().flatten(1).mean(1).cpu(),
                )
            )

        return hook

    def take(self) -> list[TamwCall]:
        """The calls recorded so far (and forget them)."""
        calls, self.calls = self.calls, []
        return calls


# ------------------------------------------------------------------------------------------- one case
@dataclass
class DepthWeights:
    """A case's per-channel weights at one depth, averaged over its windows."""

    fore: np.ndarray
    back: np.ndarray
    slices: dict[str, slice]
    fore_fraction: float
    windows: int


@dataclass
class CaseWeights:
    case_id: str
    depths: dict[int, DepthWeights] = field(default_factory=dict)


def _mean(w: torch.Tensor, mass: torch.Tensor | None) -> np.ndarray:
    if mass is None or float(mass.sum()) <= 0.0:
        return w.mean(0).numpy()
    return ((w * mass[:, None]).sum(0) / mass.sum()).numpy()


def aggregate_case(
    case_id: str, calls: Sequence[TamwCall], order: str, weighting: Weighting = "uniform"
) -> CaseWeights:
    """A case's :class:`CaseWeights` from its TAMW calls (every window of every depth); ``order``: the
    TAMW modules' channel order (:func:`tamw_order`)."""
    if weighting not in WEIGHTINGS:
        raise AnalysisError(f"window weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    out = CaseWeights(case_id)
    for k in DEPTHS:
        mine = [c for c in calls if c.depth == k]
        if not mine:
            raise AnalysisError(f"case {case_id}: TAMW at depth {k} was never called (no windows recorded)")
        fore, back = torch.cat([c.w_fore for c in mine]), torch.cat([c.w_back for c in mine])
        frac = torch.cat([c.fore_fraction for c in mine])
        mass = weighting == "mass"
        out.depths[k] = DepthWeights(
            _mean(fore, frac if mass else None),
            _mean(back, 1.0 - frac if mass else None),
            modality_slices(order, mine[0].skip_channels, fore.shape[1]),
            float(frac.mean()),
            len(frac),
        )
    return out


def case_rows(cw: CaseWeights) -> list[dict[str, Any]]:
    """Per depth: the mean weight (x100) of each modality's channels, for both branches."""
    rows = []
    for k, d in cw.depths.items():
        row: dict[str, Any] = {
            "case_id": cw.case_id,
            "depth": k,
            "windows": d.windows,
            "fore_probability": d.fore_fraction,
        }
        for b, w in (("fore", d.fore), ("back", d.back)):
            for m in MODALITIES:
                row[f"{m}_{b}"] = (
                    100.0 * float(w[d.slices[m]].mean()) if w[d.slices[m]].size else float("nan")
                )
        rows.append(row)
    return rows


def channel_rows(cw: CaseWeights) -> list[dict[str, Any]]:
    rows = []
    for k, d in cw.depths.items():
        for m in MODALITIES:
            sl = d.slices[m]
            for i in range(sl.start, sl.stop):
                rows.append(
                    {
                        "case_id": cw.case_id,
                        "depth": k,
                        "channel": i,
                        "modality": m,
                        "index_in_modality": i - sl.start,
                        "w_fore": float(d.fore[i]),
                        "w_back": float(d.back[i]),
                    }
                )
    return rows


# ------------------------------------------------------------------------------------------- Table 3
def table3(results: Sequence[CaseWeights]) -> list[dict[str, Any]]:
    """Long rows (:data:`TABLE_COLUMNS`): per depth, branch and modality (PET, CT) the mean over cases of the
    modality's mean weight (x100), its sample std over cases, and the std over channels of the case-averaged
    per-channel weights."""
    if not results:
        raise AnalysisError("no cases analysed: Table 3 needs at least one")
    rows = []
    for k in DEPTHS:
        for b in BRANCHES:
            per_channel = np.mean([getattr(r.depths[k], b) for r in results], axis=0)
            for m in TABLE_MODALITIES:
                sl = results[0].depths[k].slices[m]
                stats = describe(np.array([100.0 * getattr(r.depths[k], b)[sl].mean() for r in results]))
                chan = describe(100.0 * per_channel[sl])
                rows.append(
                    {
                        "depth": k,
                        "branch": b,
                        "modality": m,
                        "mean": stats["mean"],
                        "std": stats["std"],
                        "std_channels": chan["std"],
                        "n_cases": stats["n"],
                        "n_channels": chan["n"],
                    }
                )
    return rows


def combine_tables(tables: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several runs' Table 3 (seeds) as one: mean of the run means ± mean of the run stds (as Table 1),
    ``n_cases`` summed, ``n_runs`` added."""
    out = []
    for cells in zip(*tables, strict=True):
        stds = [c["std"] for c in cells if c["std"] is not None]
        chans = [c["std_channels"] for c in cells if c["std_channels"] is not None]
        out.append(
            {
                **cells[0],
                "mean": float(np.mean([c["mean"] for c in cells])),
                "std": float(np.mean(stds)) if len(stds) == len(cells) else None,
                "std_channels": float(np.mean(chans)) if len(chans) == len(cells) else None,
                "n_cases": sum(int(c["n_cases"]) for c in cells),
                "n_runs": len(cells),
            }
        )
    return out


def read_table3_csv(path: str | Path) -> list[dict[str, Any]]:
    """A ``table3.csv`` back as rows (numbers as floats, empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    num = ("mean", "std", "std_channels")
    return [
        {
            **r,
            "depth": int(r["depth"]),
            **{k: float(r[k]) if r[k] else None for k in num},
            "n_cases": int(r["n_cases"]),
            "n_channels": int(r["n_channels"]),
        }
        for r in rows
    ]


def table3_markdown(rows: Sequence[dict[str, Any]], *, title: str, notes: Iterable[str] = ()) -> str:
    """Table 3 as the paper lays it out (± over cases), then the same means ± the spread over channels."""
    cell = {(r["depth"], r["branch"], r["modality"]): r for r in rows}
    order = [(b, m) for b in BRANCHES for m in TABLE_MODALITIES]

    def table(spread: str) -> list[str]:
        lines = [
            "| Depth | Foreground PET | Foreground CT | Background PET | Background CT |",
            "|---:|---:|---:|---:|---:|",
        ]
        for k in DEPTHS:
            vals = [format_cell(cell[(k, b, m)]["mean"], cell[(k, b, m)][spread]) for b, m in order]
            lines.append(f"| {k} | " + " | ".join(vals) + " |")
        return lines

    return "\n".join(
        [
            f"# {title}",
            "",
            "Effects (%) of PET/CT in TAMW for emphasis at different depths: 100 x the mean TAMW channel "
            "weight (tanh, eq. 3) over the modality's channels, mean ± sample std over cases.",
            "",
            *table("std"),
            "",
            "The same means ± the standard deviation over channels (of the per-channel weights averaged over "
            "cases):",
            "",
            *table("std_channels"),
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )


def write_table3(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, *, title: str, notes: Iterable[str] = ()
) -> list[Path]:
    """``table3.md`` and ``table3.csv`` (atomic)."""
    out_dir = Path(out_dir)
    columns = (*TABLE_COLUMNS, "n_runs") if rows and "n_runs" in rows[0] else TABLE_COLUMNS
    return [
        atomic_write_text(out_dir / "table3.md", table3_markdown(rows, title=title, notes=notes)),
        atomic_write_text(out_dir / "table3.csv", rows_csv(rows, columns)),
    ]


def write_tamw_outputs(
    results: Sequence[CaseWeights], out_dir: str | Path, *, title: str = "Table 3", notes: Iterable[str] = ()
) -> list[Path]:
    """Table 3 (``table3.md/.csv``) and the raw per-case and per-channel CSVs."""
    out_dir = Path(out_dir)
    paths = write_table3(table3(results), out_dir, title=title, notes=notes)
    per_case = [row for r in results for row in case_rows(r)]
    channels = [row for r in results for row in channel_rows(r)]
    paths.append(
        atomic_write_text(out_dir / "tamw_weights_per_case.csv", rows_csv(per_case, PER_CASE_COLUMNS))
    )
    chan_cols = ("case_id", "depth", "channel", "modality", "index_in_modality", "w_fore", "w_back")
    paths.append(atomic_write_text(out_dir / "tamw_weights_channels.csv", rows_csv(channels, chan_cols)))
    return paths
