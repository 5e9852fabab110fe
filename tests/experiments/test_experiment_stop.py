"""An experiment stopped from outside (SIGTERM: ``kill``, ``timeout``, a cluster's time limit) stops as
Ctrl-C does: the run's lock is released, the exit status is 130, and the same command continues; and an
nnU-Net training whose time was not recorded is not counted as 0 minutes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiment_fixtures import SCHEDULE, spec_dict, write_spec

from h2aseg.experiments import nnunet
from h2aseg.experiments.plan import Layout
from h2aseg.experiments.spec import NnunetSettings


def test_sigterm_releases_the_lock_and_exits_130(cohort: Path, tmp_path: Path) -> None:
    schedule = [s for s in SCHEDULE if not s.startswith(("train.epochs", "train.steps_per_epoch"))]
    methods = [{"label": "base", "network": "h2aseg", "ablation": {"mcsa": False, "tamw": False}}]
    doc = spec_dict(cohort, methods=methods, seeds=[0])
    doc["schedule"]["overrides"] = [*schedule, "train.epochs=500", "train.steps_per_epoch=1"]
    config = write_spec(tmp_path / "long.yaml", doc)
    out = tmp_path / "out"
    lock = out / "runs" / "base" / "seed0.lock"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "h2aseg", "experiment", "--config", str(config), "--out", str(out)]
    log = tmp_path / "log.txt"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([*cmd, "--no-progress"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (out / "runs" / "base" / "seed0" / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        assert lock.exists()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    output = log.read_text()
    assert proc.returncode == 130, output
    assert "stopped; the same command continues" in output
    assert not lock.exists()  # released, so the next invocation takes the run at once
    assert not (out / "runs" / "base" / "seed0" / "done.json").exists()


def test_unrecorded_nnunet_training_time_is_unknown_not_zero(tmp_path: Path) -> None:
    """A training killed after nnU-Net wrote its final checkpoint but before the time was saved."""
    layout, settings = Layout(tmp_path / "out"), NnunetSettings()
    run_dir = layout.out / "runs" / "nnunet" / "seed1"
    final = nnunet.model_dir(run_dir, layout, settings) / "checkpoint_final.pth"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"a checkpoint")
    assert nnunet.train(layout, settings, run_dir, None) == "already trained"
    assert json.loads((run_dir / "finished.json").read_text())["seconds"] is None
    (run_dir / "finished.json").unlink()
    (run_dir / "nnunet_state.json").write_text('{"train_seconds": 90.5}')
    nnunet.train(layout, settings, run_dir, None)
    assert json.loads((run_dir / "finished.json").read_text())["seconds"] == 90.5
