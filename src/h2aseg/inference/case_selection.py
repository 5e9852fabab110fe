"""The cases of a dataset in one part (train, val, test) of a trained model's split.

Used by ``h2aseg predict --split`` and ``h2aseg analyze tamw --split``. Predicting the studies a model was
trained on tells underfitting from overfitting: a model that also scores low there has not fitted its
data (docs/training-notes.md section 11), one that scores high there and low on validation has overfitted.

The split is looked up where training left it: stored in the checkpoint (training checkpoints hold it), the
config's ``data.split_file``, the run folder's ``split.json`` (``<run>/checkpoints/<file>.pt`` ->
``<run>/split.json``), else it is made from the cases with the stored ratios and seed, as training would
have made it on this data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from h2aseg.config import DataConfig
from h2aseg.data.layouts import Case
from h2aseg.data.splits import PARTS, Split, SplitError, load_split, make_split
from h2aseg.errors import InputError

#: the values of ``--split``: every case, or one part of the model's split
SPLIT_CHOICES = ("all", *PARTS)


def model_split(
    checkpoint: str | Path, data: DataConfig, stored: dict[str, Any] | None, cases: Sequence[Case]
) -> tuple[Split, str]:
    """The split the model of ``checkpoint`` was trained with, and a phrase saying where it came from."""
    checkpoint = Path(checkpoint)
    if stored is not None:
        try:
            return Split(
                list(stored["train"]),
                list(stored["val"]),
                list(stored["test"]),
                int(stored.get("seed", 0)),
                tuple(stored.get("ratios", (0.6, 0.2, 0.2))),
                dict(stored.get("patients", {})),
            ), f"the split stored in {checkpoint.name}"
        except (KeyError, TypeError, ValueError):
            pass
    for f in (data.split_file, checkpoint.parent.parent / "split.json"):
        if f and Path(f).is_file():
            try:
                return load_split(f), str(f)
            except SplitError:
                continue
    split = make_split(list(cases), tuple(data.split_ratios), data.split_seed)  # type: ignore[arg-type]
    return split, f"a split made from the data (ratios {list(data.split_ratios)}, seed {data.split_seed})"


def cases_in_part(
    cases: Sequence[Case],
    part: str,
    *,
    checkpoint: str | Path,
    data: DataConfig,
    stored: dict[str, Any] | None,
    root: str | Path,
) -> tuple[list[Case], str]:
    """The ``cases`` (found under ``root``) in ``part`` of the model's split, in their order, and a line
    saying which; ``part="all"`` keeps every case. :class:`InputError` for an unknown part, or when none of
    the part's cases is under ``root``."""
    if part == "all":
        return list(cases), f"all {len(cases)} cases under {root}"
    if part not in PARTS:
        raise InputError(f"split part must be one of {', '.join(SPLIT_CHOICES)}, got {part!r}")
    split, source = model_split(checkpoint, data, stored, cases)
    ids = set(split.part(part))
    chosen = [c for c in cases if c.case_id in ids]
    if not chosen:
        raise InputError(
            f"{root}: none of the {len(ids)} {part} case(s) of {source} are there "
            "(another dataset? use --split all)"
        )
    return chosen, f"the {part} part of {source}: {len(chosen)} of its {len(ids)} case(s) found under {root}"
