"""``experiments/device-queue.sh`` (one call on a GPU machine) with a stand-in ``h2aseg``: it makes the
cohort when it is missing (over a cut-off one, deleting nothing), runs the queue through
``experiments/queue.sh``, and brings back one archive of the small files of the finished runs (no
checkpoints, predictions or raw TAMW CSVs) that unpacks into ``results/``; an OUT outside ``results/`` is
refused before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "device-queue.sh"

FAKE_H2ASEG = r"""
import sys
from pathlib import Path

args = sys.argv[1:]
with Path(__file__).with_name("calls.txt").open("a") as log:  # appended: queue.sh runs several at once
    log.write(" ".join(args) + "\n")
if args[0] == "synth":
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok="--overwrite" in args)
    (out / "phantom.json").write_text("{}")
    sys.exit(0)
out = Path(args[args.index("--out") + 1])
if "--tables-only" in args:
    (out / "table1.md").write_text("| table |\n")
    sys.exit(0)
run = out / "runs" / "m" / "seed0"
for d in ("checkpoints", "predictions", "analysis", "evaluation"):
    (run / d).mkdir(parents=True, exist_ok=True)
(out / "split.json").write_text("{}")
(run / "done.json").write_text("{}")
(run / "evaluation" / "per_case.csv").write_text("case_id,dice\na,0.5\n")
(run / "checkpoints" / "last.pt").write_bytes(b"x" * 1000)
(run / "predictions" / "a.nii.gz").write_bytes(b"x" * 1000)
(run / "analysis" / "table3.csv").write_text("depth,w\n1,0.5\n")
(run / "analysis" / "tamw_weights_channels.csv").write_text("c\n" + "0.123456789\n" * 300_000)
print("run 1/1: m seed 0 (done)")
"""


def _call(tmp_path: Path, *pairs: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "fake_h2aseg.py"
    fake.write_text(FAKE_H2ASEG)
    (tmp_path / "out").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "WHEELS": str(tmp_path / "no-wheels"),
        "COHORT": str(tmp_path / "cohort"),
        "DECOYS_COHORT": str(tmp_path / "decoys"),
        "PYTHON": sys.executable,
        "H2ASEG": f"{sys.executable} {fake}",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "-p", "1", "-t", "60", *pairs],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_brings_back_one_archive_of_the_small_files(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    config = tmp_path / "study.yaml"
    config.write_text("name: x\n")
    res = _call(tmp_path, f"{config}={tmp_path / 'results' / 'study'}")
    assert res.returncode == 0, res.stdout + res.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[0].startswith(f"synth --out {tmp_path / 'cohort'} --cases 240 --layout autopet --seed 26")
    assert "--jobs" in calls[0]
    assert any("--tables-only" in c for c in calls)
    assert "results/study: run 1/1: m seed 0 (done)" in (tmp_path / "out" / "queue.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["queue.txt", "results.tar.xz"]
    with tarfile.open(tmp_path / "out" / "results.tar.xz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames() if tar.getmember(n).isfile()}
    assert names == {
        "study/split.json",
        "study/table1.md",
        "study/queue-1.log",
        "study/tables.log",
        "study/runs/m/seed0/done.json",
        "study/runs/m/seed0/evaluation/per_case.csv",
        "study/runs/m/seed0/analysis/table3.csv",
    }
    # a second call on the same machine keeps the cohort it made
    res = _call(tmp_path, f"{config}={tmp_path / 'results' / 'study'}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sum(c.startswith("synth") for c in (tmp_path / "calls.txt").read_text().splitlines()) == 1


def test_an_out_outside_results_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("name: x\n")
    res = _call(tmp_path, f"{config}={tmp_path / 'elsewhere' / 'study'}")
    assert res.returncode == 2
    assert f"{config}={tmp_path / 'elsewhere' / 'study'}: OUT must be a folder results/NAME" in res.stderr
    assert not (tmp_path / "calls.txt").exists() and not (tmp_path / "cohort").exists()


def test_a_cohort_cut_off_is_written_again_not_deleted(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "kept.txt").write_text("x")  # no phantom.json: cut off, or not a cohort
    config = tmp_path / "study.yaml"
    config.write_text("name: x\n")
    res = _call(tmp_path, f"{config}={tmp_path / 'results' / 'study'}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "calls.txt").read_text().splitlines()[0].endswith("--overwrite")
    assert (tmp_path / "cohort" / "kept.txt").read_text() == "x"


def test_the_decoy_cohort_is_made_only_for_a_config_that_reads_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    plain, decoys = tmp_path / "plain.yaml", tmp_path / "decoys.yaml"
    plain.write_text("name: x\ndataset: {root: ../synth-cohort-240}\n")
    decoys.write_text("name: y\ndataset: {root: ../synth-cohort-240-decoys}\n")
    res = _call(tmp_path, f"{plain}={tmp_path / 'results' / 'plain'}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (tmp_path / "decoys").exists()
    results = tmp_path / "results"
    res = _call(tmp_path, f"{plain}={results / 'plain'}", f"{decoys}={results / 'd'}")
    assert res.returncode == 0, res.stdout + res.stderr
    synths = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if c.startswith("synth")]
    assert len(synths) == 2 and synths[1].startswith(f"synth --out {tmp_path / 'decoys'} --cases 240")
    assert synths[1].endswith("--symmetric-decoys 1,3") and (tmp_path / "decoys" / "phantom.json").is_file()
