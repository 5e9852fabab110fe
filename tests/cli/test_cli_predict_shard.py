"""``h2aseg predict --input --shard I/N``: N processes split one folder, none predicts a study twice, and a
rerun redoes only what is missing."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.layouts import discover
from h2aseg.errors import H2ASegError
from h2aseg.inference.predictor import shard_cases
from h2aseg.synth import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import save_tiny_checkpoint

runner = CliRunner()
N_CASES = 4


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny checkpoint and a folder of tiny studies."""
    root = tmp_path_factory.mktemp("shard")
    write_cohort(root / "data", N_CASES, "hecktor", seed=3, shape=(24, 24, 16), spacing=(8.0, 8.0, 8.0))
    return save_tiny_checkpoint(root / "model.pt"), root / "data"


def _run_shards(checkpoint: Path, data: Path, out: Path, count: int) -> list[str]:
    """``count`` predict processes at the same time, one per shard; their stderr, in shard order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    base = [sys.executable, "-m", "h2aseg", "predict", "--checkpoint", str(checkpoint), "--input", str(data)]
    base += ["--out-dir", str(out), "--no-progress", "--device", "cpu"]
    procs = [
        subprocess.Popen(
            [*base, "--shard", f"{i}/{count}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    logs = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        logs.append(err)
    return logs


def _counts(log: str) -> tuple[int, int]:
    """(predicted, kept) from a process's summary line."""
    match = re.search(r"\((\d+) predicted, (\d+) kept", log)
    assert match is not None, log
    return int(match[1]), int(match[2])


def test_two_processes_split_a_folder_and_resume(study: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, data = study
    out = tmp_path / "pred"
    ids = sorted(c.case_id for c in discover(data))
    logs = _run_shards(checkpoint, data, out, 2)
    assert [_counts(log) for log in logs] == [(2, 0), (2, 0)]  # 2 + 2 predictions for 4 studies ...
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.nii.gz" for i in ids]  # ... each written once
    assert "shard 0/2: 2 of 4 cases" in logs[0] and "shard 1/2: 2 of 4 cases" in logs[1]
    # a killed run left one study undone: a rerun of both shards predicts only that one
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / f"{ids[1]}.nii.gz").unlink()  # shard 1 of 2 (second in case-id order)
    logs = _run_shards(checkpoint, data, out, 2)
    assert [_counts(log) for log in logs] == [(0, 2), (1, 1)]
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after.keys() == stamps.keys()
    assert [n for n in after if after[n] != stamps[n]] == [f"{ids[1]}.nii.gz"]


def test_shards_are_disjoint_cover_and_ignore_listing_order(study: tuple[Path, Path]) -> None:
    cases = discover(study[1])
    shuffled = random.Random(0).sample(cases, len(cases))
    shards = [[c.case_id for c in shard_cases(shuffled, i, 3)] for i in range(3)]
    assert shards == [[c.case_id for c in shard_cases(cases, i, 3)] for i in range(3)]
    assert sorted(i for shard in shards for i in shard) == sorted(c.case_id for c in cases)
    with pytest.raises(H2ASegError, match="--shard 3/3"):
        shard_cases(cases, 3, 3)


@pytest.mark.parametrize(
    ("shard", "extra", "message"),
    [
        ("2/2", [], "--shard 2/2: expected I/N with whole numbers 0 <= I < N"),
        ("0/0", [], "--shard 0/0: expected I/N"),
        ("one/2", [], "--shard one/2: expected I/N"),
        ("-1/2", [], "--shard -1/2: expected I/N"),
        ("0/2", ["--ct", "a", "--pet", "b", "--out", "c"], "--shard splits an --input folder"),
    ],
)
def test_bad_shard_is_a_one_line_error(tmp_path: Path, shard: str, extra: list[str], message: str) -> None:
    folder = extra or ["--input", "a", "--out-dir", "b"]
    args = ["predict", "--checkpoint", str(tmp_path / "x.pt"), *folder, "--shard", shard]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
