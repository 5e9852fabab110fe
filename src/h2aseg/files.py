"""Atomic writes: a temporary file in the same folder, then a rename; the one writer every output uses.

A crash never leaves a half-written config, split, metrics table, checkpoint, image, cache entry or figure
behind: the target either keeps its old content or gets the whole new one. The file gets the permissions
any new file of the user gets (``0o666`` less the umask), or, when it replaces a file, that file's: outputs
in a shared folder stay readable by whoever could read them before.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], object], *, suffix: str | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it onto ``path``.

    ``suffix`` is the temporary file's ending (default: ``path``'s), for writers that choose the format by
    the file name (``.nii.gz``, ``.png``). Creates the folder; removes the temporary file on any error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    end = path.suffix if suffix is None else suffix
    tmp = path.parent / f".tmp-{path.name}.{uuid.uuid4().hex[:12]}{end}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for any file
    try:
        write(tmp)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def read_json(path: str | Path) -> Any:
    """The JSON document in ``path``, or None when it is missing, unreadable or not JSON (markers and
    sidecar files that a crash may have left absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def read_yaml_file(path: str | Path, error: Callable[[str], Exception], what: str) -> Any:
    """The YAML document in the file ``path`` (a user's experiment or settings file). A missing file or one
    that is not readable YAML raises ``error(message)``, the message naming the file: ``<path>: <what>
    not found`` or ``<path>: not a readable YAML file (...)``."""
    import yaml

    source = Path(path)
    if not source.is_file():
        raise error(f"{source}: {what} not found")
    try:
        return yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise error(f"{source}: not a readable YAML file ({e})") from None
