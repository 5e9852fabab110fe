"""One lock file per run, so that several processes (or machines) can share one output folder.

A lock is a JSON file created with ``O_CREAT | O_EXCL`` holding the owner's pid, host name, a random token
and a heartbeat timestamp that the owner refreshes while it works (:class:`Heartbeat`). Another process
treats a lock as stale, and takes it over, when its pid is not running on this same host or when its
heartbeat is older than the timeout; a live lock makes the other process skip the run. Take-overs are
serialised by a short-lived ``<lock>.takeover`` guard file, so two processes never both take one over.

Every reading of the time and every wait goes through a :class:`Clock` (``clock=`` of :class:`RunLock`,
:class:`Heartbeat`, :func:`held`; by default :data:`SYSTEM_CLOCK`, looked up when used), so that tests can
run the staleness, heartbeat and waiting logic on a fake clock, without sleeps or deadlines.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from h2aseg.files import atomic_write_text

GUARD_STALE_S = 60.0  # a take-over guard older than this was left by a crashed process


class Clock(Protocol):
    """What the locks read the time from and wait with."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch: heartbeats (compared across processes and hosts, and with
        file modification times)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: intervals within this process."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic`, :func:`time.sleep`."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


#: the clock used where none is given (read when used, so a test may replace it for code that makes its
#: own locks, such as the experiment runner)
SYSTEM_CLOCK: Clock = SystemClock()


def _clock(clock: Clock | None) -> Clock:
    return SYSTEM_CLOCK if clock is None else clock


class LockLost(RuntimeError):
    """Another process took this run's lock over (our heartbeat had gone stale)."""


@dataclass(frozen=True)
class LockInfo:
    """What a lock file holds."""

    pid: int
    host: str
    token: str
    created: float
    heartbeat: float

    def describe(self, now: float | None = None) -> str:
        age = (SYSTEM_CLOCK.time() if now is None else now) - self.heartbeat
        return f"pid {self.pid} on {self.host}, heartbeat {age:.0f} s ago"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(info: LockInfo, timeout_s: float, now: float | None = None) -> str | None:
    """Why ``info`` is stale (dead pid on this host, old heartbeat), or None when it is live; ``now``
    defaults to :data:`SYSTEM_CLOCK`'s time."""
    now = SYSTEM_CLOCK.time() if now is None else now
    if info.host == socket.gethostname() and not pid_alive(info.pid):
        return f"pid {info.pid} is not running on {info.host}"
    if now - info.heartbeat > timeout_s:
        return f"heartbeat {now - info.heartbeat:.0f} s old (timeout {timeout_s:.0f} s)"
    return None


class RunLock:
    """``acquire()`` / ``refresh()`` / ``release()`` of the lock file at ``path``; heartbeats and waits on
    ``clock`` (default :data:`SYSTEM_CLOCK`)."""

    def __init__(self, path: str | Path, timeout_s: float, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.clock = _clock(clock)
        self.info: LockInfo | None = None  # ours, while held
        self.took_over: str | None = None  # why the previous holder's lock was stale, if we took it over
        self._mutex = threading.Lock()

    # ----------------------------------------------------------------------------------- reading
    def read(self) -> LockInfo | None:
        """The lock's content; for a file being written (empty or partial), its mtime as heartbeat."""
        try:
            text = self.path.read_text(encoding="utf-8")
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            return LockInfo(**json.loads(text))
        except (ValueError, TypeError):
            return LockInfo(pid=-1, host="?", token="", created=mtime, heartbeat=mtime)

    def holder(self) -> LockInfo | None:
        """The live holder of the lock, or None when it is free or stale."""
        info = self.read()
        if info is None or stale_reason(info, self.timeout_s, self.clock.time()) is not None:
            return None
        return info

    # ----------------------------------------------------------------------------------- owning
    def acquire(self) -> LockInfo | None:
        """Take the lock; returns None on success, else the live holder's info."""
        for _ in range(5):
            if self._create():
                return None
            info = self.read()
            if info is None:
                continue  # released meanwhile: try again
            reason = stale_reason(info, self.timeout_s, self.clock.time())
            if reason is None:
                return info
            if self._take_over(info):
                self.took_over = reason
                return None
            self.clock.sleep(0.05)
        return self.read() or LockInfo(-1, "?", "", 0.0, self.clock.time())

    def refresh(self) -> None:
        """Write a new heartbeat; raises :class:`LockLost` when the lock is no longer ours."""
        with self._mutex:
            if self.info is None:
                return
            current = self.read()
            if current is None or current.token != self.info.token:
                raise LockLost(f"{self.path}: lock taken over by another process")
            self.info = LockInfo(**{**asdict(self.info), "heartbeat": self.clock.time()})
            atomic_write_text(self.path, json.dumps(asdict(self.info)))

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        with self._mutex:
            if self.info is None:
                return
            current = self.read()
            if current is not None and current.token == self.info.token:
                self.path.unlink(missing_ok=True)
            self.info = None

    def _create(self) -> bool:
        now = self.clock.time()
        info = LockInfo(os.getpid(), socket.gethostname(), uuid.uuid4().hex, now, now)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(asdict(info)))
        self.info = info
        return True

    def _take_over(self, stale: LockInfo) -> bool:
        """Replace the stale lock by ours, under the take-over guard; False if another process is at it."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if self.clock.time() - guard.stat().st_mtime > GUARD_STALE_S:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            current = self.read()
            if current is not None and current.token != stale.token:
                return False  # someone else replaced it meanwhile
            self.path.unlink(missing_ok=True)
            return self._create()
        finally:
            guard.unlink(missing_ok=True)


class Heartbeat:
    """Refreshes ``lock`` every ``interval_s`` from a daemon thread; :meth:`beat` also refreshes when due
    (called from training callbacks and per predicted case) and raises :class:`LockLost` once lost.

    "Due" is measured on ``clock`` (default: the lock's); the thread only wakes :meth:`beat` up, every
    ``interval_s / 2`` of real time."""

    def __init__(self, lock: RunLock, interval_s: float, *, clock: Clock | None = None) -> None:
        self.lock = lock
        self.clock = lock.clock if clock is None else clock
        self.interval_s = max(0.5, float(interval_s))
        self.lost: LockLost | None = None
        self._last = self.clock.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat {lock.path.name}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def beat(self, force: bool = False) -> None:
        """Refresh when due (or ``force``); raise :class:`LockLost` if the lock was taken over."""
        if self.lost is None and (force or self.clock.monotonic() - self._last >= self.interval_s):
            self._last = self.clock.monotonic()
            try:
                self.lock.refresh()
            except LockLost as e:
                self.lost = e
            except OSError:
                pass  # a full disk or a network hiccup: try again at the next beat
        if self.lost is not None:
            raise self.lost

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s / 2):
            try:
                self.beat()
            except LockLost:
                return


@contextmanager
def held(
    path: str | Path, timeout_s: float, wait_s: float = 60.0, *, clock: Clock | None = None
) -> Iterator[RunLock | None]:
    """A short critical section (e.g. writing the tables): wait up to ``wait_s`` (on ``clock``) for the
    lock, trying every 0.1 s; yields the lock, or None when it stayed busy (the caller decides whether to go
    on without it)."""
    lock = RunLock(path, timeout_s, clock=clock)
    deadline = lock.clock.monotonic() + wait_s
    while lock.acquire() is not None and lock.clock.monotonic() < deadline:
        lock.clock.sleep(0.1)
    try:
        yield lock if lock.info is not None else None
    finally:
        lock.release()
