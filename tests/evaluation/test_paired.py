"""``h2aseg evaluate-paired``: paired differences, lesion counts, the shipping rule, and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.errors import InputError
from h2aseg.evaluation.paired import compare_evaluations, write_comparison

HEADER = (
    "case_id,has_lesion,dice,hd95,precision,recall,gt_lesions,pred_lesions,tp_lesions,fn_lesions,fp_lesions"
)


def _folder(root: Path, name: str, rows: list[tuple[str, int, float, int, int, int]]) -> Path:
    """An evaluation folder: rows of (case, has_lesion, dice, gt_lesions, tp_lesions, fp_lesions)."""
    out = root / name
    out.mkdir()
    lines = [HEADER]
    for case, has, dice, gt, tp, fp in rows:
        lines.append(f"{case},{has},{dice},10,50,50,{gt},{tp + fp},{tp},{gt - tp},{fp}")
    (out / "per_case.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _pair(tmp_path: Path, cand_dice=(60.0, 50.0, 0.0), cand_tp=(2, 1, 0)) -> tuple[Path, Path]:
    ref = _folder(
        tmp_path,
        "ref",
        [("a", 1, 40.0, 2, 1, 3), ("b", 1, 50.0, 1, 1, 0), ("c", 1, 10.0, 2, 1, 1), ("d", 0, 0.0, 0, 0, 4)],
    )
    cand = _folder(
        tmp_path,
        "cand",
        [
            ("a", 1, cand_dice[0], 2, cand_tp[0], 1),
            ("b", 1, cand_dice[1], 1, cand_tp[1], 1),
            ("c", 1, cand_dice[2], 2, cand_tp[2], 0),
            ("d", 0, 0.0, 0, 0, 2),
        ],
    )
    return cand, ref


def test_paired_numbers_by_hand(tmp_path):
    cand, ref = _pair(tmp_path)
    cmp = compare_evaluations(cand, ref, "new", "old")
    # differences over the three studies with lesions: +20, 0, -10
    assert cmp.n_studies == 4 and cmp.n_lesion_studies == 3
    assert cmp.dice_difference.mean == pytest.approx(10 / 3)
    sd = math.sqrt(((20 - 10 / 3) ** 2 + (10 / 3) ** 2 + (-10 - 10 / 3) ** 2) / 2)
    assert cmp.dice_difference.se == pytest.approx(sd / math.sqrt(3))
    assert (cmp.better, cmp.worse) == (1, 1)
    assert cmp.candidate.dice.mean == pytest.approx(110 / 3)
    assert (cmp.candidate.lesions_found, cmp.candidate.lesions_total) == (3, 5)
    assert (cmp.reference.lesions_found, cmp.reference.lesions_total) == (3, 5)
    assert cmp.candidate.fp_lesions_per_study == pytest.approx(1.0)  # (1 + 1 + 0 + 2) / 4
    assert cmp.candidate.fp_lesions_per_lesion_free_study == pytest.approx(2.0)
    assert cmp.reference.fp_lesions_per_study == pytest.approx(2.0)
    assert cmp.candidate.studies_at_dice_zero == 1 and cmp.reference.studies_at_dice_zero == 0
    # +3.3 with a standard error of 8.8: not more than one standard error, so it does not ship
    assert not cmp.ships and "not more than one standard error" in cmp.reason


def test_rule_ships_when_higher_by_more_than_one_se_and_finding_as_many(tmp_path):
    cand, ref = _pair(tmp_path, cand_dice=(45.0, 56.0, 14.0), cand_tp=(1, 1, 1))
    cmp = compare_evaluations(cand, ref)
    assert cmp.dice_difference.mean == pytest.approx(5.0)
    assert cmp.ships
    # as good on Dice but one lesion fewer found: does not ship
    (tmp_path / "x").mkdir()
    cand2, ref2 = _pair(tmp_path / "x", cand_dice=(45.0, 56.0, 14.0), cand_tp=(1, 1, 0))
    cmp2 = compare_evaluations(cand2, ref2)
    assert not cmp2.ships and "lesions found 2 against 3" in cmp2.reason


def test_written_files_and_cli(tmp_path):
    cand, ref = _pair(tmp_path)
    paths = write_comparison(compare_evaluations(cand, ref), tmp_path / "w")
    doc = json.loads(paths["json"].read_text())
    assert doc["dice_difference"]["n"] == 3 and doc["ships"] is False
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "evaluate-paired",
            "--candidate",
            str(cand),
            "--reference",
            str(ref / "per_case.csv"),
            "--out",
            str(out),
            "--candidate-name",
            "stage 4",
            "--reference-name",
            "shipped",
        ],
    )
    assert res.exit_code == 0, res.output
    md = (out / "paired.md").read_text()
    assert "| stage 4 | 36.7 ± 18.6 | 3 / 5 | 1.00 | 2.00 | 1 |" in md
    assert "**+3.3 ± 8.8** points, better on 1 and worse on 1 of 3" in md
    assert "**do not ship**" in md


def test_different_studies_are_named(tmp_path):
    cand, ref = _pair(tmp_path)
    text = (cand / "per_case.csv").read_text().replace("\nd,", "\ne,")
    (cand / "per_case.csv").write_text(text)
    with pytest.raises(
        InputError, match=r"different studies: 1 only in .*cand.*\(e\); 1 only in .*ref.*\(d\)"
    ):
        compare_evaluations(cand, ref)


def test_bad_inputs_name_the_file(tmp_path):
    cand, ref = _pair(tmp_path)
    with pytest.raises(InputError, match=r"nothing.*no per-case table"):
        compare_evaluations(tmp_path / "nothing", ref)
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "per_case.csv").write_text("case_id,dice\na,50\n")
    with pytest.raises(InputError, match=r"short.*missing column\(s\) has_lesion, gt_lesions"):
        compare_evaluations(tmp_path / "short", ref)
    text = (cand / "per_case.csv").read_text().replace("\nb,1,50.0,10,50,50,1,", "\nb,1,50.0,10,50,50,3,")
    (cand / "per_case.csv").write_text(text)
    with pytest.raises(InputError, match=r"study 'b'.*disagree on its ground truth"):
        compare_evaluations(cand, ref)
    res = CliRunner().invoke(
        app,
        [
            "evaluate-paired",
            "--candidate",
            str(tmp_path / "nothing"),
            "--reference",
            str(ref),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and "no per-case table" in res.output
