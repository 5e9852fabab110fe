"""The autoPET grand-challenge interface: /input/images/{ct,pet}/*.mha in, uint8 .mha in CT geometry out."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from h2aseg.checkpoint import save_checkpoint
from h2aseg.cli import app
from h2aseg.config import load_config
from h2aseg.data.io import read_volume
from h2aseg.inference.challenge import OUTPUT_DIR, ChallengeIOError, find_pairs, run_challenge, write_mha_like
from h2aseg.inference.predictor import Predictor
from h2aseg.models.factory import build_from_config

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import TINY

SIZE = (36, 40, 30)  # x, y, z
SPACING = (10.0, 10.0, 12.0)
ORIGIN = (-100.0, 50.0, 300.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("synthetic", TINY)
    model = build_from_config(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "version": "test"}, path)
    return path


def _write_mha(path: Path, array_xyz: np.ndarray) -> None:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _write_case(root: Path, ct_name: str, pet_name: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ct = np.full(SIZE, -1000.0, dtype=np.float32)
    ct[6:30, 6:34, 3:27] = rng.normal(40.0, 30.0, (24, 28, 24))
    pet = np.full(SIZE, 0.1, dtype=np.float32)
    pet[6:30, 6:34, 3:27] = 1.0
    pet[15:20, 16:21, 12:16] = 9.0
    _write_mha(root / "images" / "ct" / ct_name, ct)
    _write_mha(root / "images" / "pet" / pet_name, pet)


def test_challenge_io_end_to_end(checkpoint: Path, tmp_path: Path) -> None:
    uuid = "1f6f4d0c-9a4b-4c4e-8d1f-2b0e0c5d7a11"
    _write_case(tmp_path / "input", f"{uuid}.mha", "9d0a6c38-55b3-4b4f-9c55-2c3a8f1e0b22.mha")
    out = tmp_path / "output"
    result = CliRunner().invoke(
        app, ["predict", "--checkpoint", str(checkpoint), "--challenge-io", str(tmp_path / "input"), str(out)]
    )
    assert result.exit_code == 0, result.output
    mask_path = out / OUTPUT_DIR / f"{uuid}.mha"
    assert mask_path.is_file()
    ct = sitk.ReadImage(str(tmp_path / "input" / "images" / "ct" / f"{uuid}.mha"))
    mask = sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == ct.GetSize() == SIZE
    assert mask.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(mask.GetSpacing(), ct.GetSpacing())
    np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin())
    np.testing.assert_allclose(mask.GetDirection(), ct.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    # the voxels are in the CT's order: the same mask as a direct prediction on the same files
    predictor = Predictor.from_checkpoint(checkpoint)
    direct = predictor.predict_files(
        ct_path := tmp_path / "input/images/ct" / f"{uuid}.mha",
        next((tmp_path / "input/images/pet").glob("*.mha")),
    )
    written = read_volume(mask_path, dtype=None)
    np.testing.assert_array_equal(written.array, direct.mask)
    np.testing.assert_allclose(written.affine, read_volume(ct_path).affine, atol=1e-6)
    with (out / OUTPUT_DIR / f"{uuid}_lesions.csv").open() as f:
        header, *rows = list(csv.reader(f))
    assert header[:3] == ["case_id", "lesion_id", "centroid_x_mm"] and "suv_peak" in header
    assert (out / OUTPUT_DIR / f"{uuid}_patient.csv").is_file()
    # the confidence columns are filled from the probabilities, which are not written as files
    p_mean, p_max = header.index("prob_mean"), header.index("prob_max")
    assert rows  # the untrained test network outlines something
    for row in rows:
        assert 0.0 <= float(row[p_mean]) <= float(row[p_max]) <= 1.0
    assert not list((out / OUTPUT_DIR).glob("*probability*"))


def test_pairing_rules(tmp_path: Path) -> None:
    root = tmp_path / "same"
    for name in ("b", "a"):
        for mod in ("ct", "pet"):
            (root / "images" / mod).mkdir(parents=True, exist_ok=True)
            (root / "images" / mod / f"{name}.mha").write_bytes(b"")
    assert [(c.name, p.name) for c, p in find_pairs(root)] == [("a.mha", "a.mha"), ("b.mha", "b.mha")]
    root = tmp_path / "different"
    for i, (c, p) in enumerate([("c2", "p1"), ("c1", "p2")]):
        for mod, name in (("ct", c), ("pet", p)):
            (root / "images" / mod).mkdir(parents=True, exist_ok=True)
            (root / "images" / mod / f"{name}.mha").write_bytes(bytes(i))
    with pytest.warns(UserWarning, match="sorted name order"):
        pairs = find_pairs(root)
    assert [(c.name, p.name) for c, p in pairs] == [("c1.mha", "p1.mha"), ("c2.mha", "p2.mha")]


def test_missing_folder_and_unequal_counts(checkpoint: Path, tmp_path: Path) -> None:
    _write_case(tmp_path / "in", "a.mha", "a.mha")
    (tmp_path / "in" / "images" / "pet" / "a.mha").unlink()
    (tmp_path / "in" / "images" / "pet").rmdir()
    with pytest.raises(ChallengeIOError, match=r"images/pet: input folder not found"):
        find_pairs(tmp_path / "in")
    _write_case(tmp_path / "in2", "a.mha", "a.mha")
    _write_case(tmp_path / "in2", "b.mha", "b.mha")
    (tmp_path / "in2" / "images" / "ct" / "b.mha").unlink()
    predictor = Predictor.from_checkpoint(checkpoint)
    with pytest.raises(ChallengeIOError, match=r"images/ct holds 1 .mha image\(s\) but .*images/pet holds 2"):
        run_challenge(predictor, tmp_path / "in2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(
        app, ["predict", "--checkpoint", str(checkpoint), "--challenge-io", str(tmp_path / "nope"), "o"]
    )
    assert result.exit_code == 2 and "nope/images/ct: input folder not found" in result.output
    result = CliRunner().invoke(
        app, ["predict", "--checkpoint", str(checkpoint), "--challenge-io", "i", "o", "--out-dir", "x"]
    )
    assert result.exit_code == 2 and "--challenge-io takes no" in result.output


def test_written_mask_keeps_the_voxel_order_and_geometry(tmp_path: Path) -> None:
    _write_case(tmp_path / "in", "a.mha", "a.mha")
    ct_path = tmp_path / "in" / "images" / "ct" / "a.mha"
    mask = (np.random.default_rng(1).random(SIZE) > 0.7).astype(np.uint8)
    out = write_mha_like(mask, ct_path, tmp_path / "out" / "a.mha")
    back, ct = read_volume(out, dtype=None), read_volume(ct_path)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-9)
    with pytest.raises(ValueError, match="differs from"):
        write_mha_like(mask[:-1], ct_path, tmp_path / "out" / "b.mha")
