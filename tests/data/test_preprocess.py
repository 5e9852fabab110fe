"""Preprocessing: PET->CT resampling in physical space, orientation, restoring to CT, input checks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.config import DataConfig
from h2aseg.data.io import ImageError, read_volume
from h2aseg.data.layouts import Case
from h2aseg.data.preprocess import preprocess_case, preprocess_images, restore_to_ct_grid
from h2aseg.synth import write_cohort


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return path


def _affine(spacing, origin, perm=(0, 1, 2), signs=(1, 1, 1)) -> np.ndarray:
    a = np.zeros((4, 4))
    for i, (ax, s) in enumerate(zip(perm, signs, strict=True)):
        a[ax, i] = s * spacing[i]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def _world(aff: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    return idx @ aff[:3, :3].T + aff[:3, 3]


def _ct(shape) -> np.ndarray:
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[2:-2, 2:-2, 1:-1] = 30.0
    return ct


@pytest.fixture()
def point_source(tmp_path: Path):
    """CT (LPS-ordered, 1.5 x 1.25 x 2 mm) and PET (RAS, 4 mm, other origin) with a hot spot at P."""
    ct_shape = (40, 48, 30)
    ct_aff = _affine((1.5, 1.25, 2.0), (25.0, 40.0, -20.0), signs=(-1, -1, 1))
    pet_shape = (24, 24, 20)
    pet_aff = _affine((4.0, 4.0, 4.0), (-50.6, -30.0, -30.3))
    p = pet_aff[:3, :3] @ [12, 9, 11] + pet_aff[:3, 3]  # a PET voxel centre, (-2.6, 6.0, 13.7) mm
    d2 = ((_world(pet_aff, pet_shape) - p) ** 2).sum(-1)
    pet = (10.0 * np.exp(-d2 / (2 * 3.0**2)) + 0.5).astype(np.float32)  # point source blurred by the PSF
    label = np.zeros(ct_shape, dtype=np.uint8)
    label[10:14, 20:25, 8:12] = 1
    ct_p = _save(tmp_path / "ct.nii.gz", _ct(ct_shape), ct_aff)
    pet_p = _save(tmp_path / "pet.nii.gz", pet, pet_aff)
    lab_p = _save(tmp_path / "lab.nii.gz", label, ct_aff)
    return ct_p, pet_p, lab_p, p, ct_aff, label


def test_point_source_lands_at_the_ct_voxel(point_source) -> None:
    ct_p, pet_p, lab_p, p, ct_aff, _ = point_source
    pc = preprocess_images(ct_p, pet_p, DataConfig(), label_path=lab_p)
    g = pc.geometry
    assert np.all(np.diag(g.grid_affine)[:3] > 0)  # reoriented to RAS
    peak = np.array(np.unravel_index(np.argmax(pc.suv), pc.suv.shape))
    world = g.grid_affine[:3, :3] @ peak + g.grid_affine[:3, 3]
    assert np.all(np.abs(world - p) <= np.array(g.spacing) / 2 + 0.05)
    # back on the original CT grid: the expected CT voxel of P
    back = restore_to_ct_grid(pc.suv, g, order=1)
    assert back.shape == g.ct_shape == (40, 48, 30)
    expected = np.round(np.linalg.solve(ct_aff[:3, :3], p - ct_aff[:3, 3])).astype(int)
    assert tuple(np.unravel_index(np.argmax(back), back.shape)) == tuple(expected)
    assert np.allclose(g.ct_affine, ct_aff)


def test_point_source_with_target_spacing(point_source) -> None:
    ct_p, pet_p, lab_p, p, _, label = point_source
    cfg = DataConfig(target_spacing=(3.0, 2.5, 4.0))
    pc = preprocess_images(ct_p, pet_p, cfg, label_path=lab_p)
    assert np.allclose(pc.geometry.spacing, (3.0, 2.5, 4.0))
    assert pc.image.shape == (2, 20, 24, 15) and pc.label.shape == (20, 24, 15)
    g = pc.geometry
    peak = np.array(np.unravel_index(np.argmax(pc.suv), pc.suv.shape))
    world = g.grid_affine[:3, :3] @ peak + g.grid_affine[:3, 3]
    assert np.all(np.abs(world - p) <= np.array(g.spacing) / 2 + 0.05)
    restored = restore_to_ct_grid(pc.label, g)
    assert restored.shape == label.shape and restored.dtype == np.uint8
    dice = 2 * (restored & label).sum() / (restored.sum() + label.sum())
    assert dice > 0.8


def test_target_spacing_equal_to_the_ct_spacing_keeps_the_grid(tmp_path: Path) -> None:
    """A CT already at the target spacing is used as it is: the arrays equal those without a target (no
    interpolation, no change of grid), so a checkpoint that names its training spacing predicts on studies
    of that spacing exactly as before."""
    shape = (20, 18, 12)
    aff = _affine((4.0, 4.0, 5.0), (-40.0, -36.0, -30.0), perm=(1, 0, 2), signs=(1, -1, 1))
    rng = np.random.default_rng(3)
    ct_p = _save(tmp_path / "ct.nii.gz", _ct(shape) + rng.normal(0, 30, shape).astype(np.float32), aff)
    pet_p = _save(tmp_path / "pet.nii.gz", rng.random(shape).astype(np.float32) * 8, aff)
    lab_p = _save(tmp_path / "lab.nii.gz", (rng.random(shape) > 0.8).astype(np.uint8), aff)
    plain = preprocess_images(ct_p, pet_p, DataConfig(), label_path=lab_p)
    same = preprocess_images(ct_p, pet_p, DataConfig(target_spacing=(4.0, 4.0, 5.0)), label_path=lab_p)
    assert np.array_equal(same.image, plain.image) and np.array_equal(same.label, plain.label)
    assert np.array_equal(same.geometry.grid_affine, plain.geometry.grid_affine)
    other = preprocess_images(ct_p, pet_p, DataConfig(target_spacing=(2.0, 2.0, 2.5)), label_path=lab_p)
    assert other.image.shape[1:] == (36, 40, 24)  # a different spacing still resamples (axes to R, A, S)


def test_permuted_orientation_round_trip(tmp_path: Path) -> None:
    """A CT stored with axes permuted and flipped comes back voxel-exact."""
    shape = (20, 26, 32)
    aff = _affine((2.0, 1.0, 1.5), (10.0, -20.0, 30.0), perm=(2, 0, 1), signs=(-1, 1, -1))
    rng = np.random.default_rng(0)
    label = (rng.random(shape) > 0.7).astype(np.uint8)
    ct_p = _save(tmp_path / "ct.nii.gz", _ct(shape), aff)
    pet_p = _save(tmp_path / "pet.nii.gz", rng.random(shape).astype(np.float32), aff)
    lab_p = _save(tmp_path / "lab.nii.gz", label, aff)
    pc = preprocess_images(ct_p, pet_p, DataConfig(), label_path=lab_p)
    assert pc.image.shape[1:] == (26, 32, 20)  # axes reordered to R, A, S
    assert np.all(np.diag(pc.geometry.grid_affine)[:3] > 0)
    assert np.array_equal(restore_to_ct_grid(pc.label, pc.geometry), label)
    probs = np.stack([pc.label, pc.label]).astype(np.float32)  # leading channel axis is kept
    assert np.array_equal(restore_to_ct_grid(probs, pc.geometry, order=1)[1], label.astype(np.float32))
    with pytest.raises(ValueError, match="not on the preprocessed grid"):
        restore_to_ct_grid(label, pc.geometry)


def test_normalisation_and_label_modes(tmp_path: Path) -> None:
    root = tmp_path / "hn"
    case = write_cohort(root, 1, "hecktor", seed=4, shape=(32, 32, 36))[0]
    labels = set(np.unique(read_volume(case.label, dtype=None).array).tolist())
    assert labels <= {0, 1, 2} and len(labels) > 1
    binary = preprocess_case(case, DataConfig(num_label_classes=2))
    multi = preprocess_case(case, DataConfig(num_label_classes=2, label_mode="multiclass"))
    assert set(np.unique(binary.label).tolist()) == {0, 1}
    assert set(np.unique(multi.label).tolist()) == labels
    assert binary.image.dtype == np.float32 and binary.image.min() >= 0 and binary.image.max() <= 1
    assert binary.label.dtype == np.uint8 and binary.suv.dtype == np.float32
    ct = restore_to_ct_grid(binary.image[0], binary.geometry, order=1) * 2000 - 1000
    raw = np.clip(read_volume(case.ct).array, -1000, 1000)
    assert np.allclose(ct, raw, atol=0.05)
    # HECKTOR PET is on another grid: after resampling, the tumours are hot relative to the rest of the body
    body = binary.image[0] > 0.5
    assert binary.suv[binary.label > 0].mean() > 2 * binary.suv[body & (binary.label == 0)].mean()
    with pytest.raises(ImageError, match=r"label values \{2\} outside the expected set \{0, 1\}"):
        preprocess_case(case, DataConfig(num_label_classes=1))


# ---------------------------------------------------------------------------------------- input checks
@pytest.fixture()
def good(tmp_path: Path):
    shape = (16, 16, 12)
    aff = _affine((2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    ct = _save(tmp_path / "ct.nii.gz", _ct(shape), aff)
    pet = _save(tmp_path / "pet.nii.gz", np.ones(shape, np.float32), aff)
    lab = _save(tmp_path / "lab.nii.gz", np.zeros(shape, np.uint8), aff)
    return tmp_path, shape, aff, ct, pet, lab


def test_good_inputs_pass_and_nothing_is_written_next_to_them(good) -> None:
    folder, _, _, ct, pet, lab = good
    before = sorted(folder.iterdir())
    preprocess_case(Case("c", "p", ct, pet, lab), DataConfig())
    assert sorted(folder.iterdir()) == before


def test_non_3d_image(good) -> None:
    folder, shape, aff, ct, _, _ = good
    pet4 = _save(folder / "pet4.nii.gz", np.ones((*shape, 2), np.float32), aff)
    with pytest.raises(ImageError, match=f"{pet4}: expected a 3D image"):
        preprocess_images(ct, pet4, DataConfig())


def test_nan_voxels(good) -> None:
    folder, shape, aff, ct, _, _ = good
    arr = np.ones(shape, np.float32)
    arr[3, 3, 3] = np.nan
    arr[4, 4, 4] = np.inf
    bad = _save(folder / "nanpet.nii.gz", arr, aff)
    with pytest.raises(ImageError, match=f"{bad}: contains 2 NaN/Inf voxel"):
        preprocess_images(ct, bad, DataConfig())


def test_no_overlap_in_physical_space(good) -> None:
    folder, shape, aff, ct, _, _ = good
    far = aff.copy()
    far[:3, 3] += [0.0, 0.0, 5000.0]
    pet = _save(folder / "farpet.nii.gz", np.ones(shape, np.float32), far)
    with pytest.raises(ImageError, match="does not overlap") as e:
        preprocess_images(ct, pet, DataConfig())
    assert str(pet) in str(e.value) and str(ct) in str(e.value)
    near = aff.copy()
    near[:3, 3] += [0.0, 0.0, 33.0]  # covers only ~8% of the CT
    pet2 = _save(folder / "nearpet.nii.gz", np.ones(shape, np.float32), near)
    with pytest.raises(ImageError, match="covers only"):
        preprocess_images(ct, pet2, DataConfig())


def test_label_values_and_grid(good) -> None:
    folder, shape, aff, ct, pet, _ = good
    arr = np.zeros(shape, np.uint8)
    arr[1, 1, 1], arr[2, 2, 2] = 1, 7
    bad_vals = _save(folder / "badlab.nii.gz", arr, aff)
    with pytest.raises(ImageError, match=rf"{bad_vals}: label values \{{7\}} outside"):
        preprocess_images(ct, pet, DataConfig(), label_path=bad_vals)
    frac = _save(folder / "fraclab.nii.gz", np.full(shape, 0.5, np.float32), aff)
    with pytest.raises(ImageError, match="non-integer"):
        preprocess_images(ct, pet, DataConfig(), label_path=frac)
    shifted = aff.copy()
    shifted[0, 3] += 2.0
    off_grid = _save(folder / "offlab.nii.gz", np.zeros(shape, np.uint8), shifted)
    with pytest.raises(ImageError, match=f"{off_grid}: label grid .* differs from the CT grid of {ct}"):
        preprocess_images(ct, pet, DataConfig(), label_path=off_grid)
    small = _save(folder / "smalllab.nii.gz", np.zeros((8, 8, 8), np.uint8), aff)
    with pytest.raises(ImageError, match="differs from the CT grid"):
        preprocess_images(ct, pet, DataConfig(), label_path=small)


def test_swapped_channels_detected(good) -> None:
    _, _, _, ct, pet, _ = good
    with pytest.raises(ImageError, match="look swapped"):
        preprocess_images(pet, ct, DataConfig())


def test_missing_and_unreadable_files(good) -> None:
    folder, _, _, ct, _, _ = good
    with pytest.raises(ImageError, match="file not found"):
        preprocess_images(ct, folder / "nope.nii.gz", DataConfig())
    junk = folder / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=f"{junk}: cannot be read"):
        preprocess_images(ct, junk, DataConfig())


def test_mha_matches_nifti(tmp_path: Path) -> None:
    import SimpleITK as sitk

    root = tmp_path / "c"
    case = write_cohort(root, 1, "hecktor", seed=1, shape=(20, 20, 24))[0]
    vol = read_volume(case.pet)
    img = sitk.GetImageFromArray(vol.array.transpose(2, 1, 0))
    lps = np.diag([-1.0, -1.0, 1.0])
    img.SetSpacing(vol.spacing)
    img.SetDirection((lps @ (vol.affine[:3, :3] / np.array(vol.spacing))).ravel().tolist())
    img.SetOrigin((lps @ vol.affine[:3, 3]).tolist())
    mha = tmp_path / "pet.mha"
    sitk.WriteImage(img, str(mha))
    again = read_volume(mha)
    assert np.allclose(again.affine, vol.affine, atol=1e-4) and np.array_equal(again.array, vol.array)
    a = preprocess_images(case.ct, case.pet, DataConfig())
    b = preprocess_images(case.ct, mha, DataConfig())
    assert np.allclose(a.suv, b.suv, atol=1e-5)
