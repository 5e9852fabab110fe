"""Atomic writes: whole content or the old one, no temporary files left, and ordinary file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from h2aseg.files import atomic_write, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_users_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "sub" / "a.txt", "x")
    finally:
        os.umask(old)
    assert out.read_text() == "x" and _mode(out) == 0o644  # not mkstemp's 0o600
    assert [p.name for p in out.parent.iterdir()] == ["a.txt"]


def test_replacing_a_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"old")

    def broken(tmp: Path) -> None:
        assert tmp.name.startswith(".tmp-mask.nii.gz.") and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
