"""The autoPET grand-challenge container interface: ``/input`` .mha images in, ``/output`` masks out.

Inputs (``challenge-metrics-and-layouts.md`` §2): ``<input>/images/ct/<uuid>.mha`` and
``<input>/images/pet/<uuid>.mha`` (PET in SUV). Pairing: one file in each folder is the challenge's case;
with several, files whose stems (uuids) match pair with each other, and when the two folders' stems do not
match one to one they pair in sorted file-name order (a warning says so). A missing folder, an empty one, or
different counts are a :class:`ChallengeIOError` naming the folder.

Outputs: ``<output>/images/automated-petct-lesion-segmentation/<CT uuid>.mha``, uint8 (0/1), with the CT
file's size, spacing, origin and direction copied from its header; beside it ``<CT uuid>_lesions.csv`` and
``<CT uuid>_patient.csv`` (:mod:`h2aseg.evaluation.quantify`, measured on the PET). Writes are atomic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from h2aseg.data.io import ImageError, strip_image_suffix
from h2aseg.errors import InputError
from h2aseg.files import atomic_write
from h2aseg.inference.predictor import Predictor

CT_DIR = Path("images") / "ct"
PET_DIR = Path("images") / "pet"
OUTPUT_DIR = Path("images") / "automated-petct-lesion-segmentation"
SUFFIX = ".mha"


class ChallengeIOError(InputError):
    """The challenge's input folders cannot be read as CT/PET pairs; the message names the folder."""


def _list_mha(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ChallengeIOError(f"{folder}: input folder not found (expected {SUFFIX} images there)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIX))
    if not files:
        raise ChallengeIOError(f"{folder}: no {SUFFIX} images")
    return files


def find_pairs(input_dir: str | Path) -> list[tuple[Path, Path]]:
    """``(ct, pet)`` pairs under ``input_dir`` (see the module docstring for the pairing rule)."""
    input_dir = Path(input_dir)
    ct_dir, pet_dir = input_dir / CT_DIR, input_dir / PET_DIR
    cts, pets = _list_mha(ct_dir), _list_mha(pet_dir)
    if len(cts) != len(pets):
        raise ChallengeIOError(
            f"{ct_dir} holds {len(cts)} {SUFFIX} image(s) but {pet_dir} holds {len(pets)}; "
            "each CT needs one PET"
        )
    pet_by_stem = {strip_image_suffix(p.name): p for p in pets}
    if len(cts) > 1 and {strip_image_suffix(c.name) for c in cts} == set(pet_by_stem):
        return [(c, pet_by_stem[strip_image_suffix(c.name)]) for c in cts]
    if len(cts) > 1:
        warnings.warn(
            f"{ct_dir} and {pet_dir}: file names do not match; pairing CT and PET in sorted name order",
            stacklevel=2,
        )
    return list(zip(cts, pets, strict=True))


def write_mha_like(mask: np.ndarray, reference: str | Path, out: str | Path) -> Path:
    """Write ``mask`` (array in the reference file's ``(x, y, z)`` voxel order) as uint8 ``.mha`` with the
    reference image's size, spacing, origin and direction; atomic (temporary file, then rename)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference))
    reader.ReadImageInformation()
    size = tuple(int(v) for v in reader.GetSize())
    if tuple(mask.shape) != size:
        raise ImageError(f"{out}: mask shape {tuple(mask.shape)} differs from {reference}'s size {size}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(mask, dtype=np.uint8).transpose(2, 1, 0)))
    img.SetSpacing(reader.GetSpacing())
    img.SetOrigin(reader.GetOrigin())
    img.SetDirection(reader.GetDirection())
    return atomic_write(out, lambda tmp: sitk.WriteImage(img, str(tmp), True), suffix=SUFFIX)


def run_challenge(
    predictor: Predictor,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    quantify: bool = True,
    on_case: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Predict every CT/PET pair under ``input_dir`` into ``output_dir`` (the challenge layout); returns the
    written masks. ``quantify`` adds the lesion and patient CSVs beside each mask."""
    from h2aseg.evaluation.quantify import beside_paths, quantify_prediction, write_quantification

    pairs = find_pairs(input_dir)
    out_dir = Path(output_dir) / OUTPUT_DIR
    inputs = {p.resolve() for pair in pairs for p in pair}
    written = []
    for ct, pet in pairs:
        uuid = strip_image_suffix(ct.name)
        target = out_dir / f"{uuid}{SUFFIX}"
        if target.resolve() in inputs:
            raise ImageError(f"{target}: refusing to overwrite an input file")
        # the probability (and flip masks with TTA) feed the confidence columns; only the mask is written
        pred = predictor.predict_files(ct, pet, case_id=uuid, keep_probability=quantify or None)
        written.append(write_mha_like(pred.mask, ct, target))
        if quantify:
            q = quantify_prediction(
                pred.mask,
                pred.affine,
                pet,
                case_id=uuid,
                mask_path=target,
                probability=pred.probability,
                flip_masks=pred.flip_masks,
            )
            write_quantification(q, *beside_paths(target, uuid))
        if on_case:
            on_case(target)
    return written
