"""MONAI pipelines: patch size, 1:1 positive/negative crops, body crop, axial rotation, determinism."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from monai.transforms import Rotate
from torch.utils.data import default_collate

from h2aseg.config import DataConfig
from h2aseg.data.preprocess import CaseGeometry, PreprocessedCase
from h2aseg.data.transforms import (
    CropCentresd,
    RandAxialRotated,
    augmentation,
    body_threshold,
    case_to_dict,
    lesion_balanced_indices,
    model_input,
    rotate_axial,
    train_transforms,
)

PATCH = (16, 16, 8)


def _case(shape=(48, 44, 30), lesion=True, body=None) -> PreprocessedCase:
    img = np.zeros((2, *shape), np.float32)
    sl = body or tuple(slice(3, n - 3) for n in shape)
    img[0][sl] = 0.52  # soft tissue (HU ~ 40) inside the body, air (0) outside
    img[1][sl] = 0.05
    lab = np.zeros(shape, np.uint8)
    if lesion:
        c = [n // 2 for n in shape]
        lab[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 1 : c[2] + 2] = 1
        img[1][lab > 0] = 0.5
    g = CaseGeometry(np.eye(4), shape, np.array([[0, 1], [1, 1], [2, 1]]), np.eye(4), shape, np.eye(4), shape)
    return PreprocessedCase("c0", img, lab, img[1] * 20, g)


def _cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), patch_size=PATCH, **kw)


def test_train_output_shapes_and_types() -> None:
    cfg = _cfg(crops_per_case=3)
    out = train_transforms(cfg)(case_to_dict(_case()))
    assert isinstance(out, list) and len(out) == 3
    for d in out:
        assert type(d["image"]) is torch.Tensor and type(d["label"]) is torch.Tensor
        assert d["image"].shape == (2, *PATCH) and d["image"].dtype == torch.float32
        assert d["label"].shape == (1, *PATCH) and d["label"].dtype == torch.uint8
        assert d["case_id"] == "c0"
    batch = default_collate(out)
    assert batch["image"].shape == (3, 2, *PATCH) and batch["label"].shape == (3, 1, *PATCH)


@pytest.mark.parametrize("pos_fraction", [0.5, 1.0, 0.0])
def test_positive_negative_ratio(pos_fraction: float) -> None:
    cfg = _cfg(pos_fraction=pos_fraction, rotate_prob=0.0, flip_prob=0.0, intensity_jitter=0.0)
    t = train_transforms(cfg).set_random_state(seed=0)
    data = case_to_dict(_case())
    centre = tuple(p // 2 for p in PATCH)
    hits = [int(d["label"][(0, *centre)]) for _ in range(150) for d in t(data)]
    frac = float(np.mean(hits))
    if pos_fraction in (0.0, 1.0):
        assert frac == pos_fraction
    else:
        assert 0.4 < frac < 0.6


def test_lesion_free_case_gives_negative_crops_quietly() -> None:
    t = train_transforms(_cfg())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = t(case_to_dict(_case(lesion=False)))
    assert len(out) == 2 and all(int(d["label"].sum()) == 0 for d in out)


def test_unlabelled_case_dict() -> None:
    pc = _case()
    pc.label = None
    d = case_to_dict(pc)
    assert d["label"].shape == (1, *pc.image.shape[1:]) and not d["has_label"] and d["label"].max() == 0


def test_small_volume_is_padded_to_the_patch() -> None:
    out = train_transforms(_cfg())(case_to_dict(_case(shape=(12, 10, 5))))
    assert all(d["image"].shape == (2, *PATCH) for d in out)


def test_crop_to_body() -> None:
    shape = (64, 64, 40)
    body = (slice(24, 44), slice(20, 40), slice(12, 30))
    data = case_to_dict(_case(shape, lesion=False, body=body))
    thr = body_threshold(DataConfig())
    assert 0.2 < thr < 0.3  # -500 HU in the default window
    for crop, expect in ((True, 0.5), (False, 0.0)):
        t = train_transforms(_cfg(crop_to_body=crop, rotate_prob=0.0, pos_fraction=0.0)).set_random_state(1)
        fractions = [float((d["image"][0] > thr).float().mean()) for _ in range(40) for d in t(data)]
        if crop:
            assert min(fractions) > expect
        else:
            assert min(fractions) == expect  # without the body crop some patches are all air


def test_axial_rotation_matches_monai_and_keeps_slices() -> None:
    x = torch.rand(2, 30, 22, 6)
    a = rotate_axial(x, 0.6, "bilinear")
    b = Rotate(angle=(0.0, 0.0, 0.6), mode="bilinear", padding_mode="zeros", align_corners=False)(x)
    assert torch.allclose(a, torch.as_tensor(b), atol=1e-4)
    lab = torch.zeros(1, 30, 22, 6, dtype=torch.uint8)
    lab[0, 10:20, 8:14, 3] = 1
    r = RandAxialRotated(["label"], prob=1.0, max_deg=45, modes="nearest").set_random_state(0)
    out = r({"label": lab})["label"]
    assert out.dtype == torch.uint8 and out[0, :, :, 3].sum() > 0
    assert out[0].sum(dim=(0, 1)).nonzero().flatten().tolist() == [3]  # rotation about the axial axis only
    assert r.angle != 0.0


def test_train_is_reproducible_with_a_seed() -> None:
    data = case_to_dict(_case())
    a = train_transforms(_cfg()).set_random_state(5)(data)
    b = train_transforms(_cfg()).set_random_state(5)(data)
    assert all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        for x, y in zip(a, b, strict=True)
    )


def test_model_input_is_the_whole_volume_as_float32() -> None:
    pc = _case()
    pc.image = np.asfortranarray(pc.image.astype(np.float64))
    x = model_input(pc)
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.is_contiguous()
    assert x.shape == (2, *pc.image.shape[1:]) and torch.equal(x, torch.from_numpy(pc.image).float())


def test_validation_and_prediction_share_the_input() -> None:
    import inspect

    from h2aseg.inference.predictor import Predictor
    from h2aseg.training.loop import validate

    assert "model_input(pc, cfg.data)" in inspect.getsource(validate)
    assert "model_input(pc, self.cfg.data)" in inspect.getsource(Predictor.probabilities)


def test_augment_modes_turn_off_what_the_paper_does_not_state() -> None:
    from monai.transforms import CropForegroundd, RandFlipd, RandScaleIntensityd

    def kinds(mode: str) -> set[type]:
        cfg = _cfg(augment=mode, flip_prob=0.5, intensity_jitter=0.1, rotate_prob=0.3, crop_to_body=True)
        return {type(t) for t in train_transforms(cfg).transforms}

    configured, paper, released = kinds("configured"), kinds("paper"), kinds("released")
    assert {CropForegroundd, RandAxialRotated, RandFlipd, RandScaleIntensityd} <= configured
    assert not {CropForegroundd, RandAxialRotated, RandFlipd, RandScaleIntensityd} & paper
    assert {CropForegroundd, RandAxialRotated} <= released and not {RandFlipd, RandScaleIntensityd} & released
    assert augmentation(_cfg(augment="released")).rotate_range_deg == 45.0
    # crops are still patch-sized and positive/negative under the paper setting
    out = train_transforms(_cfg(augment="paper"))(case_to_dict(_case()))
    assert all(tuple(c["image"].shape[1:]) == PATCH for c in out)
    with pytest.raises(ValueError, match=r"data\.augment"):
        train_transforms(_cfg(augment="strict"))


def _hot_case() -> PreprocessedCase:
    """A lesion in the middle and a hot organ (SUV 6 on the [0, 20] window) in one corner of the body."""
    pc = _case()
    pc.image[1][5:9, 5:9, 4:8] = 0.3
    return pc


def test_hot_negative_crops_are_centred_on_physiological_uptake() -> None:
    cfg = _cfg(crops_per_case=8, pos_fraction=0.0, crop_to_body=False, negative_centres="hot", hot_suv=2.5)
    t = train_transforms(cfg)
    for seed in range(3):
        t.set_random_state(seed=seed)
        for d in t(case_to_dict(_hot_case())):
            assert d["label"].sum() == 0
            # the crop centre lies in the hot organ, so the organ (PET 0.3, +- jitter) is in the crop
            assert float(d["image"][1].max()) > 0.2


def test_any_negative_crops_mostly_miss_the_hot_organ() -> None:
    cfg = _cfg(crops_per_case=16, pos_fraction=0.0, crop_to_body=False, intensity_jitter=0.0)
    t = train_transforms(cfg)
    t.set_random_state(seed=0)
    hits = [float(d["image"][1].max()) >= 0.3 for d in t(case_to_dict(_hot_case()))]
    assert not all(hits)


def test_hot_centres_fall_back_to_any_lesion_free_voxel() -> None:
    pc = _case(lesion=False)  # no voxel reaches SUV 2.5 (PET 0.05 = SUV 1)
    cfg = _cfg(crops_per_case=2, pos_fraction=0.0, negative_centres="hot")
    out = train_transforms(cfg)(case_to_dict(pc))
    assert len(out) == 2 and all(d["image"].shape == (2, *PATCH) for d in out)


def test_hot_suv_outside_the_pet_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="hot_suv"):
        train_transforms(_cfg(negative_centres="hot", hot_suv=25.0))


def _lesion_offsets(cfg: DataConfig, seeds: int = 4) -> list[np.ndarray]:
    """Offsets of the lesion's centre of mass from the crop centre, over the positive crops of ``seeds``."""
    t = train_transforms(cfg)
    offsets = []
    for seed in range(seeds):
        t.set_random_state(seed=seed)
        for d in t(case_to_dict(_case())):
            lab = d["label"][0].numpy() > 0
            if lab.any():
                com = np.array(np.nonzero(lab)).mean(axis=1)
                offsets.append(com - (np.array(PATCH) - 1) / 2)
    return offsets


