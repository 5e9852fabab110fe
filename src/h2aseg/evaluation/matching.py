"""Pair prediction masks with ground truth by case id, and load each pair onto one voxel grid.

Ground truth comes from a dataset layout (:func:`h2aseg.data.layouts.discover`; each case's ``label``) or a
plain folder of mask files (case id = file name without its image suffix). Predictions are a plain folder
of ``<case_id>.nii.gz`` (what ``h2aseg predict`` writes). Every problem raises :class:`EvaluationError`
(a ``ValueError``) with a one-line message that names the files or cases.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from h2aseg.data.geometry import resample_labels, voxel_volume_ml
from h2aseg.data.io import (
    ImageError,
    Volume,
    flip_masks_path,
    image_suffix,
    probability_path,
    read_volume,
    strip_image_suffix,
)
from h2aseg.errors import InputError


class EvaluationError(InputError):
    """Inputs that cannot be evaluated (missing cases, mismatched grids, bad labels); message is one line."""


GT_LAYOUTS = ("auto", "folder", "autopet", "autopet-nnunet", "hecktor", "csv")


@dataclass(frozen=True)
class CasePair:
    """One case to score: its id, the ground-truth mask file and the prediction (None: missing)."""

    case_id: str
    gt: Path
    pred: Path | None


@dataclass
class Matching:
    """Result of :func:`match_cases`: pairs in case-id order, and ids present on one side only."""

    pairs: list[CasePair]
    missing: list[str] = field(default_factory=list)  # GT without prediction
    extra: list[str] = field(default_factory=list)  # prediction without GT


def _list_ids(ids: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def mask_folder(root: str | Path) -> dict[str, Path]:
    """``{case_id: file}`` for the image files directly inside ``root`` (hidden files ignored). The
    probability map and flip masks ``h2aseg predict`` writes beside a mask (``<case>_probability.nii.gz``,
    ``<case>_flip_masks.nii.gz``) are not masks of cases of their own and are left out."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"{root}: not a folder")
    files = [
        f for f in sorted(root.iterdir()) if not f.name.startswith(".") and f.is_file() and image_suffix(f)
    ]
    companions = {p for f in files for p in (probability_path(f), flip_masks_path(f))}
    out: dict[str, Path] = {}
    for f in files:
        if f in companions:
            continue
        cid = strip_image_suffix(f.name)
        if cid in out:
            raise EvaluationError(f"{root}: two mask files for case {cid!r}: {out[cid].name} and {f.name}")
        out[cid] = f
    return out


def ground_truth_masks(root: str | Path, layout: str = "auto") -> dict[str, Path]:
    """``{case_id: label file}`` from a layout root (or CSV manifest) or a plain folder of masks.

    ``layout="auto"``: a folder holding image files directly is a plain folder; anything else goes to
    :func:`h2aseg.data.layouts.discover` (auto-detection). ``"folder"`` forces a plain folder.
    """
    root = Path(root)
    if layout not in GT_LAYOUTS:
        raise EvaluationError(f"unknown ground-truth layout {layout!r} (choose from {', '.join(GT_LAYOUTS)})")
    if not root.exists():
        raise EvaluationError(f"{root}: ground truth not found")
    if layout == "folder" or (layout == "auto" and root.is_dir() and mask_folder(root)):
        masks = mask_folder(root)
        if not masks:
            raise EvaluationError(f"{root}: no mask files (.nii.gz, .nii, .mha, .nrrd) in this folder")
        return masks
    from h2aseg.data.layouts import LayoutError, discover

    try:
        cases = discover(root, "auto" if layout == "auto" else layout)
    except LayoutError as e:
        raise EvaluationError(f"{root}: {e}") from e
    out: dict[str, Path] = {}
    for case in cases:
        if case.label is not None:
            if case.case_id in out:
                raise EvaluationError(f"{root}: case id {case.case_id!r} appears twice")
            out[case.case_id] = Path(case.label)
    if not out:
        raise EvaluationError(f"{root}: the dataset has no ground-truth labels ({len(cases)} case(s) found)")
    return out


