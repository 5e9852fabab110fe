"""One study of a follow-up comparison: its CT, PET (SUV) and lesion mask, read and checked.

A study is given as an AutoPET study folder (``<patient>/<study>/`` holding ``CTres`` or ``CT`` and ``SUV``,
any image suffix) and/or explicit CT and PET files (an explicit file wins over the folder's), plus the
predicted mask file. The mask must lie on the CT's grid (what ``h2aseg predict`` writes) or the PET's; it is
mapped onto the PET grid (nearest neighbour) and measured there, as ``h2aseg quantify`` measures. CT and PET
must overlap in world space. Every problem is a :class:`FollowupError` naming the file and the problem.

The **patient id** is, in this order: the one given (``--baseline-patient`` / ``--followup-patient``), the
study folder's parent when it is an AutoPET patient folder (``PETCT_<hex>``), the ``PETCT_<hex>`` prefix of
the mask's file name (``h2aseg predict`` names masks by case id), else unknown (no identity check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from h2aseg.data.io import (
    IMAGE_SUFFIXES,
    ImageError,
    Volume,
    check_finite,
    check_overlap,
    describe_grid,
    read_volume,
)
from h2aseg.data.layouts import AUTOPET_FILES
from h2aseg.errors import InputError
from h2aseg.evaluation.quantify import check_label_mask, mask_on_suv_grid

CT_STEMS = (AUTOPET_FILES["ct"], "CT")
PET_STEMS = (AUTOPET_FILES["pet"],)
_AUTOPET_PATIENT = re.compile(r"^(PETCT_[0-9A-Za-z]+)(?:_|$)")


class FollowupError(InputError):
    """Inputs of ``h2aseg compare`` that cannot be compared; the message names the file(s) and the problem."""


@dataclass
class Study:
    """A study's role (``baseline``/``follow-up``), patient id (None: unknown) and volumes; ``mask`` is on
    the PET's grid."""

    role: str
    patient_id: str | None
    ct: Volume
    pet: Volume
    mask: Volume
    mask_path: Path


def _find_image(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suf in IMAGE_SUFFIXES:
            if (folder / f"{stem}{suf}").is_file():
                return folder / f"{stem}{suf}"
    return None


def study_files(role: str, folder: Path | None, ct: Path | None, pet: Path | None) -> tuple[Path, Path]:
    """The CT and PET files of a study from its folder and/or explicit files; names what is missing."""
    opt = role.replace(" ", "").replace("-", "")  # baseline / followup
    if folder is not None and not folder.is_dir():
        raise FollowupError(f"{folder}: the {role} study folder does not exist")
    if ct is None and folder is not None:
        ct = _find_image(folder, CT_STEMS)
        if ct is None:
            names = " or ".join(f"{s}.nii.gz" for s in CT_STEMS)
            raise FollowupError(
                f"{folder}: the {role} study has no CT ({names} not found); give it with --{opt}-ct FILE"
            )
    if pet is None and folder is not None:
        pet = _find_image(folder, PET_STEMS)
        if pet is None:
            raise FollowupError(
                f"{folder}: the {role} study has no PET ({PET_STEMS[0]}.nii.gz not found); "
                f"give it with --{opt}-pet FILE"
            )
    if ct is None or pet is None:
        missing = " and ".join(f"--{opt}-{k}" for k, v in (("ct", ct), ("pet", pet)) if v is None)
        raise FollowupError(f"the {role} study needs a CT and a PET: give --{opt} DIR or {missing}")
    for what, path in (("CT", ct), ("PET", pet)):
        if not path.is_file():
            raise FollowupError(f"{path}: the {role} {what} file does not exist")
    return ct, pet


def infer_patient_id(folder: Path | None, ct: Path, mask: Path) -> str | None:
    """The AutoPET patient id from the study folder's parent or the mask's name, else None."""
    for name in ((folder or ct.parent).resolve().parent.name, mask.name):
        m = _AUTOPET_PATIENT.match(name)
        if m:
            return m.group(1)
    return None


def load_study(
    role: str,
    *,
    folder: Path | None,
    ct: Path | None,
    pet: Path | None,
    mask: Path,
    patient_id: str | None = None,
) -> Study:
    """Read and check one study (see the module docstring)."""
    ct_path, pet_path = study_files(role, folder, ct, pet)
    if not mask.is_file():
        raise FollowupError(f"{mask}: the {role} mask file does not exist")
    try:
        ct_vol, pet_vol = read_volume(ct_path), read_volume(pet_path, dtype=None)
        mask_vol = read_volume(mask, dtype=None)
        check_finite(ct_vol)
        check_finite(pet_vol)
        check_overlap(ct_vol, pet_vol)
        check_label_mask(mask_vol)
    except ImageError as e:
        raise FollowupError(f"{role} study: {e}") from None
    if not (mask_vol.same_grid(ct_vol) or mask_vol.same_grid(pet_vol)):
        raise FollowupError(
            f"{mask}: the {role} mask's grid ({describe_grid(mask_vol)}) is neither the CT's ({ct_path}: "
            f"{describe_grid(ct_vol)}) nor the PET's ({pet_path}: {describe_grid(pet_vol)}); give the mask "
            "predicted for this study"
        )
    pid = patient_id or infer_patient_id(folder, ct_path, mask)
    return Study(role, pid, ct_vol, pet_vol, mask_on_suv_grid(mask_vol, pet_vol), mask)


def check_same_patient(baseline: Study, followup: Study, allow_different: bool = False) -> str:
    """Raise :class:`FollowupError` when both studies name a patient and the names differ (unless
    ``allow_different``); returns what was checked, for the report."""
    a, b = baseline.patient_id, followup.patient_id
    if a is None or b is None:
        known = a or b
        return f"not checked (patient id unknown{'' if known is None else f'; one study says {known}'})"
    if a == b:
        return f"same patient ({a})"
    if allow_different:
        return f"different patients allowed (--allow-different-patients): {a} vs {b}"
    raise FollowupError(
        f"the studies are of two different patients: baseline {a} ({baseline.mask_path}) and follow-up {b} "
        f"({followup.mask_path}); compare studies of one patient, or pass --allow-different-patients"
    )
