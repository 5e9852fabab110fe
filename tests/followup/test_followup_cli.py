"""``h2aseg compare`` end to end on a tiny patient with two studies, its error messages, and its page in
headless Chromium (the viewer tests' DevTools helper; skipped without Chromium)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from followup_fixtures import LESIONS, StudyFiles, rigid_matrix, write_study
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.io import write_volume

sys.path.insert(0, str(Path(__file__).parents[1] / "viewer"))
from viewer_cdp import Browser, chromium

TRUTH = rigid_matrix(3.0, (6.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyFiles, StudyFiles]:
    root = tmp_path_factory.mktemp("compare") / "PETCT_0a1b2c"
    return (
        write_study(root / "01-02-2005-NA-PET-CT-1", np.eye(4), 0),
        write_study(root / "03-09-2005-NA-PET-CT-2", TRUTH, 1),
    )


def _args(base: StudyFiles, fu: StudyFiles, out: Path) -> list[str]:
    return [
        "compare",
        *("--baseline", str(base.folder), "--baseline-mask", str(base.mask)),
        *("--followup", str(fu.folder), "--followup-mask", str(fu.mask)),
        *("--out", str(out)),
    ]


@pytest.fixture(scope="module")
def compared(studies: tuple[StudyFiles, StudyFiles], tmp_path_factory: pytest.TempPathFactory) -> Path:
    base, fu = studies
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(app, [*_args(base, fu, out), "--liver-mask", str(base.liver)])
    assert result.exit_code == 0, result.output
    assert "same patient (PETCT_0a1b2c)" in result.output
    assert "3 matched, 1 new, 1 vanished" in result.output
    return out


def test_the_cli_writes_the_tables_the_transform_and_the_page(compared: Path) -> None:
    rows = list(csv.DictReader((compared / "lesions.csv").open()))
    assert sorted(r["status"] for r in rows) == ["matched"] * 3 + ["new", "vanished"]
    assert {"baseline_suv_peak", "followup_suv_peak", "delta_tlg_pct", "delta_volume_ml_pct"} <= set(rows[0])
    by_max = {round(float(r["baseline_suv_max"] or 0)): r for r in rows if r["status"] == "matched"}
    assert float(by_max[8]["followup_suv_max"]) == pytest.approx(LESIONS["shrinks"][1].suv)  # type: ignore[union-attr]
    assert float(by_max[6]["followup_suv_max"]) == pytest.approx(LESIONS["grows"][1].suv)  # type: ignore[union-attr]
    (patient,) = csv.DictReader((compared / "patient.csv").open())
    assert patient["percist_category"] == "PMD" and patient["new_unequivocal"] == "1"  # the new lesion
    assert patient["liver_source"].startswith("ours: 3 cm sphere")
    assert 1.7 < float(patient["baseline_liver_mean"]) < 2.3 and float(patient["baseline_liver_sd"]) > 0
    assert "not PERCIST's SUL" in patient["suv_type"]
    assert float(patient["delta_mtv_ml"]) == pytest.approx(
        float(patient["followup_mtv_ml"]) - float(patient["baseline_mtv_ml"])
    )
    reg = json.loads((compared / "registration.json").read_text())
    assert abs(reg["rotation_deg"] - 3.0) < 0.5 and reg["body_dice_after"] > reg["body_dice_before"]
    page = (compared / "compare.html").read_text()
    assert page.count("<img ") == 4 and "PERCIST-style: PMD" in page
    assert not list(compared.glob(".tmp-*"))


def test_studies_of_two_patients_are_refused(studies: tuple[StudyFiles, StudyFiles], tmp_path: Path) -> None:
    base, fu = studies
    other = tmp_path / "PETCT_ffff" / fu.folder.name
    shutil.copytree(fu.folder, other)
    result = CliRunner().invoke(app, _args(base, replace(fu, folder=other), tmp_path / "out"))
    assert result.exit_code == 2
    assert "two different patients: baseline PETCT_0a1b2c" in result.output and "PETCT_ffff" in result.output
    allowed = CliRunner().invoke(
        app,
        [
            *_args(base, replace(fu, folder=other), tmp_path / "out"),
            "--allow-different-patients",
            "--no-register",
        ],
    )
    assert allowed.exit_code == 0, allowed.output
    assert "different patients allowed" in allowed.output
    (patient,) = csv.DictReader((tmp_path / "out" / "patient.csv").open())
    assert patient["percist_category"] == "not available"  # no liver reference given


def test_a_followup_without_a_ct_names_the_missing_file(
    studies: tuple[StudyFiles, StudyFiles], tmp_path: Path
) -> None:
    base, fu = studies
    folder = tmp_path / "PETCT_0a1b2c" / "fu"
    folder.mkdir(parents=True)
    shutil.copy(fu.pet, folder / "SUV.nii.gz")
    result = CliRunner().invoke(app, _args(base, replace(fu, folder=folder), tmp_path / "out"))
    assert result.exit_code == 2
    assert f"{folder}: the follow-up study has no CT (CTres.nii.gz or CT.nii.gz not found)" in result.output
    assert "--followup-ct FILE" in result.output and not (tmp_path / "out").exists()


def test_a_mask_on_neither_grid_of_its_study_is_refused(
    studies: tuple[StudyFiles, StudyFiles], tmp_path: Path
) -> None:
    base, fu = studies
    a = np.diag([5.0, 5.0, 5.0, 1.0])
    mask = write_volume(tmp_path / "PETCT_0a1b2c_wrong.nii.gz", np.zeros((10, 10, 10), np.uint8), a)
    result = CliRunner().invoke(app, _args(base, replace(fu, mask=mask), tmp_path))
    assert result.exit_code == 2
    assert f"{mask}: the follow-up mask's grid (shape (10, 10, 10)" in result.output
    assert "is neither the CT's" in result.output


def test_the_page_renders_in_headless_chromium(compared: Path, tmp_path: Path) -> None:
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (chromium or chromium-browser; .ci/run installs it with apt-get)")
    browser = Browser(exe, tmp_path / "profile")
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", {"url": (compared / "compare.html").resolve().as_uri()})
        loaded = browser.wait_for(
            "document.body && document.body.dataset.imagesLoaded !== 'pending'"
            " && document.body.dataset.imagesLoaded",  # the body is null until the page is parsed
            60,
        )
        assert loaded == "true"
        sizes = browser.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
        assert len(sizes) == 4 and all(w > 50 and h > 50 for w, h in sizes)
        statuses = browser.evaluate(
            "[...document.querySelectorAll('#lesion-table tbody tr')].map(r => r.dataset.status)"
        )
        assert sorted(statuses) == ["matched"] * 3 + ["new", "vanished"]
        shot = browser.screenshot(tmp_path / "compare.png")
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()


def test_user_liver_regions_for_both_studies(studies: tuple[StudyFiles, StudyFiles], tmp_path: Path) -> None:
    base, fu = studies
    args = [*_args(base, fu, tmp_path), "--no-register", "--liver-roi", str(base.liver)]
    result = CliRunner().invoke(app, [*args, "--followup-liver-roi", str(fu.liver)])
    assert result.exit_code == 0, result.output
    (patient,) = csv.DictReader((tmp_path / "patient.csv").open())
    assert patient["liver_source"] == f"user region {base.liver}"
    for side in ("baseline", "followup"):
        assert (
            1.8 < float(patient[f"{side}_liver_mean"]) < 2.2 and 0 < float(patient[f"{side}_liver_sd"]) < 0.3
        )
    both = CliRunner().invoke(app, [*args, "--liver-mask", str(base.liver)])
    assert both.exit_code == 2 and "not both" in both.output
