"""Cohorts: ids, patients and seeds of N studies, written in a real dataset layout with ``phantom.json``.

File and id naming comes from :mod:`h2aseg.data.layouts` (the code that reads the layouts back), so a written
cohort is always found again by :func:`h2aseg.data.layouts.discover`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from h2aseg.data.io import write_volume
from h2aseg.data.layouts import (
    Case,
    CasePaths,
    autopet_case_id,
    autopet_study_paths,
    csv_case_paths,
    hecktor_case_id,
    hecktor_case_paths,
    manifest_text,
    nnunet_case_id,
    nnunet_case_paths,
    nnunet_patient_id,
)
from h2aseg.files import atomic_write_text
from h2aseg.synth.decoys import check_decoys
from h2aseg.synth.errors import PhantomError
from h2aseg.synth.lesion_changes import Followup
from h2aseg.synth.study import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    PHANTOM_VERSION,
    check_shape_spacing,
    synth_case,
)
from h2aseg.synth.variability import DEFAULT, Variability

LAYOUT_KIND = {
    "autopet": "wholebody",
    "autopet-nnunet": "wholebody",
    "csv": "wholebody",
    "hecktor": "headneck",
}
HECKTOR_CENTRES = ("CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR")
# "generator" in phantom.json: unchanged since the phantom moved out of h2aseg.data, so the same arguments
# still give byte-identical cohorts (PHANTOM_VERSION says when the output changes)
GENERATOR = "h2aseg.data.phantom"


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[int(v)] for v in rng.integers(0, 16, n))


def _study_name(rng: np.random.Generator, year: int) -> str:
    return (
        f"{int(rng.integers(1, 29)):02d}-{int(rng.integers(1, 13)):02d}-{year}-NA-PET-CT Ganzkoerper  "
        f"primaer mit KM-{int(rng.integers(10000, 100000))}"
    )


def _headneck_plan(n_cases: int) -> list[dict[str, Any]]:
    """HECKTOR ids, centre by centre in turn (``CHUM-001``, ``CHUP-001``, ...); one study per patient."""
    plan: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for i in range(n_cases):
        centre = HECKTOR_CENTRES[i % len(HECKTOR_CENTRES)]
        counts[centre] = counts.get(centre, 0) + 1
        cid = hecktor_case_id(centre, counts[centre])
        plan.append({"case_id": cid, "patient_id": cid, "patient_index": i, "study_index": 0})
    return plan


def _study_ids(layout: str, pid_hex: str, study: str, n_patient: int, n_done: int) -> tuple[str, str]:
    """(patient id, case id) of a whole-body study in ``layout``."""
    if layout == "autopet":
        pid = f"PETCT_{pid_hex}"
        return pid, autopet_case_id(pid, study)
    if layout == "autopet-nnunet":
        cid = nnunet_case_id("fdg", pid_hex, study)
        return nnunet_patient_id(cid), cid
    return f"patient_{n_patient:04d}", f"case_{n_done:04d}"


def _wholebody_plan(n_cases: int, layout: str, rng: np.random.Generator, pairs: bool) -> list[dict[str, Any]]:
    """Patients with one or two studies (the first has two when n >= 3; every one with ``pairs``)."""
    plan: list[dict[str, Any]] = []
    n_patient = 0
    while len(plan) < n_cases:
        left = n_cases - len(plan)
        k = 2 if left >= 2 and (pairs or (n_patient == 0 and n_cases >= 3) or rng.random() < 0.25) else 1
        pid_hex = _hex(rng, 10)
        year = int(rng.integers(2002, 2011))
        for j in range(k):
            study = _study_name(rng, year + j)
            pid, cid = _study_ids(layout, pid_hex, study, n_patient, len(plan))
            plan.append(
                {
                    "case_id": cid,
                    "patient_id": pid,
                    "patient_index": n_patient,
                    "study_index": j,
                    "study": study,
                    "patient_folder": f"PETCT_{pid_hex}",
                }
            )
        n_patient += 1
    return plan


def _lesion_free_half(plan: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Exactly half the studies (rounded down) lesion-free, drawn at random."""
    free = set(rng.permutation(len(plan))[: len(plan) // 2].tolist())
    for i, p in enumerate(plan):
        p["lesion_free"] = i in free


def _followup_pairs(plan: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Second studies become follow-ups of the first; a quarter of the first studies (rounded down, never
    the first patient's) are lesion-free, so most follow-ups have baseline lesions to match."""
    first = [i for i, p in enumerate(plan) if p["study_index"] == 0]
    free = set(rng.permutation(first[1:])[: len(first) // 4].tolist()) if len(first) > 1 else set()
    for i, p in enumerate(plan):
        if p["study_index"] == 0:
            p["lesion_free"] = i in free
        else:
            p["followup_of"] = plan[i - 1]["case_id"]


def cohort_plan(n_cases: int, layout: str, seed: int, followup: bool = False) -> list[dict[str, Any]]:
    """Ids, patient grouping, seeds and lesion-free flags of a cohort, without synthesising anything.

    ``followup``: every whole-body patient gets two studies (the last one study when ``n_cases`` is odd), the
    second a follow-up of the first (``followup_of``: the first's case id); see :func:`write_cohort`.
    """
    if layout not in LAYOUT_KIND:
        raise PhantomError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_KIND)}")
    if n_cases < 1:
        raise PhantomError(f"the number of cases must be >= 1, got {n_cases}")
    if followup and LAYOUT_KIND[layout] == "headneck":
        wholebody = ", ".join(k for k, v in LAYOUT_KIND.items() if v == "wholebody")
        raise PhantomError(
            f"follow-up studies need a whole-body layout ({wholebody}): layout {layout!r} has one study per "
            "patient"
        )
    if followup and n_cases < 2:
        raise PhantomError(
            f"follow-up studies need at least 2 cases (a baseline and its follow-up), got {n_cases}"
        )
    rng = np.random.default_rng([int(seed), 7])
    if LAYOUT_KIND[layout] == "headneck":
        plan = _headneck_plan(n_cases)
    else:
        plan = _wholebody_plan(n_cases, layout, rng, pairs=followup)
        (_followup_pairs if followup else _lesion_free_half)(plan, rng)
    for p in plan:
        ss = np.random.SeedSequence([int(seed), 11, int(p["patient_index"]), int(p["study_index"])])
        ps = np.random.SeedSequence([int(seed), 13, int(p["patient_index"])])
        p["seed"] = int(ss.generate_state(1)[0])
        p["patient_seed"] = int(ps.generate_state(1)[0])
    return plan


def case_paths(layout: str, p: dict[str, Any]) -> CasePaths:
    """Relative CT, PET and label paths of planned study ``p`` in ``layout``."""
    if layout == "autopet":
        return autopet_study_paths(p["patient_folder"], p["study"])
    if layout == "autopet-nnunet":
        return nnunet_case_paths(p["case_id"])
    if layout == "hecktor":
        return hecktor_case_paths(p["case_id"])
    return csv_case_paths(p["case_id"])


def check_output_dir(out: str | Path, overwrite: bool = False) -> None:
    """Raise :class:`PhantomError` unless ``out`` is absent, an empty folder, or ``overwrite`` is set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PhantomError(f"{out}: folder is not empty (choose another output folder or allow overwriting)")


def _write_study(
    out: Path,
    layout: str,
    p: dict[str, Any],
    shape: Sequence[int],
    spacing: Sequence[float],
    variability: Variability,
    followup: Followup | None = None,
    symmetric_decoys: tuple[int, int] = (0, 0),
) -> tuple[Case, dict[str, Any], Followup]:
    """Synthesise and write planned study ``p`` (a follow-up of ``followup``'s study when given); returns its
    case, its ``phantom.json`` record and what a follow-up of it starts from."""
    res = synth_case(
        LAYOUT_KIND[layout],
        seed=p["seed"],
        patient_seed=p["patient_seed"],
        shape=shape,
        spacing=spacing,
        lesion_free=p.get("lesion_free"),
        variability=variability,
        followup=followup,
        symmetric_decoys=symmetric_decoys,
    )
    ct_p, pet_p, lab_p = (out / q for q in case_paths(layout, p))
    write_volume(ct_p, res["ct"], res["ct_affine"])
    write_volume(pet_p, res["pet"], res["pet_affine"])
    write_volume(lab_p, res["label"], res["label_affine"])
    record = {"case_id": p["case_id"], "patient_id": p["patient_id"], **res["meta"]}
    if followup is not None:
        record["followup_of"] = p["followup_of"]
    return Case(p["case_id"], p["patient_id"], ct_p, pet_p, lab_p), record, Followup.of(res)


def _chains(plan: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The plan cut into runs of studies that must be made in order: a study and the follow-ups after it."""
    chains: list[list[dict[str, Any]]] = []
    for p in plan:
        if "followup_of" in p and chains:
            chains[-1].append(p)
        else:
            chains.append([p])
    return chains


def _write_chain(
    chain: list[dict[str, Any]],
    *,
    out: Path,
    layout: str,
    shape: Sequence[int],
    spacing: Sequence[float],
    variability: Variability,
    symmetric_decoys: tuple[int, int] = (0, 0),
) -> list[tuple[Case, dict[str, Any]]]:
    """Write one chain's studies in order (each follow-up from the study before it)."""
    written, previous = [], None
    for p in chain:
        case, record, previous = _write_study(
            out, layout, p, shape, spacing, variability, previous, symmetric_decoys
        )
        written.append((case, record))
    return written


def _in_order(
    write: Callable[[list[dict[str, Any]]], list[tuple[Case, dict[str, Any]]]],
    chains: list[list[dict[str, Any]]],
    jobs: int,
) -> Iterator[tuple[Case, dict[str, Any]]]:
    """``write(chain)`` for every chain, its studies yielded in plan order as they are done (in ``jobs``
    processes if > 1; ``write`` must then pickle, e.g. a ``functools.partial`` of a module function)."""
    if jobs == 1 or len(chains) == 1:
        for chain in chains:
            yield from write(chain)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(chains))) as pool:
        futures = [pool.submit(write, chain) for chain in chains]
        try:
            for fut in futures:
                yield from fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()  # the studies not started yet; the error (one line, its file) goes up
            raise


def _write_index_files(out: Path, layout: str, cases: list[Case]) -> None:
    """nnU-Net's ``dataset.json`` or the CSV ``manifest.csv``, as the layout needs."""
    if layout == "autopet-nnunet":
        ds = {
            "channel_names": {"0": "CT", "1": "PET"},
            "labels": {"background": 0, "tumor": 1},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": "h2aseg phantom",
        }
        atomic_write_text(out / "dataset.json", json.dumps(ds, indent=1))
    if layout == "csv":
        atomic_write_text(out / "manifest.csv", manifest_text(cases, out))


def write_cohort(
    out: str | Path,
    n_cases: int,
    layout: str,
    seed: int,
    *,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    variability: Variability = DEFAULT,
    followup: bool = False,
    jobs: int = 1,
    symmetric_decoys: tuple[int, int] = (0, 0),
) -> list[Case]:
    """Write ``n_cases`` phantom studies under ``out`` in ``layout`` and return them as cases (sorted by id).

    ``autopet``/``autopet-nnunet``/``csv``: whole-body studies, about half lesion-free, some patients with two
    studies; ``hecktor``: head-and-neck studies (CT and PET on different grids). Also writes ``phantom.json``
    (per-case ground truth: lesions, SUVs) and, for nnU-Net, ``dataset.json``; for ``csv``, ``manifest.csv``.
    The same arguments always give byte-identical files. ``out`` must be empty or absent unless ``overwrite``.
    ``progress(done, total, case_id)`` is called after each case. ``variability``: ranges of anatomy, uptake
    and scanner (:mod:`~h2aseg.synth.variability`); other than the default, ``phantom.json`` records them
    (``variability``) and each study's drawn values (``cases[i].variability``).

    ``followup`` (whole-body layouts, ``n_cases`` >= 2): every patient has a baseline and a follow-up study
    (the last patient only a baseline when ``n_cases`` is odd): same anatomy, lesions changed
    (:mod:`~h2aseg.synth.lesion_changes`), patient repositioned (:mod:`~h2aseg.synth.repositioning`);
    ``phantom.json`` then has ``"followup": true`` and each follow-up's ``followup_of``, ``repositioning``,
    per-lesion changes and ``vanished_lesions`` (read back by :func:`h2aseg.synth.followup.followup_pairs`).

    ``symmetric_decoys`` (whole-body layouts, not with ``followup``): LO-HI pairs of unlabelled node-like hot
    spots at mirrored stations per study (:mod:`~h2aseg.synth.decoys`); ``phantom.json`` then has
    ``"symmetric_decoys": [LO, HI]`` and each study's ``decoys``.

    ``jobs`` > 1 writes patients' studies in that many processes (a follow-up in the process of its
    baseline); every study draws from its own seeds, so the files are the same as with one.
    """
    if jobs < 1:
        raise PhantomError(f"jobs must be >= 1, got {jobs}")
    out = Path(out)
    plan = cohort_plan(int(n_cases), layout, seed, followup=followup)
    kind = LAYOUT_KIND[layout]
    symmetric_decoys = check_decoys(symmetric_decoys, kind, followup)  # before anything is written
    shp = tuple(DEFAULT_SHAPE if shape is None else shape)
    sp = tuple(DEFAULT_SPACING[kind] if spacing is None else spacing)
    check_shape_spacing(shp, sp)
    check_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    cases, records = [], []
    write = functools.partial(
        _write_chain,
        out=out,
        layout=layout,
        shape=shp,
        spacing=sp,
        variability=variability,
        symmetric_decoys=symmetric_decoys,
    )
    for case, record in _in_order(write, _chains(plan), jobs):
        cases.append(case)
        records.append(record)
        if progress is not None:
            progress(len(cases), len(plan), case.case_id)
    _write_index_files(out, layout, cases)
    doc = {
        "generator": GENERATOR,
        "phantom_version": PHANTOM_VERSION,
        "layout": layout,
        "seed": int(seed),
        "shape": list(shp),
        "spacing": [float(v) for v in sp],
        "cases": records,
    }
    if not variability.is_default:
        doc["variability"] = variability.to_record()
    if followup:
        doc["followup"] = True
    if symmetric_decoys != (0, 0):
        doc["symmetric_decoys"] = list(symmetric_decoys)
    atomic_write_text(out / "phantom.json", json.dumps(doc, indent=1, sort_keys=True))
    return sorted(cases, key=lambda c: c.case_id)


@dataclass(frozen=True)
class LesionSite:
    """Where the phantom put one lesion: centre (world mm, RAS+ like the written images), size, site name."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    site: str


def lesion_sites(path: str | Path) -> dict[str, list[LesionSite]]:
    """``{case_id: [LesionSite, ...]}`` from a ``phantom.json`` (``path`` itself, or in the folder ``path``).

    A cohort folder without the file gives ``{}``; a named file that is missing, or a file that is not a
    phantom record, raises :class:`PhantomError` naming it and what is wrong.
    """
    return phantom_sites(path)[0]


def decoy_sites(path: str | Path) -> dict[str, list[LesionSite]]:
    """``{case_id: [LesionSite, ...]}`` of the unlabelled decoys (``h2aseg synth --symmetric-decoys``) that a
    ``phantom.json`` records, as :func:`lesion_sites` reads lesions; sites are ``decoy:<station>``. A cohort
    without decoys gives no entries."""
    return phantom_sites(path)[1]


def phantom_sites(path: str | Path) -> tuple[dict[str, list[LesionSite]], dict[str, list[LesionSite]]]:
    """:func:`lesion_sites` and :func:`decoy_sites` from one reading of the record."""
    path = Path(path)
    if path.is_dir():
        path = path / "phantom.json"
        if not path.is_file():
            return {}, {}
    elif not path.is_file():
        raise PhantomError(f"{path}: phantom record not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        lesions = {str(c["case_id"]): _sites(c.get("lesions", [])) for c in doc["cases"]}
        decoys = {str(c["case_id"]): _sites(c["decoys"]) for c in doc["cases"] if c.get("decoys")}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise PhantomError(f"{path}: not a phantom record of h2aseg synth ({type(e).__name__}: {e})") from e
    return lesions, decoys


def _sites(records: list[dict[str, Any]]) -> list[LesionSite]:
    return [
        LesionSite(
            center_mm=(float(r["center_mm"][0]), float(r["center_mm"][1]), float(r["center_mm"][2])),
            diameter_mm=float(r["diameter_mm"]),
            site=str(r["site"]),
        )
        for r in records
    ]