def rename_cases(masks: Mapping[str, Path], case_ids: Mapping[str, str]) -> dict[str, Path]:
    """``masks`` keyed by ``case_ids[name]`` where ``name`` is listed (e.g. nnU-Net identifier -> case id)."""
    out: dict[str, Path] = {}
    for name, path in masks.items():
        cid = case_ids.get(name, name)
        if cid in out:
            raise EvaluationError(f"two mask files for case {cid!r}: {out[cid]} and {path}")
        out[cid] = path
    return out


def select_cases(gt: Mapping[str, Path], keep: Collection[str], gt_root: str | Path) -> dict[str, Path]:
    """The ground-truth cases whose ids are in ``keep``; an error when none of them is under ``gt_root``."""
    keep = set(keep)
    chosen = {cid: path for cid, path in gt.items() if cid in keep}
    if not chosen:
        raise EvaluationError(
            f"{gt_root}: none of the {len(keep)} selected case(s) are there "
            f"(selected: {_list_ids(sorted(keep))}; ground truth: {_list_ids(sorted(gt))})"
        )
    return chosen


def match_cases(pred: Mapping[str, Path], gt: Mapping[str, Path], *, allow_missing: bool = False) -> Matching:
    """Pair by case id. Missing predictions raise unless ``allow_missing`` (then ``pred=None``: empty mask).

    Predictions without ground truth are listed in ``extra`` and not scored.
    """
    missing = sorted(set(gt) - set(pred))
    extra = sorted(set(pred) - set(gt))
    if not set(gt) & set(pred) and not allow_missing:
        raise EvaluationError(
            "no prediction matches a ground-truth case id "
            f"(predictions: {_list_ids(sorted(pred)) or 'none'}; ground truth: {_list_ids(sorted(gt))})"
        )
    if missing and not allow_missing:
        raise EvaluationError(
            f"{len(missing)} case(s) have no prediction: {_list_ids(missing)} "
            "(use --allow-missing to score them as empty predictions, or --split PART --split-file "
            "SPLIT.json when you predicted one part of a split)"
        )
    pairs = [CasePair(cid, Path(gt[cid]), Path(pred[cid]) if cid in pred else None) for cid in sorted(gt)]
    return Matching(pairs=pairs, missing=missing, extra=extra)


@dataclass
class LoadedPair:
    """Prediction and ground-truth label arrays on the ground truth's grid."""

    case_id: str
    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, float, float]
    voxel_ml: float
    resampled: bool
    affine: np.ndarray | None = None  # the ground truth's voxel-to-world affine


def _read_mask(path: Path, role: str) -> Volume:
    vol = read_volume(path, dtype=None)
    arr = vol.array
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise EvaluationError(f"{path}: {role} mask contains NaN/Inf")
        if not np.array_equal(arr, np.round(arr)):
            raise EvaluationError(f"{path}: {role} mask has non-integer values (probabilities?)")
    elif arr.dtype.kind not in "biu":
        raise EvaluationError(f"{path}: {role} mask has unsupported data type {arr.dtype}")
    if arr.dtype != bool and arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 255:
            raise EvaluationError(f"{path}: {role} mask has labels outside 0..255 ({lo}..{hi})")
    vol.array = arr.astype(np.uint8)
    return vol


def _grid_difference(a: Volume, b: Volume) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    sa, sb = np.round(a.spacing, 4), np.round(b.spacing, 4)
    if not np.allclose(a.spacing, b.spacing, atol=1e-3):
        return f"spacing {tuple(sa.tolist())} vs {tuple(sb.tolist())} mm"
    if not np.allclose(a.affine[:3, 3], b.affine[:3, 3], atol=1e-3):
        return f"origin {tuple(np.round(a.affine[:3, 3], 2))} vs {tuple(np.round(b.affine[:3, 3], 2))} mm"
    return "orientation differs"


def parse_label_map(specs: Iterable[str]) -> dict[int, int]:
    """``["7=1", "2=0"]`` -> ``{7: 1, 2: 0}`` (``--label-map``); labels 0..255, one target per source."""
    out: dict[int, int] = {}
    for spec in specs:
        src, sep, dst = spec.partition("=")
        try:
            a, b = int(src), int(dst)
        except ValueError:
            a = b = -1
        if not sep or not 0 <= a <= 255 or not 0 <= b <= 255:
            raise EvaluationError(f"--label-map {spec!r}: expected VALUE=LABEL, integers 0..255 (e.g. 7=1)")
        if out.get(a, b) != b:
            raise EvaluationError(f"--label-map: label {a} mapped twice ({a}={out[a]} and {a}={b})")
        out[a] = b
    return out


