"""Seeded, patient-level, lesion-stratified train/validation/test splits, saved as JSON.

All studies of a patient go to the same part (AutoPET has several studies for some patients). Patients are
stratified by whether they have lesion-free studies and/or studies with lesions, so lesion-free studies fall
in every part; within each stratum the patients are shuffled with the seed and shared out so that every part
receives its ratio of patients overall (each part with a non-zero ratio gets at least one patient when there
are enough).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from h2aseg.data.layouts import Case
from h2aseg.errors import InputError
from h2aseg.files import atomic_write_text

PARTS = ("train", "val", "test")


class SplitError(InputError):
    """A split file or split request is invalid; the message names the file or the problem."""


@dataclass
class Split:
    """Case ids of each part. ``patients`` maps case id -> patient id (for leak checks)."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    patients: dict[str, str] = field(default_factory=dict)

    def part(self, name: str) -> list[str]:
        if name not in PARTS:
            raise KeyError(f"unknown split part {name!r}; choose one of {', '.join(PARTS)}")
        return getattr(self, name)

    def all_ids(self) -> list[str]:
        return [*self.train, *self.val, *self.test]


def label_has_lesion(path: str | Path) -> bool:
    """True when the label file has any non-zero voxel."""
    return bool(np.any(np.asanyarray(nib.load(str(path)).dataobj)))


