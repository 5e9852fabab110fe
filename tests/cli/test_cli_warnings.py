"""The CLI prints the package's own warnings as ``warning: message`` (no Python source-line decoration),
and leaves other warnings as Python shows them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from h2aseg.cli import common
from h2aseg.data.layouts import discover
from h2aseg.synth import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import save_tiny_checkpoint


def test_predict_prints_the_scale_warning_plainly_on_stderr(tmp_path: Path) -> None:
    """A checkpoint trained at 10 x 10 x 12 mm with no target spacing, a study at 5 x 5 x 6 mm: the
    ``predict`` process names the CT file, both voxel sizes and the --set that resamples, on stderr as one
    ``warning:`` line, and still writes the mask."""
    ckpt = save_tiny_checkpoint(tmp_path / "model.pt")
    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    payload["grid_spacing"] = [10.0, 10.0, 12.0]
    torch.save(payload, ckpt)
    write_cohort(tmp_path / "fine", 1, "autopet", seed=4, shape=(24, 24, 20), spacing=(5.0, 5.0, 6.0))
    case = discover(tmp_path / "fine")[0]
    out = tmp_path / "mask.nii.gz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    cmd = [sys.executable, "-m", "h2aseg", "predict", "--checkpoint", str(ckpt), "--ct", str(case.ct)]
    done = subprocess.run(
        [*cmd, "--pet", str(case.pet), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1, done.stderr
    assert str(case.ct) in lines[0] and "5.00 x 5.00 x 6.00" in lines[0]
    assert "--set data.target_spacing=[10,10,12]" in lines[0]
    assert "ScaleWarning" not in done.stderr and "warnings.warn" not in done.stderr
    assert out.is_file()


def test_warnings_from_elsewhere_keep_pythons_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only warnings raised inside the package are reprinted; a third-party warning goes to Python's own
    ``showwarning`` (file, line, category)."""
    seen: list[tuple] = []
    monkeypatch.setattr(warnings, "showwarning", lambda *args: seen.append(args))
    common.show_warnings_plainly()
    package_file = str(Path(common.__file__))
    buffer = io.StringIO()
    monkeypatch.setattr(common, "err_console", common.Console(file=buffer, soft_wrap=True))
    warnings.showwarning(UserWarning("ours"), UserWarning, package_file, 1)
    warnings.showwarning(UserWarning("theirs"), UserWarning, "/elsewhere/lib.py", 7)
    warnings.showwarning(DeprecationWarning("old"), DeprecationWarning, package_file, 2)
    assert buffer.getvalue() == "warning: ours\n"
    assert [str(args[0]) for args in seen] == ["theirs", "old"]
