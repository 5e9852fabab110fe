"""``inference.case_selection`` and ``h2aseg predict --split``: the cases of one part of a model's split,
found where training left the split, with clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.config import load_config
from h2aseg.data.layouts import Case, discover
from h2aseg.errors import InputError
from h2aseg.inference.case_selection import cases_in_part, model_split
from h2aseg.inference.predictor import Predictor
from h2aseg.synth import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import TINY, save_tiny_checkpoint


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, 4, "autopet-nnunet", seed=5, shape=(32, 32, 40), spacing=(12.0, 12.0, 14.0))
    return root, discover(root)


def _stored(ckpt: Path) -> dict[str, Any] | None:
    """The split a checkpoint holds, as the predictor reads it."""
    return Predictor.from_checkpoint(ckpt).stored_split


def _split(ids: list[str], train: int) -> dict[str, Any]:
    return {
        "train": ids[:train],
        "val": [],
        "test": ids[train:],
        "seed": 3,
        "ratios": [0.5, 0.0, 0.5],
        "patients": {},
    }


def test_the_split_stored_in_the_checkpoint_comes_first(
    cohort: tuple[Path, list[Case]], tmp_path: Path
) -> None:
    root, cases = cohort
    ids = [c.case_id for c in cases]
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", _split(ids, 1))
    assert _stored(ckpt) == _split(ids, 1)
    cfg = load_config("synthetic", TINY).data
    chosen, where = cases_in_part(cases, "train", checkpoint=ckpt, data=cfg, stored=_stored(ckpt), root=root)
    assert [c.case_id for c in chosen] == ids[:1]
    assert where == f"the train part of the split stored in m.pt: 1 of its 1 case(s) found under {root}"
    chosen, _ = cases_in_part(cases, "test", checkpoint=ckpt, data=cfg, stored=_stored(ckpt), root=root)
    assert [c.case_id for c in chosen] == ids[1:]
    everything, where = cases_in_part(cases, "all", checkpoint=ckpt, data=cfg, stored=None, root=root)
    assert everything == list(cases) and where.startswith("all 4 cases")


def test_then_the_run_folders_split_json_then_a_split_made_as_training_would(
    cohort: tuple[Path, list[Case]], tmp_path: Path
) -> None:
    _, cases = cohort
    ids = [c.case_id for c in cases]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = save_tiny_checkpoint(run / "checkpoints" / "best.pt")  # exported: no split inside
    assert _stored(ckpt) is None
    (run / "split.json").write_text(json.dumps(_split(ids, 3)), encoding="utf-8")
    cfg = load_config("synthetic", TINY).data
    split, source = model_split(ckpt, cfg, None, cases)
    assert split.train == ids[:3] and source == str(run / "split.json")
    (run / "split.json").unlink()
    split, source = model_split(ckpt, cfg, None, cases)
    assert source.startswith("a split made from the data") and sorted(split.all_ids()) == sorted(ids)


def test_errors_name_the_problem(cohort: tuple[Path, list[Case]], tmp_path: Path) -> None:
    root, cases = cohort
    cfg = load_config("synthetic", TINY).data
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", {**_split(["someone else"], 1)})
    with pytest.raises(InputError, match="split part must be one of all, train, val, test, got 'dev'"):
        cases_in_part(cases, "dev", checkpoint=ckpt, data=cfg, stored=_stored(ckpt), root=root)
    with pytest.raises(InputError, match=r"none of the 1 train case\(s\) of the split stored in m.pt"):
        cases_in_part(cases, "train", checkpoint=ckpt, data=cfg, stored=_stored(ckpt), root=root)


def test_predict_split_writes_only_that_parts_masks(cohort: tuple[Path, list[Case]], tmp_path: Path) -> None:
    root, cases = cohort
    ids = [c.case_id for c in cases]
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", _split(ids, 2))
    out = tmp_path / "pred"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(root),
            "--out-dir",
            str(out),
            "--split",
            "train",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "predicting the train part of the split stored in m.pt" in result.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in ids[:2])
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--ct",
            "a",
            "--pet",
            "b",
            "--out",
            str(tmp_path / "x.nii.gz"),
            "--split",
            "test",
        ],
    )
    assert result.exit_code != 0 and "--split chooses cases of an --input folder" in result.output
