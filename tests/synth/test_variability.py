"""Variability (``h2aseg.synth.variability``): default unchanged, drawn values in range and recorded."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from h2aseg.synth import (
    LEVELS,
    PhantomError,
    load_variability,
    resolve_variability,
    synth_case,
    write_cohort,
)
from h2aseg.synth.tissues import IS_BODY
from h2aseg.synth.variability import (
    OUT_OF_RANGE,
    PATIENT_ORGANS,
    PATIENT_UPTAKE,
    TODAY,
    WIDE,
    Span,
    Variability,
)

KEYS = ("ct", "ct_affine", "pet", "pet_affine", "label", "label_affine", "tissue")
# Computed with the phantom before variability existed (so existing cohorts regenerate by seed). The arrays
# depend on NumPy's random streams and SciPy's filters: after an upgrade that changes them, re-pin from a
# checkout of the code before variability, not from the current code.
PINNED = {
    "wholebody": "0b6cac5284cf2612bcdfae08f5617c1d46d93ce2feb2e477763f747644f385c3",
    "headneck": "894323b9ba746405a5540c788d9bc6bb48681be2bdb05f3c0eeaf94fcf2fae32",
    "phantom.json": "343495f5bf4556ae1eea45f90b0e4b0f41a5ede05b622fdf5ff6f2f9f9d35a3c",
}
SMALL = {"shape": (24, 24, 32)}


def _digest(res: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for k in KEYS:
        a = np.ascontiguousarray(res[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(json.dumps(res["meta"], sort_keys=True).encode())
    return h.hexdigest()


def _cohort(tmp_path: Path, name: str, v: Variability, n: int = 3, seed: int = 26) -> dict[str, Any]:
    write_cohort(tmp_path / name, n, "autopet", seed=seed, shape=(16, 16, 20), variability=v)
    return json.loads((tmp_path / name / "phantom.json").read_text())


def test_default_is_byte_identical_to_the_phantom_before_variability(tmp_path: Path) -> None:
    wb = {"seed": 26, "shape": (24, 24, 32), "n_lesions": 3, "lesion_free": False}
    assert _digest(synth_case("wholebody", **wb)) == PINNED["wholebody"]
    assert _digest(synth_case("wholebody", **wb, variability=LEVELS["default"])) == PINNED["wholebody"]
    assert _digest(synth_case("wholebody", **wb, symmetric_decoys=(0, 0))) == PINNED["wholebody"]
    assert _digest(synth_case("headneck", seed=26, shape=(24, 24, 28))) == PINNED["headneck"]
    write_cohort(tmp_path / "c", 3, "autopet", seed=26, shape=(16, 16, 20), variability=LEVELS["default"])
    assert (
        hashlib.sha256((tmp_path / "c" / "phantom.json").read_bytes()).hexdigest() == PINNED["phantom.json"]
    )


def _recorded(v: Variability, rec: dict[str, Any]) -> list[tuple[str, float]]:
    """``(dotted range name, value)`` of every value a study's record says it drew (turns: magnitude)."""
    kinds = dict(PATIENT_ORGANS)
    out = [(f"{g}.{k}", x) for g in ("body", "uptake", "scanner") for k, x in rec[g].items()]
    for organ, d in rec["organs"].items():
        kind = kinds.get(organ, organ)
        assert math.isclose(math.hypot(*d["shift_mm"]), d["shift_length_mm"], rel_tol=1e-3, abs_tol=1e-3)
        for k in ("scale", "aspect_z", "aspect_xy", "shift_length_mm", "turn_deg"):
            name = "shift_mm" if k == "shift_length_mm" else k
            out.append((f"organs.{kind}.{name}", abs(d[k])))
    return out


@pytest.mark.parametrize("level", ["wide", "out-of-range"])
def test_drawn_values_lie_in_their_ranges_and_are_recorded(tmp_path: Path, level: str) -> None:
    v = LEVELS[level]
    doc = _cohort(tmp_path, level, v, n=4)
    assert doc["variability"] == v.to_record()
    spans = dict(v.spans())
    for case in doc["cases"]:
        rec = case["variability"]
        assert rec["level"] == level and len(rec["organs"]) == 8
        values = _recorded(v, rec)
        assert {n for n, _ in values} == set(spans)  # every range was drawn and recorded
        for name, x in values:
            assert spans[name] is not None and spans[name].contains(x), (name, x)
        for tissue, suv in rec["uptake"].items():
            assert case["suv"][tissue] == round(suv, 3)
        assert case["suv"]["brain_wm"] == round(0.45 * rec["uptake"]["brain_gm"], 3)
        assert case["pet_fwhm_mm"] == round(rec["scanner"]["pet_fwhm_mm"], 3)
        assert case["pet_count_factor"] == round(rec["scanner"]["pet_count_factor"], 4)
        assert case["anatomy"]["width_factor"] == round(rec["body"]["width"], 3)


def test_out_of_range_lies_beyond_wide_and_wide_contains_today(tmp_path: Path) -> None:
    wide = dict(WIDE.spans())
    assert set(wide) == set(TODAY)
    for name, s in OUT_OF_RANGE.spans():
        assert s is not None and wide[name] is not None and s.outside(wide[name]), name
        lo, hi = TODAY[name]
        assert wide[name].lo <= lo and hi <= wide[name].hi, name
    doc = _cohort(tmp_path, "ood", OUT_OF_RANGE, n=4, seed=2626)
    for case in doc["cases"]:
        for name, x in _recorded(OUT_OF_RANGE, case["variability"]):
            assert not wide[name].contains(x), (name, x)  # type: ignore[union-attr]


