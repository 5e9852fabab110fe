"""The benchmark's authors'-code row: their class from a folder named by the environment, called as
``model(ct, pet)`` (here a stand-in module that records what it was given)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

STAND_IN = """
import torch
from h2aseg.models import build_network

CALLS = []


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = build_network(
            "h2aseg", variant="released", channels=(4, 4, 8, 8, 8), window_size=(4, 4, 2)
        )

    def forward(self, ct, pet):
        CALLS.append((ct[0, 0, 0, 0, 0].item(), pet[0, 0, 0, 0, 0].item(), ct.shape[1], pet.shape[1]))
        return self.inner(ct, pet, return_all=True)
"""


@pytest.fixture()
def bench(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("bench_model")


def test_authors_row_calls_their_class_with_ct_then_pet(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "__init__.py").write_text("")
    (tmp_path / "theirs" / "net.py").write_text(STAND_IN)
    monkeypatch.setenv(bench.AUTHORS_CODE_ENV, str(tmp_path))
    monkeypatch.setenv(bench.AUTHORS_MODEL_ENV, "theirs.net:Net")
    monkeypatch.setattr(sys, "path", list(sys.path))
    model = bench.build_authors_model().eval()
    import torch

    x = torch.stack([torch.full((8, 8, 4), -1.0), torch.full((8, 8, 4), 2.0)])[None]
    x = torch.nn.functional.pad(x, (0, 4, 0, 8, 0, 8))
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == 5 and outs[0].shape == (1, 2, 16, 16, 8)
    calls = sys.modules["theirs.net"].CALLS
    assert calls[-1] == (-1.0, 2.0, 1, 1)  # channel 0 -> ct, channel 1 -> pet, one channel each
    result = bench._measure({"authors": True}, [32, 32, 32], 2, "fp32", "")
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["eval_s"] > 0 and result["train_s"] > 0 and result["gflop"] > 0


@pytest.mark.parametrize(
    ("folder", "spec", "message"),
    [(None, None, "not importable: set H2ASEG_AUTHORS_CODE"), ("missing", "a:B", "is not a folder")],
)
def test_authors_row_says_what_is_missing(
    bench: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    folder: str | None,
    spec: str | None,
    message: str,
) -> None:
    for env, value in ((bench.AUTHORS_CODE_ENV, folder), (bench.AUTHORS_MODEL_ENV, spec)):
        if value is None:
            monkeypatch.delenv(env, raising=False)
        else:
            monkeypatch.setenv(env, str(tmp_path / value) if env == bench.AUTHORS_CODE_ENV else value)
    with pytest.raises(RuntimeError, match=message):
        bench.build_authors_model()