def apply_label_map(arr: np.ndarray, label_map: Mapping[int, int]) -> np.ndarray:
    """``arr`` (uint8 labels) with every ``label_map`` source value replaced by its target."""
    if not label_map:
        return arr
    lut = np.arange(256, dtype=np.uint8)
    for a, b in label_map.items():
        lut[a] = b
    return lut[arr]


def check_labels(
    arr: np.ndarray, allowed: Sequence[int], path: Path, role: str, mapped: bool = False
) -> None:
    """Raise :class:`EvaluationError`, naming ``path`` and the values found, on labels not in ``allowed``."""
    present = np.flatnonzero(np.bincount(arr.reshape(-1), minlength=256)).tolist()
    bad = sorted(set(present) - set(allowed))
    if bad:
        raise EvaluationError(
            f"{path}: {role} mask has labels {bad} not allowed (allowed {sorted(allowed)}; values found "
            f"{present}{' after --label-map' if mapped else ''}); map them before scoring with "
            f"--label-map VALUE=LABEL, e.g. --label-map {bad[0]}=1"
        )


def _read_labels(
    path: Path, role: str, allowed: Sequence[int] | None, label_map: Mapping[int, int] | None
) -> Volume:
    vol = _read_mask(path, role)
    vol.array = apply_label_map(vol.array, label_map or {})
    if allowed is not None:
        check_labels(vol.array, allowed, path, role, mapped=bool(label_map))
    return vol


def load_pair(
    pair: CasePair,
    *,
    resample: bool = False,
    allowed_labels: Sequence[int] | None = None,
    label_map: Mapping[int, int] | None = None,
) -> LoadedPair:
    """Read both masks, map labels (``label_map``), check them (``allowed_labels``, e.g. 0/1) and the grids.

    Different grids raise :class:`EvaluationError` unless ``resample`` (prediction -> GT grid, nearest
    neighbour). A missing prediction (``pair.pred is None``) becomes an empty mask.
    """
    return load_pairs([pair], resample=resample, allowed_labels=allowed_labels, label_map=label_map)[0]


def load_pairs(
    pairs: Sequence[CasePair],
    *,
    resample: bool = False,
    allowed_labels: Sequence[int] | None = None,
    label_map: Mapping[int, int] | None = None,
) -> list[LoadedPair]:
    """:func:`load_pair` for several predictions of one case (every pair names the same ground truth),
    which is read once (a threshold sweep scores many masks against it)."""
    if len({pair.gt for pair in pairs}) > 1:
        raise ValueError(
            "load_pairs takes predictions of one case: every pair must name the same ground truth"
        )
    try:
        gt = _read_labels(pairs[0].gt, "ground-truth", allowed_labels, label_map)
        preds = [
            None if pair.pred is None else _read_labels(pair.pred, "prediction", allowed_labels, label_map)
            for pair in pairs
        ]
    except ImageError as e:
        raise EvaluationError(str(e)) from e
    return [_on_gt_grid(pair, pred, gt, resample) for pair, pred in zip(pairs, preds, strict=True)]


def _on_gt_grid(pair: CasePair, pred: Volume | None, gt: Volume, resample: bool) -> LoadedPair:
    resampled = False
    if pred is None:
        p = np.zeros(gt.shape, dtype=np.uint8)
    elif gt.same_grid(pred):
        p = pred.array
    elif resample:
        p, resampled = resample_labels(pred.array, pred.affine, gt.affine, gt.shape), True
    else:
        raise EvaluationError(
            f"{pair.pred} and {pair.gt} are on different grids ({_grid_difference(pred, gt)}); "
            "pass --resample to resample the prediction onto the ground truth (nearest neighbour)"
        )
    return LoadedPair(
        pair.case_id, p, gt.array, gt.spacing, voxel_volume_ml(gt.spacing), resampled, gt.affine
    )
