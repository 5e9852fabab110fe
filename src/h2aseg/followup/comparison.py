"""``h2aseg compare``'s measurements: both studies quantified, lesions matched, patient-level changes and
the PERCIST-style category, and the three data files (``lesions.csv``, ``patient.csv``,
``registration.json``); ``docs/followup.md``.

Each study is measured exactly as ``h2aseg quantify`` measures it
(:func:`~h2aseg.evaluation.quantify.quantify_volumes`: SUVmax, SUVpeak, volume, TLG per 18-connected
lesion); changes are follow-up minus baseline, in units and in per cent of the baseline (empty where the
baseline value is 0 or missing). A lesion's ``number`` is its number on both pictures of the page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2aseg.data.geometry import resample_labels
from h2aseg.data.io import read_volume
from h2aseg.evaluation.quantify import Lesion, Quantification, csv_text, label_lesions, quantify_volumes
from h2aseg.files import atomic_write_text
from h2aseg.followup.matching import LesionPair, mapped_labels, match_lesions, overlap_counts
from h2aseg.followup.percist import (
    SOURCE,
    SUV_NOTE,
    Category,
    LiverError,
    LiverReference,
    liver_reference,
    liver_sphere,
    measurability_threshold,
    percist_category,
)
from h2aseg.followup.registration import Rigid
from h2aseg.followup.studies import Study

MEASURES = ("volume_ml", "suv_max", "suv_peak", "tlg")
ZERO_WHEN_ABSENT = ("volume_ml", "tlg")
LESION_COLUMNS = [
    "number",
    "status",
    "baseline_lesion_id",
    "followup_lesion_id",
    "matched_by",
    "dice",
    "distance_mm",
    "note",
    *(f"{side}_{m}" for m in MEASURES for side in ("baseline", "followup")),
    *(f"delta_{m}{unit}" for m in MEASURES for unit in ("", "_pct")),
    *(f"baseline_centroid_{a}_mm" for a in "xyz"),
    *(f"followup_centroid_{a}_mm" for a in "xyz"),
]
PATIENT_TOTALS = (
    ("mtv_ml", "mtv_ml"),
    ("tlg", "tlg"),
    ("suv_peak", "suv_peak"),
    ("lesion_count", "lesion_count"),
)


@dataclass
class LiverInputs:
    """Where the liver reference comes from: a region used as given (``roi``, ``followup_roi``) or a
    whole-liver mask for our 3 cm sphere (``mask``); files on any grid of the study's world."""

    roi: Path | None = None
    mask: Path | None = None
    followup_roi: Path | None = None


@dataclass
class Comparison:
    baseline: Study
    followup: Study
    rigid: Rigid
    patient_check: str
    q_baseline: Quantification
    q_followup: Quantification
    pairs: list[LesionPair]
    numbered_baseline: np.ndarray  # lesion numbers of the pairs on the baseline PET grid (0 = none)
    numbered_followup: np.ndarray  # on the follow-up PET grid
    liver: tuple[LiverReference | None, LiverReference | None]
    category: Category


def _change(a: float | None, b: float | None) -> tuple[float | None, float | None]:
    """``b - a`` and its per cent of ``a`` (None where undefined)."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None, None
    return b - a, (100.0 * (b - a) / a if a else None)


def _numbered(labels: np.ndarray, numbers: dict[int, int]) -> np.ndarray:
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    for lesion_id, number in numbers.items():
        lut[lesion_id] = number
    return lut[labels]


def _liver(
    study: Study, region: np.ndarray | None, source: str, to_world: np.ndarray, region_affine: np.ndarray
) -> LiverReference | None:
    """The reference on ``study``'s PET grid of ``region`` (grid ``to_world @ region_affine``)."""
    if region is None:
        return None
    on_pet = resample_labels(
        region.astype(np.uint8), to_world @ region_affine, study.pet.affine, study.pet.shape
    )
    return liver_reference(study.pet.array, on_pet, source, study.mask.array)


def liver_references(
    baseline: Study, followup: Study, rigid: Rigid, inputs: LiverInputs
) -> tuple[LiverReference | None, LiverReference | None]:
    """Baseline and follow-up liver references; a baseline region is carried to the follow-up through the
    alignment unless ``inputs.followup_roi`` is given."""
    if inputs.roi is not None and inputs.mask is not None:
        raise LiverError(
            "give --liver-roi (a region used as given) or --liver-mask (our 3 cm sphere), not both"
        )
    region: np.ndarray | None = None
    affine = np.eye(4)
    if inputs.roi is not None:
        vol = read_volume(inputs.roi, dtype=None)
        region, affine, source = np.asarray(vol.array) > 0, vol.affine, f"user region {inputs.roi}"
    elif inputs.mask is not None:
        vol = read_volume(inputs.mask, dtype=None)
        region, affine = liver_sphere(vol), vol.affine
        source = f"ours: 3 cm sphere at the deepest point of the liver mask {inputs.mask}"
    else:
        source = ""
    base = _liver(baseline, region, source, np.eye(4), affine)
    if inputs.followup_roi is not None:
        fvol = read_volume(inputs.followup_roi, dtype=None)
        fu = _liver(
            followup, np.asarray(fvol.array) > 0, f"user region {inputs.followup_roi}", np.eye(4), fvol.affine
        )
    else:
        fu = _liver(
            followup, region, f"{source}, carried to the follow-up by the alignment", rigid.array, affine
        )
    return base, fu