def test_today_ranges_hold_for_the_default() -> None:
    meta = synth_case("wholebody", seed=5, **SMALL)["meta"]
    for tissue in ("brain_gm", "myocardium", "kidney", "bladder", "liver", "spleen", "marrow"):
        lo, hi = TODAY[f"uptake.{tissue}"]
        assert lo - 1e-3 <= meta["suv"][tissue] <= hi + 1e-3, tissue
    assert "variability" not in meta


def test_reproducible_by_seed_and_shared_by_a_patient(tmp_path: Path) -> None:
    a = synth_case("wholebody", seed=9, variability=WIDE, **SMALL)
    b = synth_case("wholebody", seed=9, variability=WIDE, **SMALL)
    c = synth_case("wholebody", seed=10, variability=WIDE, **SMALL)
    assert _digest(a) == _digest(b) and _digest(a) != _digest(c)
    assert a["meta"]["variability"] != c["meta"]["variability"]
    doc = _cohort(tmp_path, "w", WIDE, n=3)
    first, second = doc["cases"][0]["variability"], doc["cases"][1]["variability"]  # one patient's studies
    assert doc["cases"][0]["patient_id"] == doc["cases"][1]["patient_id"]
    assert first["body"] == second["body"]
    assert {k: d for k, d in first["organs"].items() if k != "bladder"} == {
        k: d for k, d in second["organs"].items() if k != "bladder"
    }
    assert all(first["uptake"][k] == second["uptake"][k] for k in PATIENT_UPTAKE)
    assert first["scanner"] != second["scanner"] and first["organs"]["bladder"] != second["organs"]["bladder"]


ORGANS = ("brain_gm", "lung", "myocardium", "liver", "spleen", "kidney", "bladder")


@pytest.mark.parametrize("level", ["wide", "out-of-range"])
def test_varied_studies_are_valid(level: str, tissue_of) -> None:
    for seed in range(4):
        r = synth_case(
            "wholebody",
            seed=40 + seed,
            shape=(40, 40, 52),
            spacing=(9.0, 9.0, 11.0),
            variability=LEVELS[level],
            lesion_free=seed == 0,
            n_lesions=None if seed == 0 else 4,
        )
        ct, pet, lab, meta = r["ct"], r["pet"], r["label"], r["meta"]
        assert np.isfinite(pet).all() and pet.min() >= 0 and ct.dtype == np.int16
        body = IS_BODY[r["tissue"]]
        assert body.sum() > 0.05 * body.size
        assert IS_BODY[r["tissue"][lab > 0]].all()  # lesions inside the body
        assert bool(lab.any()) == (not meta["lesion_free"]) == bool(meta["lesions"])
        assert all(les["voxels"] > 0 for les in meta["lesions"])
        assert sum(les["voxels"] for les in meta["lesions"]) >= int((lab > 0).sum())
        outside = ndimage.binary_dilation(~body)
        for organ in ORGANS:
            m = tissue_of(r, organ)
            assert m.any(), (level, seed, organ)
            assert organ == "brain_gm" or not (m & outside).any(), (level, seed, organ)  # organs stay inside


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ranges.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        ("organs: {heart: {scale: [1.2, 0.8]}}", "organs.heart.scale", "lo > hi"),
        ("uptake: {bladder: [0, 10]}", "uptake.bladder", "outside the allowed"),
        ("body: {widht: [1, 2]}", "body.widht", "unknown field"),
        ("organs: {pancreas: {scale: 1}}", "organs.pancreas", "unknown field"),
        ("base: huge", "base", "unknown level"),
        ("scanner: {pet_fwhm_mm: sharp}", "scanner.pet_fwhm_mm", "must be a finite number"),
        ("scanner: {pet_fwhm_mm: [4, 5, 6]}", "scanner.pet_fwhm_mm", "[lo, hi]"),
        ("body: [1, 2]", "body", "must be a mapping"),
        ("uptake: {liver: [[1, 2], [3]]}", "uptake.liver", "[lo, hi]"),
    ],
)
def test_bad_variability_file_names_file_and_field(tmp_path: Path, text: str, field: str, why: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PhantomError) as e:
        load_variability(path)
    assert str(e.value).startswith(f"{path}: {field}: ") and why in str(e.value)


def test_unreadable_or_missing_variability_file(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="not a readable YAML"):
        load_variability(_write(tmp_path, "body: [1, 2"))
    with pytest.raises(PhantomError, match="variability file not found"):
        load_variability(tmp_path / "absent.yaml")
    with pytest.raises(PhantomError, match="not both"):
        resolve_variability("wide", tmp_path / "ranges.yaml")


def test_variability_file_replaces_fields_of_its_base(tmp_path: Path) -> None:
    text = "base: wide\nbody: {fat_mm: 12}\norgans: {heart: {shift_mm: [[0, 1], [30, 40]]}}\nscanner:\n"
    v = load_variability(_write(tmp_path, text))
    assert v.level == "ranges" and v.body.fat_mm == Span(((12.0, 12.0),))
    assert v.organs.heart.shift_mm == Span(((0.0, 1.0), (30.0, 40.0)))
    assert v.organs.liver == WIDE.organs.liver and v.uptake == WIDE.uptake and v.scanner == WIDE.scanner
    partial = load_variability(_write(tmp_path, "level: fwhm-only\nscanner: {pet_fwhm_mm: [9, 10]}\n"))
    meta = synth_case("wholebody", seed=3, variability=partial, **SMALL)["meta"]
    fwhm = meta["variability"]["scanner"]["pet_fwhm_mm"]
    assert list(meta["variability"]["scanner"]) == ["pet_fwhm_mm"] and 9 <= fwhm <= 10
    assert meta["pet_fwhm_mm"] == round(fwhm, 3)
    assert meta["variability"]["body"] == {} and meta["variability"]["level"] == "fwhm-only"
    assert resolve_variability("default", _write(tmp_path, "base: default\n")).is_default