def test_pos_jitter_moves_lesions_away_from_the_crop_centre() -> None:
    base = dict(crops_per_case=16, pos_fraction=1.0, crop_to_body=False, rotate_prob=0.0, flip_prob=0.0)
    centred = _lesion_offsets(_cfg(**base))
    jittered = _lesion_offsets(_cfg(**base, pos_jitter=1.0))
    # centred on a lesion voxel: the 4x4x3 lesion's centre stays within 2 voxels of the crop centre
    assert len(centred) == 64 and max(np.abs(o).max() for o in centred) <= 2.0
    # jittered by up to half the patch: most crops still hold lesion voxels, now spread over the crop
    assert len(jittered) >= 48
    reach = np.max(np.abs(np.array(jittered)), axis=0)
    assert reach[0] >= 5 and reach[1] >= 5 and reach[2] >= 2.5
    assert np.abs(np.array(jittered)).mean() > 2 * np.abs(np.array(centred)).mean()


def test_pos_jitter_is_reproducible_and_leaves_lesion_free_cases_alone() -> None:
    cfg = _cfg(crops_per_case=4, pos_fraction=1.0, pos_jitter=0.5)
    t = train_transforms(cfg)
    runs = []
    for _ in range(2):
        t.set_random_state(seed=7)
        runs.append([d["label"].sum().item() for d in t(case_to_dict(_case()))])
    assert runs[0] == runs[1]
    out = t(case_to_dict(_case(lesion=False)))
    assert len(out) == 4 and all(d["label"].sum() == 0 for d in out)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_pos_jitter_outside_0_1_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match=r"data\.pos_jitter"):
        train_transforms(_cfg(pos_jitter=value))


