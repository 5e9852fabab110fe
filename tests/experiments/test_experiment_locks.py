"""Run locks: a live lock is respected, a dead pid's or a silent holder's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from experiment_fixtures import METHODS, spec_dict, write_spec

from h2aseg.experiments.locks import Heartbeat, LockInfo, LockLost, RunLock, held
from h2aseg.experiments.plan import Layout, plan_runs
from h2aseg.experiments.runner import plan_lines, run_experiment
from h2aseg.experiments.spec import load_spec


def _write_lock(path: Path, pid: int, heartbeat: float, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "token": "other",
        "created": heartbeat,
        "heartbeat": heartbeat,
    }
    path.write_text(json.dumps(info))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_lock_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    _write_lock(path, os.getppid(), time.time())
    holder = RunLock(path, timeout_s=60).acquire()
    assert isinstance(holder, LockInfo) and holder.pid == os.getppid()
    assert json.loads(path.read_text())["token"] == "other"


def test_lock_of_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    _write_lock(path, _dead_pid(), time.time())
    lock = RunLock(path, timeout_s=60)
    assert lock.acquire() is None
    assert lock.took_over is not None and "not running" in lock.took_over
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_lock_with_an_old_heartbeat_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    _write_lock(path, os.getppid(), time.time() - 100, host="another-machine")
    lock = RunLock(path, timeout_s=30)
    assert lock.acquire() is None and "heartbeat" in (lock.took_over or "")
    _write_lock(path, os.getppid(), time.time() - 10, host="another-machine")
    assert RunLock(path, timeout_s=30).acquire() is not None  # fresh heartbeat: live


def test_heartbeat_refreshes_and_detects_a_take_over(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    lock = RunLock(path, timeout_s=60)
    assert lock.acquire() is None
    first = json.loads(path.read_text())["heartbeat"]
    beat = Heartbeat(lock, interval_s=60)
    time.sleep(0.01)
    beat.beat(force=True)
    assert json.loads(path.read_text())["heartbeat"] > first
    _write_lock(path, os.getppid(), time.time())  # another process took it over
    with pytest.raises(LockLost):
        beat.beat(force=True)
    lock.release()
    assert json.loads(path.read_text())["token"] == "other"  # not ours: left alone


def test_held_waits_for_a_short_lock(tmp_path: Path) -> None:
    with held(tmp_path / "t.lock", timeout_s=60) as lock:
        assert lock is not None and (tmp_path / "t.lock").exists()
        with held(tmp_path / "t.lock", timeout_s=60, wait_s=0.2) as other:
            assert other is None
    assert not (tmp_path / "t.lock").exists()


def test_runner_skips_live_locks_and_takes_over_stale_ones(cohort: Path, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "exp.yaml", spec_dict(cohort, methods=METHODS[:2])))
    out = tmp_path / "out"
    layout = Layout(out)
    first, second = plan_runs(spec)
    _write_lock(layout.lock(first), os.getppid(), time.time())
    _write_lock(layout.lock(second), _dead_pid(), time.time())
    assert "locked by pid" in plan_lines(spec, out)[2] and "stale lock" in plan_lines(spec, out)[3]
    logs: list[str] = []
    result = run_experiment(spec, out, progress=False, log=logs.append)
    assert result.locked == [first.name] and result.done == [second.name]
    assert any("(locked by pid" in line and "skipped)" in line for line in logs)
    assert any("took over a stale lock" in line for line in logs)
    assert layout.lock(first).exists() and not layout.lock(second).exists()
    layout.lock(first).unlink()
    again = run_experiment(spec, out, progress=False, log=logs.append)
    assert again.done == [first.name] and again.skipped == [second.name]
