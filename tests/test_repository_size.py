"""The tracked files stay small enough to travel to a GPU machine beside the wheels it needs.

A call on a lent GPU machine carries the working tree and the wheels of ``experiments/device-wheels.sh``
(about 12 MiB) under one limit of 64 MiB; results are committed run by run, so a file type that grows with
every run (the raw per-channel TAMW weights were 2.7 MB a run) would close that door without anyone
noticing. Skipped outside a git checkout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MIB = 40  # 64 MiB the device takes, less the wheels and the untracked files that travel with them


def test_tracked_files_leave_room_for_the_wheels() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    sizes = {
        name: (ROOT / name).stat().st_size
        for name in listed.decode().split("\0")
        if name and (ROOT / name).is_file()
    }
    total = sum(sizes.values())
    largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:5]
    assert total < BUDGET_MIB * 2**20, (
        f"tracked files hold {total / 2**20:.1f} MiB (budget {BUDGET_MIB} MiB); largest: "
        + ", ".join(f"{n} ({sizes[n] / 2**20:.1f} MiB)" for n in largest)
    )