def _two_lesion_case() -> PreprocessedCase:
    """The standard case plus a one-voxel lesion far from the first one."""
    pc = _case()
    pc.label[10, 10, 6] = 1
    return pc


def test_lesion_balanced_indices_list_every_lesion_equally_often() -> None:
    mask = np.zeros((10, 10, 6), bool)
    mask[1:4, 1:4, 1:3] = True  # 18 voxels
    mask[7, 7, 4] = True  # 1 voxel
    mask[7:9, 1, 1] = True  # 2 voxels
    idx = lesion_balanced_indices(mask).numpy()
    assert idx.size == 3 * 18
    flat = mask.reshape(-1)
    assert flat[idx].all() and set(idx.tolist()) == set(np.flatnonzero(flat).tolist())
    counts = np.bincount(idx, minlength=flat.size)
    assert counts[np.ravel_multi_index((7, 7, 4), mask.shape)] == 18
    assert sorted({int(counts[np.ravel_multi_index((x, 1, 1), mask.shape)]) for x in (7, 8)}) == [9]


def test_pos_balance_lesion_gives_a_small_lesion_as_many_crops_as_a_large_one() -> None:
    def small_lesion_share(balance: str) -> float:
        cfg = _cfg(
            crops_per_case=16,
            pos_fraction=1.0,
            crop_to_body=False,
            rotate_prob=0.0,
            flip_prob=0.0,
            pos_balance=balance,
        )
        t = train_transforms(cfg)
        hits = []
        for seed in range(4):
            t.set_random_state(seed=seed)
            for d in t(case_to_dict(_two_lesion_case())):
                n = int((d["label"][0] > 0).sum())
                hits.append(n == 1)  # the crop holds the one-voxel lesion (and not the 48-voxel one)
        return float(np.mean(hits))

    assert small_lesion_share("voxel") < 0.15
    assert small_lesion_share("lesion") > 0.3
    with pytest.raises(ValueError, match=r"data\.pos_balance"):
        CropCentresd(None, "size")
