"""Fig. 4: level-2 features captured by hooks (no model edits), the channels TAMW weighs most, the figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from analysis_fixtures import CHANNELS, is_png, write_checkpoint, write_small_cohort
from typer.testing import CliRunner

from h2aseg.analysis.common import load_model
from h2aseg.analysis.features import capture_level2, case_features, crop_box, lesion_centre, top_channels
from h2aseg.cli import app


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("cohort")
    return root, write_small_cohort(root)


def _lesion_case(cases: list) -> object:
    import nibabel as nib

    return next(c for c in cases if np.any(np.asanyarray(nib.load(str(c.label)).dataobj)))


def test_lesion_centre_and_crop_box() -> None:
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:4, 2:4, 2:4] = 1  # small
    label[10:15, 11:16, 12:17] = 1  # largest: centre (12, 13, 14)
    suv = np.zeros((20, 20, 20), np.float32)
    suv[1, 2, 3] = 9.0
    assert lesion_centre(label, suv) == (12, 13, 14)
    assert lesion_centre(None, suv) == (1, 2, 3) == lesion_centre(np.zeros_like(label), suv)
    assert crop_box((20, 20, 20), (12, 13, 14), (8, 8, 32)) == (slice(8, 16), slice(9, 17), slice(0, 20))
    assert crop_box((20, 20, 20), (1, 19, 10), (8, 8, 8)) == (slice(0, 8), slice(12, 20), slice(6, 14))


def test_top_channels_order() -> None:
    assert top_channels(np.array([0.1, 0.9, -0.5, 0.9, 0.3]), 3) == [1, 3, 4]


def test_capture_level2_matches_the_encoder_and_tamw(tmp_path: Path) -> None:
    loaded = load_model(write_checkpoint(tmp_path / "m.pt"))
    image = torch.from_numpy(np.random.default_rng(0).random((2, 32, 32, 24), dtype=np.float32))
    f_ct, f_pet, w = capture_level2(loaded, image)
    with torch.no_grad():
        feats = loaded.model.encoder(*image[None].split(1, dim=1))
    np.testing.assert_allclose(f_ct, feats[1][0][0].numpy(), rtol=1e-5, atol=1e-6)  # F_ct^2 (after MCSA)
    np.testing.assert_allclose(f_pet, feats[1][1][0].numpy(), rtol=1e-5, atol=1e-6)
    assert f_ct.shape == (CHANNELS[1], 16, 16, 12) and w.shape == (2 * CHANNELS[1] + 2 * CHANNELS[2],)
    tamw2 = loaded.model.decoder.tamw2
    assert not tamw2._forward_hooks and not tamw2.record  # hooks gone, nothing left switched on


def test_case_features_pick_pet_and_ct_weights(cohort: tuple[Path, list], tmp_path: Path) -> None:
    def mutate(model: torch.nn.Module) -> None:  # W_fore at depth 2: channel i of F weighs tanh(i / 100)
        fc2 = model.decoder.tamw2.CA_fore.fc2
        with torch.no_grad():
            fc2.weight.zero_()
            fc2.bias.copy_(torch.arange(fc2.out_features) / 100.0)

    case = _lesion_case(cohort[1])
    for extra, pet_first in (
        ([], True),
        (["model.variant=released", "model.out_channels=2", "model.mcsa_levels=null"], False),
    ):
        loaded = load_model(write_checkpoint(tmp_path / "m.pt", extra, mutate=mutate))
        row = case_features(loaded, case, "x")
        c = CHANNELS[1]
        first, second = np.tanh(np.arange(c) / 100.0), np.tanh(np.arange(c, 2 * c) / 100.0)
        np.testing.assert_allclose(row.w_pet, first if pet_first else second, atol=1e-6)
        np.testing.assert_allclose(row.w_ct, second if pet_first else first, atol=1e-6)
        assert top_channels(row.w_pet, 2) == [c - 1, c - 2]
        assert row.gt is not None and row.gt.any() and row.ct.shape == row.suv.shape == row.gt.shape


def test_cli_draws_both_models_per_case(cohort: tuple[Path, list], tmp_path: Path) -> None:
    root, cases = cohort
    full = write_checkpoint(tmp_path / "full.pt")
    tamw_only = write_checkpoint(tmp_path / "tamw.pt", ["model.use_mcsa=false"])
    case = _lesion_case(cases)
    out = tmp_path / "figs"
    args = [
        "analyze",
        "features",
        "--checkpoint",
        str(tamw_only),
        "--compare",
        str(full),
        "--data",
        str(root),
        "--out",
        str(out),
        "--top-k",
        "2",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, [*args, "--case", case.case_id])
    assert result.exit_code == 0, result.output
    png = out / f"fig4_{case.case_id}.png"
    assert is_png(png) and not list(out.glob(".tmp-*"))
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 2 * height  # two rows of 2 + 2 x 2 panels
    bad = CliRunner().invoke(app, [*args, "--case", "nobody"])
    assert bad.exit_code == 2 and "no case(s) nobody" in bad.output
    base = write_checkpoint(tmp_path / "base.pt", ["model.use_tamw=false"])
    bad = CliRunner().invoke(app, [*args[:2], "--checkpoint", str(base), *args[4:], "--case", case.case_id])
    assert bad.exit_code == 2 and "without TAMW" in bad.output
