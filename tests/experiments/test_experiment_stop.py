"""An experiment stopped from outside (SIGTERM: ``kill``, ``timeout``, a cluster's time limit) stops as
Ctrl-C does: the run's lock is released, the exit status is 130, and the same command continues; and an
nnU-Net training whose time was not recorded is not counted as 0 minutes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from experiment_fixtures import METHODS, spec_dict, write_spec

from h2aseg.experiments import nnunet
from h2aseg.experiments.plan import Layout
from h2aseg.experiments.spec import NnunetSettings

#: ``python -c`` program: ``h2aseg experiment`` whose training, once epoch 1's checkpoint is written (the
#: run's lock held), says so on the file descriptor ``argv[1]`` and waits for a signal
_PAUSE_AFTER_FIRST_EPOCH = """
import os, runpy, signal, sys
from h2aseg.experiments import steps

ready = int(sys.argv[1])
epoch_end = steps.HeartbeatCallback.on_epoch_end

def on_epoch_end(self, row):
    epoch_end(self, row)
    os.write(ready, b"checkpoint written\\n")
    signal.pause()  # the test's SIGTERM arrives here (or just before: it is handled either way)

steps.HeartbeatCallback.on_epoch_end = on_epoch_end
sys.argv = ["h2aseg", *sys.argv[2:]]
runpy.run_module("h2aseg", run_name="__main__")
"""


def test_sigterm_releases_the_lock_and_exits_130(cohort: Path, tmp_path: Path) -> None:
    """SIGTERM from another process, sent once the training has written a checkpoint (a message from the
    process, not a polled file or a sleep); the training would otherwise finish its two epochs."""
    config = write_spec(tmp_path / "exp.yaml", spec_dict(cohort, methods=METHODS[3:], seeds=[0]))
    out = tmp_path / "out"
    run = out / "runs" / "base" / "seed0"
    lock = out / "runs" / "base" / "seed0.lock"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cli = ["experiment", "--config", str(config), "--out", str(out), "--no-progress"]
    log = tmp_path / "log.txt"
    read_end, write_end = os.pipe()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSE_AFTER_FIRST_EPOCH, str(write_end), *cli],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
        )
    os.close(write_end)  # the child holds the only write end: its exit ends the message with EOF
    try:
        with os.fdopen(read_end, "rb") as ready:
            # a safety net against a hung child, not a timing the test relies on
            assert select.select([ready], [], [], 600)[0], "no message from the experiment in 10 minutes"
            message = ready.readline()
            assert message == b"checkpoint written\n", log.read_text()
            assert (run / "checkpoints" / "last.pt").exists() and lock.exists()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    output = log.read_text()
    assert proc.returncode == 130, output
    assert "stopped; the same command continues" in output
    assert not lock.exists()  # released, so the next invocation takes the run at once
    assert not (run / "done.json").exists()
    assert (run / "checkpoints" / "last.pt").exists()  # kept: the next invocation resumes from it


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
