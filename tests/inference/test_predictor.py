"""Prediction writes uint8 masks whose shape and affine equal the input CT's, and never over inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from h2aseg.checkpoint import CheckpointError, save_checkpoint
from h2aseg.config import load_config
from h2aseg.data.io import ImageError
from h2aseg.data.layouts import discover
from h2aseg.inference.predictor import (
    Predictor,
    flip_masks_path,
    predict_cases,
    probability_path,
    write_prediction,
)
from h2aseg.inference.sliding import (
    TTA_FLIPS,
    body_box,
    flip_sets,
    predict_probabilities,
    predict_with_flip_masks,
    probabilities_to_mask,
)
from h2aseg.models.factory import build_from_config
from h2aseg.models.outputs import class_probabilities
from h2aseg.synth import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("synthetic", [*TINY, "infer.tta_flips=true"])
    model = build_from_config(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "version": "test"}, path)
    return path


@pytest.mark.parametrize("layout", ["hecktor", "autopet"])
def test_masks_in_original_ct_geometry(checkpoint: Path, tmp_path: Path, layout: str) -> None:
    root = tmp_path / "data"
    spacing = (6.0, 6.0, 6.0) if layout == "hecktor" else (10.0, 10.0, 12.0)
    write_cohort(root, 2, layout, seed=2, shape=(36, 40, 30), spacing=spacing)
    cases = discover(root)
    predictor = Predictor.from_checkpoint(checkpoint, ["infer.save_probabilities=true"])
    out = tmp_path / "pred"
    paths = predict_cases(predictor, cases, out)
    assert [p.name for p in paths] == [f"{c.case_id}.nii.gz" for c in cases]
    for case, path in zip(cases, paths, strict=True):
        ct, mask = nib.load(case.ct), nib.load(path)
        assert mask.shape == ct.shape
        np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-5)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
        prob = nib.load(str(path).replace(".nii.gz", "_probability.nii.gz"))
        assert prob.shape == ct.shape
    # a second run resumes: existing outputs are kept, not recomputed
    stamp = paths[0].stat().st_mtime_ns
    seen = []
    predict_cases(predictor, cases, out, on_case=lambda cid, status: seen.append(status))
    assert seen == ["skipped", "skipped"] and paths[0].stat().st_mtime_ns == stamp


def test_refuses_to_overwrite_an_input(checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    cases = write_cohort(root, 1, "autopet-nnunet", seed=1, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0))
    predictor = Predictor.from_checkpoint(checkpoint)
    pred = predictor.predict_files(cases[0].ct, cases[0].pet)
    before = cases[0].ct.read_bytes()
    with pytest.raises(ImageError, match="refusing to overwrite"):
        write_prediction(pred, cases[0].ct, inputs=(cases[0].ct, cases[0].pet))
    assert cases[0].ct.read_bytes() == before
    with pytest.raises(ImageError, match="holds input images"):
        predict_cases(predictor, cases, cases[0].ct.parent)


def test_flip_tta_averages_flipped_predictions() -> None:
    cfg = load_config("synthetic", TINY)
    model = build_from_config(cfg.model).eval()
    image = torch.rand(2, 32, 32, 32)
    plain = predict_probabilities(model, image, cfg.infer, (32, 32, 32))
    tta = predict_probabilities(model, image, cfg.override(["infer.tta_flips=true"]).infer, (32, 32, 32))
    with torch.no_grad():
        manual = torch.stack(
            [
                torch.flip(torch.sigmoid(model(torch.flip(image[None], axes))), axes)[0]
                for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
            ]
        ).mean(0)
    torch.testing.assert_close(tta, manual, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, tta)


def test_body_box_grows_to_the_window_inside_the_volume() -> None:
    ct = torch.zeros(40, 50, 30)
    ct[10:20, 5:45, 0:30] = 1.0  # body: x 10-19, y 5-44, z 0-29
    box = body_box(ct, 0.5, (16, 16, 16), margin=2)
    # x: 8-22 (14 wide) grown about its centre to the window's 16; y: 3-47 (44 wide) kept; z: the whole axis
    assert box == (slice(7, 23), slice(3, 47), slice(0, 30))
    edge = torch.zeros(40, 50, 30)
    edge[0:4, 20:30, 10:20] = 1.0  # against the x = 0 face: the grown box is shifted inside the volume
    assert body_box(edge, 0.5, (16, 16, 16), margin=2) == (slice(0, 16), slice(17, 33), slice(7, 23))
    assert body_box(torch.zeros(40, 50, 30), 0.5, (16, 16, 16)) is None  # no body: no box
    assert body_box(torch.ones(40, 50, 30), 0.5, (16, 16, 16)) is None  # the whole volume


@pytest.mark.parametrize("out_channels", [1, 2])
def test_body_box_prediction_is_background_outside_and_the_crop_inside(out_channels: int) -> None:
    cfg = load_config("synthetic", [*TINY, f"model.out_channels={out_channels}", "infer.body_box=false"])
    model = build_from_config(cfg.model).eval()
    image = torch.rand(2, 48, 40, 36)
    image[0] = 0.0
    image[0, 12:30, 6:34, 4:32] = 0.9  # the body, in normalised CT
    box_cfg = cfg.override(["infer.body_box=true"]).infer
    probs = predict_probabilities(model, image, box_cfg, (32, 32, 32), body_threshold=0.25)
    box = body_box(image[0], 0.25, (32, 32, 32))
    assert box == (slice(5, 37), slice(4, 36), slice(2, 34))
    inner = predict_probabilities(model, image[(slice(None), *box)], cfg.infer, (32, 32, 32))
    torch.testing.assert_close(probs[(slice(None), *box)], inner)
    outside = torch.ones(image.shape[1:], dtype=torch.bool)
    outside[box] = False
    background = torch.zeros(out_channels)
    if out_channels > 1:
        background[0] = 1.0
    assert torch.equal(probs[:, outside], background[:, None].expand(-1, int(outside.sum())))
    # without a threshold (or with body_box off) the windows cover the whole volume, as before
    whole = predict_probabilities(model, image, cfg.infer, (32, 32, 32), body_threshold=0.25)
    torch.testing.assert_close(predict_probabilities(model, image, box_cfg, (32, 32, 32)), whole)


def test_bad_checkpoint_messages(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Predictor.from_checkpoint(junk)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an h2aseg checkpoint"):
        Predictor.from_checkpoint(tmp_path / "other.pt")


def test_inference_imports_nothing_from_training() -> None:
    import subprocess

    code = (
        "import sys, h2aseg.inference.predictor, h2aseg.cli.predict; "
        "print([m for m in sys.modules if m.startswith('h2aseg.training')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("out_channels", [1, 2])
def test_flip_masks_hold_each_flips_own_mask(out_channels: int) -> None:
    cfg = load_config("synthetic", [*TINY, f"model.out_channels={out_channels}", "infer.tta_flips=true"])
    cfg = cfg.override(["infer.threshold=0.5"])
    model = build_from_config(cfg.model).eval()
    image = torch.rand(2, 32, 32, 32)
    probs, bits = predict_with_flip_masks(model, image, cfg.infer, (32, 32, 32))
    torch.testing.assert_close(probs, predict_probabilities(model, image, cfg.infer, (32, 32, 32)))
    assert bits is not None and bits.dtype == torch.uint8 and bits.shape == image.shape[1:]
    no_tta = cfg.override(["infer.tta_flips=false"]).infer
    plain, none = predict_with_flip_masks(model, image, no_tta, (32, 32, 32))
    assert none is None and torch.equal(plain, predict_probabilities(model, image, no_tta, (32, 32, 32)))
    with torch.no_grad():
        for k, axes in enumerate(flip_sets(True)):
            own = class_probabilities(torch.flip(model(torch.flip(image[None], axes)), axes))[0]
            expected = probabilities_to_mask(own, cfg.infer.threshold) > 0
            got = ((bits >> k) & 1).bool()
            assert (got != expected).float().mean() < 1e-3  # equal up to float rounding at the threshold
    assert TTA_FLIPS == 8 and int(bits.max()) > 0  # random weights: some flip finds something


def test_flip_masks_are_background_outside_the_body_box() -> None:
    cfg = load_config("synthetic", [*TINY, "infer.tta_flips=true", "infer.body_box=true"])
    model = build_from_config(cfg.model).eval()
    image = torch.rand(2, 48, 40, 36)
    image[0] = 0.0
    image[0, 12:30, 6:34, 4:32] = 0.9
    _, bits = predict_with_flip_masks(model, image, cfg.infer, (32, 32, 32), body_threshold=0.25)
    box = body_box(image[0], 0.25, (32, 32, 32))
    assert bits is not None and box is not None
    _, inner = predict_with_flip_masks(model, image[(slice(None), *box)], cfg.infer, (32, 32, 32))
    assert inner is not None and torch.equal(bits[box], inner)
    outside = torch.ones(bits.shape, dtype=torch.bool)
    outside[box] = False
    assert int(bits[outside].max()) == 0


def test_tta_prediction_writes_flip_masks_and_drops_stale_sidecars(checkpoint: Path, tmp_path: Path) -> None:
    cases = write_cohort(
        tmp_path / "data", 1, "autopet", seed=4, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0)
    )
    predictor = Predictor.from_checkpoint(checkpoint, ["infer.save_probabilities=true"])  # TTA stored on
    pred = predictor.predict_files(cases[0].ct, cases[0].pet)
    assert pred.flip_masks is not None and pred.flip_masks.shape == pred.mask.shape
    assert pred.flip_masks.dtype == np.uint8
    out = tmp_path / "pred" / "case.nii.gz"
    write_prediction(pred, out)
    bits = nib.load(flip_masks_path(out))
    assert bits.get_data_dtype() == np.uint8 and bits.shape == nib.load(cases[0].ct).shape
    assert probability_path(out).is_file()
    # every voxel of the mask is foreground for some flip (the mean is >= threshold only if one flip is)
    assert not np.any((pred.mask > 0) & (pred.flip_masks == 0))
    # a later prediction without them removes the old ones: the files beside a mask are its own
    write_prediction(Predictor.from_checkpoint(checkpoint).predict_files(cases[0].ct, cases[0].pet), out)
    assert not flip_masks_path(out).exists() and not probability_path(out).exists() and out.is_file()


def test_a_study_at_another_scale_than_training_warns_with_the_fix(tmp_path: Path) -> None:
    """A checkpoint that records its training voxel size and sets no target spacing warns, naming the CT
    file and the --set that resamples; at the training voxel size, or with a target spacing, it is quiet."""
    import warnings

    from h2aseg.inference.predictor import ScaleWarning

    cfg = load_config("synthetic", list(TINY))
    model = build_from_config(cfg.model)
    ckpt = tmp_path / "model.pt"
    payload = {"config": cfg.to_dict(), "model": model.state_dict(), "grid_spacing": [10.0, 10.0, 12.0]}
    save_checkpoint(payload, ckpt)
    for name, spacing in (("same", (10.0, 10.0, 12.0)), ("fine", (5.0, 5.0, 6.0))):
        write_cohort(tmp_path / name, 1, "autopet", seed=4, shape=(24, 24, 20), spacing=spacing)
    same, fine = discover(tmp_path / "same")[0], discover(tmp_path / "fine")[0]
    predictor = Predictor.from_checkpoint(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleWarning)
        predictor.predict_files(same.ct, same.pet)
    with pytest.warns(ScaleWarning) as seen:
        predictor.predict_files(fine.ct, fine.pet)
    message = str(seen[0].message)
    assert str(fine.ct) in message and "5.00 x 5.00 x 6.00" in message and "10.00 x 10.00 x 12.00" in message
    assert "data.target_spacing=[10,10,12]" in message
    resampling = Predictor.from_checkpoint(ckpt, ["data.target_spacing=[10,10,12]"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleWarning)
        resampling.predict_files(fine.ct, fine.pet)
