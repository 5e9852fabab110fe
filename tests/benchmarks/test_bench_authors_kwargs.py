"""The authors'-code row with constructor keyword arguments (``H2ASEG_AUTHORS_KWARGS`` /
``--authors-kwargs``), against a stand-in of their class's signature ``H2ASeg(patch_size, in_channels,
n_classes)`` whose forward takes ``(ct, pet)``."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from h2aseg.errors import H2ASegError

STAND_IN = """
import json
import re
from pathlib import Path

import torch


class H2ASeg(torch.nn.Module):
    def __init__(self, patch_size, in_channels, n_classes):
        super().__init__()
        seen = {"patch_size": patch_size, "in_channels": in_channels, "n_classes": n_classes}
        seen["patch_size_type"] = type(patch_size).__name__
        Path(__file__).with_name("seen.json").write_text(json.dumps(seen))
        self.conv = torch.nn.Conv3d(2 * in_channels, n_classes, 3, padding=1)

    def forward(self, ct, pet):
        return self.conv(torch.cat([ct, pet], 1))
"""
KWARGS = {"patch_size": [8, 8, 8], "in_channels": 1, "n_classes": 2}


PACKAGE = "theirs_with_kwargs"  # not the other test's ``theirs``: imported packages stay cached


@pytest.fixture()
def bench(
    load_script: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The script, with the environment pointing at the stand-in ``<PACKAGE>.model:H2ASeg``."""
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "model.py").write_text(STAND_IN)
    module = load_script("bench_model")
    monkeypatch.setenv(module.AUTHORS_CODE_ENV, str(tmp_path))
    monkeypatch.setenv(module.AUTHORS_MODEL_ENV, f"{PACKAGE}.model:H2ASeg")
    monkeypatch.delenv(module.AUTHORS_KWARGS_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield module
    for name in (f"{PACKAGE}.model", PACKAGE):
        sys.modules.pop(name, None)


def _run_main(bench: ModuleType, monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    argv = ["bench_model.py", "--rows", bench.AUTHORS_ROW, "--precisions", "fp32", "--size", "8", "8", "8"]
    monkeypatch.setattr(sys, "argv", [*argv, "--batch", "2", *flags])
    bench.main()


def test_kwargs_from_the_environment_reach_the_constructor_and_time_a_row(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(bench.AUTHORS_KWARGS_ENV, json.dumps(KWARGS))
    _run_main(bench, monkeypatch)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if bench.AUTHORS_ROW in line)
    assert "fp32" in row and "failed" not in row and "not importable" not in row
    cells = [c.strip() for c in row.strip("│┃ ").split("│")]
    assert len(cells) == 9 and all(float(c) >= 0 for c in cells[2:])  # every measure, training included
    seen = json.loads((tmp_path / PACKAGE / "seen.json").read_text())  # written in the measuring process
    assert seen == {**KWARGS, "patch_size_type": "list"}  # JSON values passed as they are


def test_flag_wins_over_the_environment(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bench.AUTHORS_KWARGS_ENV, "not json")
    assert bench.authors_kwargs(json.dumps(KWARGS)) == (KWARGS, "--authors-kwargs")
    model = bench.build_authors_model(*bench.authors_kwargs(json.dumps(KWARGS)))
    assert model.model.conv.out_channels == 2


@pytest.mark.parametrize(
    ("env", "flag", "message"),
    [
        ("{'patch_size': 1}", None, r"^H2ASEG_AUTHORS_KWARGS: not valid JSON"),
        (None, "[1, 2]", r"^--authors-kwargs: must be a JSON object"),
        (None, '{"patch_size": [8, 8, 8]}', r"^--authors-kwargs: H2ASeg\(patch_size\) rejected: .*in_ch"),
        ('{"n_classes": 2, "depth": 3}', None, r"^H2ASEG_AUTHORS_KWARGS: H2ASeg\(n_classes, depth\) rej"),
    ],
)
def test_bad_kwargs_stop_with_one_line_naming_the_variable_or_flag(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, env: str | None, flag: str | None, message: str
) -> None:
    if env is not None:
        monkeypatch.setenv(bench.AUTHORS_KWARGS_ENV, env)
    with pytest.raises(SystemExit) as stop:
        _run_main(bench, monkeypatch, *(["--authors-kwargs", flag] if flag is not None else []))
    text = str(stop.value.code).removeprefix("bench_model.py: error: ")
    assert "\n" not in text
    assert re.search(message, text), text


def test_constructor_type_error_names_the_source(bench: ModuleType) -> None:
    with pytest.raises(H2ASegError, match=r"^--authors-kwargs: H2ASeg\(.*\) rejected"):
        bench.build_authors_model({**KWARGS, "in_channels": "one"}, "--authors-kwargs")
