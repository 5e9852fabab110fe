"""bench_predict.py's rows: every compared row has its reference row, and the window count uses the
working grid the row predicts on (the checkpoint's training spacing or the case's own)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def test_compared_rows_name_an_existing_reference(load_script: Callable[[str], ModuleType]) -> None:
    bench = load_script("bench_predict")
    compared = [n for n in bench.ROWS if n.endswith((bench.FAST, bench.NATIVE))]
    assert compared, "no compared rows"
    for name in compared:
        base = name.removesuffix(bench.FAST).removesuffix(bench.NATIVE)
        assert base in bench.ROWS and bench.ROWS[base][0] == bench.ROWS[name][0]
    assert "data.target_spacing=null" in bench.ROWS["shipped fp32 overlap-0.25" + bench.NATIVE][1]


def test_grid_shape_follows_the_target_spacing(load_script: Callable[[str], ModuleType]) -> None:
    bench = load_script("bench_predict")
    spacing = [2.0364, 2.0364, 3.0]
    assert bench.grid_shape([400, 400, 326], spacing, None) == [400, 400, 326]
    assert bench.grid_shape([400, 400, 326], spacing, (4.0, 4.0, 5.0)) == [204, 204, 196]
