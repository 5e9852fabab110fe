"""Two models on the same studies: paired differences, lesion counts, and the shipping rule.

``h2aseg evaluate-paired`` reads the ``per_case.csv`` of two ``h2aseg evaluate`` folders made on the same
studies (a candidate checkpoint and the one it would replace, say) and reports what a decision needs:

* each side's mean Dice over the studies with lesions ± its standard error over studies;
* the paired difference (candidate minus reference, study by study) ± its standard error, and the studies
  where the candidate is better / worse: with a few dozen studies the spread between studies is far larger
  than the difference between two models, and pairing removes it;
* lesions found (true-positive lesions of all ground-truth lesions), false-positive lesions per study over
  every study and over the lesion-free ones, and the studies with lesions at Dice 0;
* the shipping rule of docs/training-notes.md section 14: the candidate ships when its Dice is higher by
  more than one standard error of the paired difference and it finds at least as many lesions.

Both folders must hold the same studies: a study scored on one side only is named, never dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from h2aseg.errors import InputError
from h2aseg.evaluation.report import read_per_case_csv
from h2aseg.files import atomic_write_text

#: The per-case columns this comparison reads (``h2aseg evaluate --protocol paper|autopet`` writes them).
NEEDED_COLUMNS = ("case_id", "has_lesion", "dice", "gt_lesions", "tp_lesions", "fp_lesions")


@dataclass(frozen=True)
class Estimate:
    """A mean over studies with its standard error (``se`` None below two studies)."""

    mean: float
    se: float | None
    n: int

    def text(self, signed: bool = False) -> str:
        """``"61.2 ± 3.4"`` (the metric's own unit: Dice in percent)."""
        sign = "+" if signed else ""
        se = "" if self.se is None else f" ± {self.se:.1f}"
        return f"{self.mean:{sign}.1f}{se}"


def estimate(values: Sequence[float]) -> Estimate | None:
    """Mean and standard error of ``values`` (None when empty)."""
    if len(values) == 0:
        return None
    a = np.asarray(values, dtype=float)
    se = float(stats.sem(a)) if a.size > 1 else None
    return Estimate(float(a.mean()), se, int(a.size))


@dataclass(frozen=True)
class SideSummary:
    """One model's scores on the compared studies."""

    name: str
    source: str
    dice: Estimate | None
    lesions_found: int
    lesions_total: int
    fp_lesions_per_study: float
    fp_lesions_per_lesion_free_study: float | None
    studies_at_dice_zero: int


@dataclass(frozen=True)
class PairedComparison:
    """The candidate against the reference on the same studies."""

    candidate: SideSummary
    reference: SideSummary
    n_studies: int
    n_lesion_studies: int
    dice_difference: Estimate | None
    better: int
    worse: int
    ships: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_case(path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """``{case_id: row}`` of an evaluation folder (or its ``per_case.csv``), checked."""
    csv_path = path / "per_case.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no per-case table here (run `h2aseg evaluate --out {path}` first)")
    rows = read_per_case_csv(csv_path)
    if not rows:
        raise InputError(f"{csv_path}: the per-case table has no studies")
    missing = [c for c in NEEDED_COLUMNS if c not in rows[0]]
    if missing:
        raise InputError(
            f"{csv_path}: missing column(s) {', '.join(missing)} (written by `h2aseg evaluate "
            "--protocol paper` or `autopet`)"
        )
    by_case: dict[str, dict[str, Any]] = {}
    for row in rows:
        case = str(row["case_id"])
        if case in by_case:
            raise InputError(f"{csv_path}: study {case!r} appears twice")
        for c in NEEDED_COLUMNS[1:]:
            if not isinstance(row[c], float):
                raise InputError(f"{csv_path}: study {case!r} has a non-numeric {c} ({row[c]!r})")
        by_case[case] = row
    return csv_path, by_case


def side_summary(name: str, source: str | Path, rows: Sequence[Mapping[str, Any]]) -> SideSummary:
    """One model's :class:`SideSummary` from per-case rows (``per_case.csv``'s, or ``evaluate_folders``')."""
    lesion = [r for r in rows if float(r["has_lesion"]) == 1.0]
    free = [r for r in rows if float(r["has_lesion"]) != 1.0]
    dice = [float(r["dice"]) for r in lesion if math.isfinite(float(r["dice"]))]
    fp_free = [float(r["fp_lesions"]) for r in free]
    return SideSummary(
        name=name,
        source=str(source),
        dice=estimate(dice),
        lesions_found=int(sum(float(r["tp_lesions"]) for r in lesion)),
        lesions_total=int(sum(float(r["gt_lesions"]) for r in lesion)),
        fp_lesions_per_study=float(np.mean([float(r["fp_lesions"]) for r in rows])),
        fp_lesions_per_lesion_free_study=float(np.mean(fp_free)) if fp_free else None,
        studies_at_dice_zero=sum(1 for d in dice if d == 0.0),
    )


def compare_evaluations(
    candidate: str | Path,
    reference: str | Path,
    candidate_name: str = "candidate",
    reference_name: str = "reference",
) -> PairedComparison:
    """Compare two evaluation folders made on the same studies (see the module's docstring)."""
    cand_csv, cand = _per_case(Path(candidate))
    ref_csv, ref = _per_case(Path(reference))
    only_cand, only_ref = sorted(set(cand) - set(ref)), sorted(set(ref) - set(cand))
    if only_cand or only_ref:

        def names(cases: list[str]) -> str:
            return ", ".join(cases[:5]) + (f" and {len(cases) - 5} more" if len(cases) > 5 else "")

        parts = []
        if only_cand:
            parts.append(f"{len(only_cand)} only in {cand_csv} ({names(only_cand)})")
        if only_ref:
            parts.append(f"{len(only_ref)} only in {ref_csv} ({names(only_ref)})")
        raise InputError("the two evaluations hold different studies: " + "; ".join(parts))
    cases = sorted(cand)
    for c in cases:
        if cand[c]["has_lesion"] != ref[c]["has_lesion"] or cand[c]["gt_lesions"] != ref[c]["gt_lesions"]:
            raise InputError(
                f"study {c!r}: {cand_csv} and {ref_csv} disagree on its ground truth "
                f"(lesions {cand[c]['gt_lesions']:.0f} against {ref[c]['gt_lesions']:.0f}): "
                "were they scored against the same labels?"
            )
    lesion = [
        c
        for c in cases
        if cand[c]["has_lesion"] == 1.0 and math.isfinite(cand[c]["dice"]) and math.isfinite(ref[c]["dice"])
    ]
    diffs = [cand[c]["dice"] - ref[c]["dice"] for c in lesion]
    a = side_summary(candidate_name, cand_csv, [cand[c] for c in cases])
    b = side_summary(reference_name, ref_csv, [ref[c] for c in cases])
    diff = estimate(diffs)
    ships, reason = _rule(diff, a, b)
    return PairedComparison(
        candidate=a,
        reference=b,
        n_studies=len(cases),
        n_lesion_studies=len(lesion),
        dice_difference=diff,
        better=sum(d > 0 for d in diffs),
        worse=sum(d < 0 for d in diffs),
        ships=ships,
        reason=reason,
    )


def _rule(diff: Estimate | None, a: SideSummary, b: SideSummary) -> tuple[bool, str]:
    """Section 14's rule: Dice higher by more than one standard error, and at least as many lesions found."""
    if diff is None or diff.se is None:
        return False, "fewer than two studies with lesions: no standard error, no decision"
    higher = diff.mean > diff.se
    found = a.lesions_found >= b.lesions_found
    what = (
        f"Dice {diff.mean:+.2f} points with a standard error of {diff.se:.2f} "
        f"({'more' if higher else 'not more'} than one standard error); lesions found "
        f"{a.lesions_found} against {b.lesions_found}"
    )
    return higher and found, what


def comparison_markdown(cmp: PairedComparison) -> str:
    """``paired.md``: one row per model, the paired difference and the rule's verdict."""

    def fmt(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    lines = [
        f"# {cmp.candidate.name} against {cmp.reference.name}: paired over the same studies",
        "",
        f"{cmp.n_studies} studies, {cmp.n_lesion_studies} with lesions. Dice (%) over the studies with"
        " lesions ± standard error over studies; false-positive (FP) lesions per study over every study"
        " and over the lesion-free ones.",
        "",
        "| model | Dice | lesions found | FP lesions / study | FP lesions / lesion-free study"
        " | studies at Dice 0 |",
        "|---|---|---|---|---|---|",
    ]
    for s in (cmp.candidate, cmp.reference):
        dice = "–" if s.dice is None else s.dice.text()
        lines.append(
            f"| {s.name} | {dice} | {s.lesions_found} / {s.lesions_total} | {s.fp_lesions_per_study:.2f} | "
            f"{fmt(s.fp_lesions_per_lesion_free_study)} | {s.studies_at_dice_zero} |"
        )
    d = "–" if cmp.dice_difference is None else cmp.dice_difference.text(signed=True)
    verdict = "ship" if cmp.ships else "do not ship"
    lines += [
        "",
        f"Paired Dice difference ({cmp.candidate.name} minus {cmp.reference.name}): **{d}** points, "
        f"better on {cmp.better} and worse on {cmp.worse} of {cmp.n_lesion_studies} studies with lesions.",
        "",
        f"Rule (docs/training-notes.md section 14): **{verdict}** — {cmp.reason}.",
        "",
        f"Sources: `{cmp.candidate.source}`, `{cmp.reference.source}`.",
    ]
    return "\n".join(lines) + "\n"


def write_comparison(cmp: PairedComparison, out: str | Path) -> dict[str, Path]:
    """``paired.md`` and ``paired.json`` in ``out`` (written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "markdown": atomic_write_text(out / "paired.md", comparison_markdown(cmp)),
        "json": atomic_write_text(out / "paired.json", json.dumps(cmp.to_dict(), indent=2) + "\n"),
    }