def _check_ratios(ratios: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    r = tuple(float(v) for v in ratios)
    if len(r) != 3 or any(v < 0 or not math.isfinite(v) for v in r) or abs(sum(r) - 1.0) > 1e-6:
        raise SplitError(f"split ratios must be three non-negative numbers summing to 1, got {tuple(ratios)}")
    return r  # type: ignore[return-value]


def _largest_remainder(n: int, ratios: tuple[float, float, float]) -> list[int]:
    raw = [n * r for r in ratios]
    counts = [math.floor(v) for v in raw]
    order = sorted(range(3), key=lambda i: (raw[i] - counts[i], ratios[i]), reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i in range(3) if ratios[i] > 0]
    if n >= len(wanted):  # every part with a non-zero ratio gets at least one patient
        for i in wanted:
            while counts[i] == 0:
                j = max(range(3), key=lambda k: counts[k])
                counts[j] -= 1
                counts[i] += 1
    return counts


def make_split(
    cases: list[Case],
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 12345,
    has_lesion: dict[str, bool] | None = None,
) -> Split:
    """Split ``cases`` by patient into train/val/test with ``ratios``, stratified lesion-free vs lesion.

    ``has_lesion`` (case id -> bool) avoids reading labels; otherwise labels are read (unlabelled cases count
    as lesion-free). The same cases, ratios and seed always give the same split.
    """
    r = _check_ratios(ratios)
    if not cases:
        raise SplitError("cannot split an empty list of cases")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise SplitError(f"duplicate case id(s): {', '.join(dup[:8])}")
    lesion: dict[str, bool] = {}
    for c in cases:
        if has_lesion is not None and c.case_id in has_lesion:
            lesion[c.case_id] = bool(has_lesion[c.case_id])
        else:
            lesion[c.case_id] = c.label is not None and label_has_lesion(c.label)

    by_patient: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        by_patient[c.patient_id].append(c.case_id)
    strata: dict[tuple[bool, bool], list[str]] = defaultdict(list)
    for pid in sorted(by_patient):
        flags = [lesion[cid] for cid in by_patient[pid]]
        strata[(not all(flags), any(flags))].append(pid)

    rng = np.random.default_rng(seed)
    keys = sorted(strata)
    shuffled = {k: [strata[k][i] for i in rng.permutation(len(strata[k]))] for k in keys}
    total = _largest_remainder(len(by_patient), r)
    # per stratum: floors of its share, then the remaining patients go where the totals still need them
    alloc = {k: [math.floor(len(shuffled[k]) * r[p]) for p in range(3)] for k in keys}
    for p in range(3):
        while sum(alloc[k][p] for k in keys) > total[p]:
            k = max(keys, key=lambda k: alloc[k][p])
            alloc[k][p] -= 1
    need = [total[p] - sum(alloc[k][p] for k in keys) for p in range(3)]
    left = {k: len(shuffled[k]) - sum(alloc[k]) for k in keys}
    pairs = sorted(
        (
            (len(shuffled[k]) * r[p] - math.floor(len(shuffled[k]) * r[p]), r[p], ki, p)
            for ki, k in enumerate(keys)
            for p in range(3)
        ),
        reverse=True,
    )
    for _frac, _ratio, ki, p in pairs:
        k = keys[ki]
        n = min(left[k], need[p])
        alloc[k][p] += n
        left[k] -= n
        need[p] -= n

    parts: list[list[str]] = [[], [], []]
    for k in keys:
        start = 0
        for p in range(3):
            for pid in shuffled[k][start : start + alloc[k][p]]:
                parts[p].extend(by_patient[pid])
            start += alloc[k][p]
    patients = {c.case_id: c.patient_id for c in cases}
    return Split(sorted(parts[0]), sorted(parts[1]), sorted(parts[2]), int(seed), r, patients)


def check_split(split: Split, cases: list[Case] | None = None) -> None:
    """Raise :class:`SplitError` if a case is in two parts, a patient spans parts, or ids are unknown."""
    seen: dict[str, str] = {}
    for name in PARTS:
        for cid in split.part(name):
            if cid in seen:
                raise SplitError(f"case {cid!r} is in both {seen[cid]!r} and {name!r}")
            seen[cid] = name
    patients = dict(split.patients)
    if cases is not None:
        patients.update({c.case_id: c.patient_id for c in cases})
        unknown = sorted(set(seen) - {c.case_id for c in cases})
        if unknown:
            raise SplitError(f"split lists case id(s) not in the dataset: {', '.join(unknown[:8])}")
    part_of_patient: dict[str, str] = {}
    for cid, name in seen.items():
        pid = patients.get(cid)
        if pid is None:
            continue
        if part_of_patient.setdefault(pid, name) != name:
            raise SplitError(f"patient {pid!r} has studies in both {part_of_patient[pid]!r} and {name!r}")


def save_split(split: Split, path: str | Path) -> None:
    """Write ``split`` as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "seed": split.seed,
        "ratios": list(split.ratios),
        "train": list(split.train),
        "val": list(split.val),
        "test": list(split.test),
        "patients": dict(split.patients),
    }
    atomic_write_text(path, json.dumps(doc, indent=1))


def load_split(path: str | Path) -> Split:
    """Read a split saved by :func:`save_split`; raises :class:`SplitError` naming the file if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: split file not found")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SplitError(f"{path}: not a valid JSON split file ({e})") from e
    if not isinstance(doc, dict):
        raise SplitError(f"{path}: expected a JSON object with keys {', '.join(PARTS)}")
    missing = [k for k in PARTS if k not in doc]
    if missing:
        raise SplitError(f"{path}: missing key(s) {', '.join(missing)}")
    for k in PARTS:
        if not isinstance(doc[k], list) or not all(isinstance(v, str) for v in doc[k]):
            raise SplitError(f"{path}: {k!r} must be a list of case id strings")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SplitError(f"{path}: 'seed' must be an integer")
    patients = doc.get("patients", {})
    if not isinstance(patients, dict):
        raise SplitError(f"{path}: 'patients' must be a mapping of case id to patient id")
    try:
        ratios = _check_ratios(doc.get("ratios", (0.6, 0.2, 0.2)))
    except (SplitError, TypeError, ValueError) as e:
        raise SplitError(f"{path}: {e}") from e
    split = Split(
        doc["train"], doc["val"], doc["test"], seed, ratios, {str(k): str(v) for k, v in patients.items()}
    )
    try:
        check_split(split)
    except SplitError as e:
        raise SplitError(f"{path}: {e}") from e
    return split