def compare_studies(
    baseline: Study,
    followup: Study,
    rigid: Rigid,
    *,
    patient_check: str = "",
    liver: LiverInputs | None = None,
) -> Comparison:
    """Measure both studies, match their lesions through ``rigid`` and categorise the response."""
    qb = quantify_volumes(baseline.pet, baseline.mask, case_id="baseline")
    qf = quantify_volumes(followup.pet, followup.mask, case_id="follow-up")
    labels_b, n_b = label_lesions(baseline.mask.array)
    labels_f, n_f = label_lesions(followup.mask.array)
    moved = mapped_labels(
        labels_f,
        rigid.followup_affine_in_baseline(followup.pet.affine),
        baseline.pet.affine,
        baseline.pet.shape,
    )
    fu_centroids = rigid.to_baseline(_centroids(qf.lesions))
    pairs = match_lesions(
        overlap_counts(labels_b, moved, n_b, n_f),
        _centroids(qb.lesions),
        fu_centroids,
        np.array([les.volume_ml for les in qb.lesions]),
        np.array([les.volume_ml for les in qf.lesions]),
    )
    refs = liver_references(baseline, followup, rigid, liver or LiverInputs())
    new = sum(1 for p in pairs if p.status == "new" and not p.note)
    category = percist_category(
        qb.patient.suv_peak,
        [les.suv_peak for les in qf.lesions],
        qb.patient.tlg,
        qf.patient.tlg,
        new,
        *refs,
    )
    return Comparison(
        baseline,
        followup,
        rigid,
        patient_check,
        qb,
        qf,
        pairs,
        _numbered(labels_b, {p.baseline_id: p.number for p in pairs if p.baseline_id}),
        _numbered(labels_f, {p.followup_id: p.number for p in pairs if p.followup_id}),
        refs,
        category,
    )


def _centroids(lesions: list[Lesion]) -> np.ndarray:
    return np.array([[les.centroid_x_mm, les.centroid_y_mm, les.centroid_z_mm] for les in lesions]).reshape(
        -1, 3
    )


def lesion_rows(c: Comparison) -> list[dict[str, object]]:
    """The rows of ``lesions.csv`` (:data:`LESION_COLUMNS`)."""
    rows = []
    for p in c.pairs:
        b = c.q_baseline.lesions[p.baseline_id - 1] if p.baseline_id else None
        f = c.q_followup.lesions[p.followup_id - 1] if p.followup_id else None
        row: dict[str, object] = {
            "number": p.number,
            "status": p.status,
            "baseline_lesion_id": p.baseline_id,
            "followup_lesion_id": p.followup_id,
            "matched_by": p.matched_by,
            "dice": p.dice,
            "distance_mm": p.distance_mm,
            "note": p.note,
        }
        for m in MEASURES:  # a vanished lesion has no volume or TLG at follow-up, a new one had none before
            absent = 0.0 if m in ZERO_WHEN_ABSENT else None
            vb = absent if b is None else float(getattr(b, m))
            vf = absent if f is None else float(getattr(f, m))
            row[f"baseline_{m}"], row[f"followup_{m}"] = vb, vf
            row[f"delta_{m}"], row[f"delta_{m}_pct"] = _change(vb, vf)
        for side, les in (("baseline", b), ("followup", f)):
            for a in "xyz":
                row[f"{side}_centroid_{a}_mm"] = None if les is None else getattr(les, f"centroid_{a}_mm")
        rows.append(row)
    return rows


def patient_row(c: Comparison) -> dict[str, object]:
    """The one row of ``patient.csv``: counts, totals at both time points and their changes, the liver
    reference, the category."""
    pb, pf = c.q_baseline.patient, c.q_followup.patient
    status = [p.status for p in c.pairs]
    row: dict[str, object] = {
        "patient_check": c.patient_check,
        "matched": status.count("matched"),
        "new": status.count("new"),
        "new_unequivocal": sum(1 for p in c.pairs if p.status == "new" and not p.note),
        "vanished": status.count("vanished"),
    }
    for name, attr in PATIENT_TOTALS:
        vb, vf = float(getattr(pb, attr)), float(getattr(pf, attr))
        row[f"baseline_{name}"], row[f"followup_{name}"] = vb, vf
        row[f"delta_{name}"], row[f"delta_{name}_pct"] = _change(vb, vf)
    lb, lf = c.liver
    row.update(
        baseline_liver_mean=None if lb is None else lb.mean,
        baseline_liver_sd=None if lb is None else lb.sd,
        followup_liver_mean=None if lf is None else lf.mean,
        followup_liver_sd=None if lf is None else lf.sd,
        liver_source="none" if lb is None else lb.source,
        measurable_threshold=None if lb is None else measurability_threshold(lb),
        percist_category=c.category.category,
        percist_reason=c.category.reason,
        suv_type=SUV_NOTE,
        rules=SOURCE,
    )
    return row


def registration_record(c: Comparison) -> dict[str, object]:
    return {
        "baseline_ct": c.baseline.ct.path,
        "followup_ct": c.followup.ct.path,
        "direction": "matrix maps a baseline world point (RAS+ mm) to the follow-up world point",
        **c.rigid.as_dict(),
    }


def write_outputs(c: Comparison, out: Path) -> list[Path]:
    """``lesions.csv``, ``patient.csv`` and ``registration.json`` in ``out``, each written atomically."""
    row = patient_row(c)
    return [
        atomic_write_text(out / "lesions.csv", csv_text(lesion_rows(c), LESION_COLUMNS)),
        atomic_write_text(out / "patient.csv", csv_text([row], list(row))),
        atomic_write_text(out / "registration.json", json.dumps(registration_record(c), indent=2) + "\n"),
    ]
