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
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from h2aseg.errors import H2ASegError
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


class AnalysisError(H2ASegError):
    """A checkpoint, model or case selection the analysis cannot use; the message names it."""


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


def modality_slices(variant: str, skip_channels: int, total: int) -> dict[str, slice]:
    """Where PET, CT and the decoder feature sit among TAMW's ``total`` channels (``skip_channels`` = C_k):
    paper ``[F_pet, F_ct, D~]``, released ``[F_ct, F_pet, D~]``."""
    c = int(skip_channels)
    first, second = (slice(0, c), slice(c, 2 * c))
    pet, ct = (first, second) if variant == "paper" else (second, first)
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
    case_id: str, calls: Sequence[TamwCall], variant: str, weighting: Weighting = "uniform"
) -> CaseWeights:
    """A case's :class:`CaseWeights` from its TAMW calls (every window of every depth)."""
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
            modality_slices(variant, mine[0].skip_channels, fore.shape[1]),
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


# ------------------------------------------------------------------------------------------- running it
@dataclass
class LoadedModel:
    """A trained H2ASeg as ``h2aseg predict`` loads it, with where its split is recorded."""

    path: Path
    predictor: Any  # h2aseg.inference.predictor.Predictor
    stored_split: dict[str, Any] | None

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
    ``--set``) and check that it is an H2ASeg with TAMW (:class:`AnalysisError` otherwise)."""
    from h2aseg.checkpoint import load_checkpoint
    from h2aseg.config import Config
    from h2aseg.inference.predictor import Predictor

    path = Path(checkpoint)
    payload = load_checkpoint(path)
    name = Config.from_dict(payload["config"], source=f"{path} (stored config)").model.name
    if name != "h2aseg":
        raise AnalysisError(f"{path}: a {name!r} checkpoint; the TAMW analysis needs an H2ASeg checkpoint")
    split = payload.get("split")
    del payload
    predictor = Predictor.from_checkpoint(path, list(overrides or []))
    tamw_modules(predictor.model, str(path))
    return LoadedModel(path, predictor, split if isinstance(split, dict) else None)


def resolve_split(loaded: LoadedModel, cases: Sequence[Any]) -> tuple[Any, str]:
    """The split the model was trained with, and where it came from: stored in the checkpoint (training
    checkpoints), ``data.split_file``, the run folder's ``split.json``, else made from ``cases`` with the
    stored ratios and seed (as training would have made it on this data)."""
    from h2aseg.data.splits import Split, SplitError, load_split, make_split

    data = loaded.predictor.cfg.data
    doc = loaded.stored_split
    if doc is not None:
        try:
            return Split(
                list(doc["train"]),
                list(doc["val"]),
                list(doc["test"]),
                int(doc.get("seed", 0)),
                tuple(doc.get("ratios", (0.6, 0.2, 0.2))),
                dict(doc.get("patients", {})),
            ), f"the split stored in {loaded.path.name}"
        except (KeyError, TypeError, ValueError):
            pass
    for f in (data.split_file, loaded.path.parent.parent / "split.json"):
        if f and Path(f).is_file():
            try:
                return load_split(f), str(f)
            except SplitError:
                continue
    split = make_split(list(cases), tuple(data.split_ratios), data.split_seed)  # type: ignore[arg-type]
    return split, f"a split made from the data (ratios {list(data.split_ratios)}, seed {data.split_seed})"


def select_cases(
    loaded: LoadedModel, data: str | Path, part: str = "test", limit: int | None = None
) -> tuple[list[Any], str]:
    """The cases under ``data`` (the model's layout settings) in ``part`` (train, val, test or all) of its
    split, in case-id order, at most ``limit``; and a line saying which."""
    from h2aseg.data.layouts import discover

    cfg = loaded.predictor.cfg.data
    cases = discover(data, cfg.layout, swap_channels=cfg.swap_channels)
    if part == "all":
        chosen, where = cases, f"all {len(cases)} cases under {data}"
    else:
        if part not in ("train", "val", "test"):
            raise AnalysisError(f"split part must be train, val, test or all, got {part!r}")
        split, source = resolve_split(loaded, cases)
        ids = set(split.part(part))
        chosen = [c for c in cases if c.case_id in ids]
        if not chosen:
            raise AnalysisError(
                f"{data}: none of the {len(ids)} {part} case(s) of {source} are there "
                "(another dataset? use --split all)"
            )
        where = f"the {part} part of {source}: {len(chosen)} of its {len(ids)} case(s) found under {data}"
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
        self.loaded = LoadedModel(Path(checkpoint), predictor, None)
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
