"""Run locks: a live lock is respected, a dead pid's or a silent holder's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from experiment_fixtures import METHODS, spec_dict, write_spec

from h2aseg.experiments import locks
from h2aseg.experiments.locks import GUARD_STALE_S, Heartbeat, LockInfo, LockLost, RunLock, held
from h2aseg.experiments.plan import Layout, plan_runs
from h2aseg.experiments.runner import plan_lines, run_experiment
from h2aseg.experiments.spec import load_spec


class FakeClock:
    """A clock that moves only when told to (``advance``) or when something sleeps on it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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


def _heartbeat(path: Path) -> float:
    return float(json.loads(path.read_text())["heartbeat"])


def test_live_lock_is_not_taken(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "run.lock"
    _write_lock(path, os.getppid(), clock.now)
    holder = RunLock(path, timeout_s=60, clock=clock).acquire()
    assert isinstance(holder, LockInfo) and holder.pid == os.getppid()
    assert json.loads(path.read_text())["token"] == "other"
    assert clock.sleeps == []  # a live holder is reported at once, without retrying


def test_lock_of_a_dead_pid_is_taken_over(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "run.lock"
    _write_lock(path, _dead_pid(), clock.now)  # a fresh heartbeat: only the pid makes it stale
    lock = RunLock(path, timeout_s=60, clock=clock)
    assert lock.acquire() is None
    assert lock.took_over is not None and "not running" in lock.took_over
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert _heartbeat(path) == clock.now
    lock.release()
    assert not path.exists()


def test_heartbeat_older_than_the_timeout_is_stale(tmp_path: Path, clock: FakeClock) -> None:
    """Exactly at the timeout the lock is live; one second later it is taken over."""
    path = tmp_path / "run.lock"
    _write_lock(path, os.getppid(), clock.now, host="another-machine")  # no pid check on another host
    clock.advance(30)
    assert RunLock(path, timeout_s=30, clock=clock).acquire() is not None
    assert RunLock(path, timeout_s=30, clock=clock).holder() is not None
    assert "heartbeat 30 s ago" in LockInfo(**json.loads(path.read_text())).describe(clock.now)
    clock.advance(1)
    lock = RunLock(path, timeout_s=30, clock=clock)
    assert lock.holder() is None
    assert lock.acquire() is None
    assert lock.took_over == "heartbeat 31 s old (timeout 30 s)"
    assert json.loads(path.read_text())["token"] == lock.info.token  # type: ignore[union-attr]


def test_heartbeat_refreshes_when_due_and_detects_a_take_over(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "run.lock"
    lock = RunLock(path, timeout_s=60, clock=clock)
    assert lock.acquire() is None
    start = clock.now
    assert _heartbeat(path) == start
    beat = Heartbeat(lock, interval_s=10)  # on the lock's clock
    clock.advance(9.5)
    beat.beat()  # not due yet
    assert _heartbeat(path) == start
    clock.advance(0.5)
    beat.beat()  # due: the new heartbeat is the clock's time
    assert _heartbeat(path) == start + 10
    clock.advance(1)
    beat.beat(force=True)
    assert _heartbeat(path) == start + 11
    _write_lock(path, os.getppid(), clock.now)  # another process took it over
    with pytest.raises(LockLost):
        beat.beat(force=True)
    with pytest.raises(LockLost):  # and it stays lost, due or not
        beat.beat()
    lock.release()
    assert json.loads(path.read_text())["token"] == "other"  # not ours: left alone


def test_take_over_waits_for_a_fresh_guard_and_clears_a_stale_one(tmp_path: Path, clock: FakeClock) -> None:
    """Another process's take-over guard blocks ours (we retry, then report the holder); a guard left by a
    crashed process (older than GUARD_STALE_S) is removed and the take-over goes ahead."""
    path = tmp_path / "run.lock"
    _write_lock(path, os.getppid(), clock.now - 100, host="another-machine")  # stale
    guard = path.with_name(path.name + ".takeover")
    guard.touch()
    os.utime(guard, (clock.now, clock.now))
    lock = RunLock(path, timeout_s=30, clock=clock)
    holder = lock.acquire()
    assert isinstance(holder, LockInfo) and holder.token == "other" and lock.info is None
    assert clock.sleeps == [0.05] * 5  # five attempts
    os.utime(guard, (clock.now - GUARD_STALE_S - 1,) * 2)
    clock.sleeps.clear()
    assert lock.acquire() is None  # the first attempt clears the guard, the second takes over
    assert clock.sleeps == [0.05]
    assert not guard.exists() and json.loads(path.read_text())["token"] == lock.info.token  # type: ignore[union-attr]


def test_held_gives_up_after_its_wait(tmp_path: Path, clock: FakeClock) -> None:
    with held(tmp_path / "t.lock", timeout_s=60, clock=clock) as lock:
        assert lock is not None and (tmp_path / "t.lock").exists()
        with held(tmp_path / "t.lock", timeout_s=60, wait_s=0.25, clock=clock) as other:
            assert other is None
        assert clock.sleeps == [0.1, 0.1, 0.1]  # tried at 0, 0.1, 0.2 and 0.3 s of the 0.25 s wait
        assert (tmp_path / "t.lock").exists()  # the waiter did not remove the holder's lock
    assert not (tmp_path / "t.lock").exists()


def test_held_gets_a_lock_released_while_it_waits(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "t.lock"
    first = RunLock(path, timeout_s=60, clock=clock)
    assert first.acquire() is None

    class Releasing(FakeClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if len(self.sleeps) == 2:  # the holder finishes during the second wait
                first.release()

    waiting = Releasing(clock.now)
    with held(path, timeout_s=60, wait_s=10, clock=waiting) as lock:
        assert lock is not None and lock.info is not None
        assert json.loads(path.read_text())["token"] == lock.info.token
    assert waiting.sleeps == [0.1, 0.1]
    assert not path.exists()


def test_runner_skips_live_locks_and_takes_over_stale_ones(
    cohort: Path, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner makes its own locks: on the default clock, here a stopped one, so that the live lock stays
    live however long the other run takes."""
    monkeypatch.setattr(locks, "SYSTEM_CLOCK", clock)
    spec = load_spec(write_spec(tmp_path / "exp.yaml", spec_dict(cohort, methods=METHODS[:2])))
    out = tmp_path / "out"
    layout = Layout(out)
    first, second = plan_runs(spec)
    _write_lock(layout.lock(first), os.getppid(), clock.now)
    _write_lock(layout.lock(second), _dead_pid(), clock.now)
    assert "locked by pid" in plan_lines(spec, out)[2] and "stale lock" in plan_lines(spec, out)[3]
    logs: list[str] = []
    result = run_experiment(spec, out, progress=False, log=logs.append)
    assert result.locked == [first.name] and result.done == [second.name]
    assert any("(locked by pid" in line and "heartbeat 0 s ago, skipped)" in line for line in logs)
    assert any("took over a stale lock" in line for line in logs)
    assert layout.lock(first).exists() and not layout.lock(second).exists()
    layout.lock(first).unlink()
    again = run_experiment(spec, out, progress=False, log=logs.append)
    assert again.done == [first.name] and again.skipped == [second.name]
