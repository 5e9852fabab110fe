"""``h2aseg analyze mcsa``: the attention-term / feature norm ratios of every MCSA stage."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from analysis_fixtures import RELEASED, write_checkpoint, write_small_cohort
from typer.testing import CliRunner

from h2aseg.analysis.common import AnalysisError, load_model, select_cases
from h2aseg.analysis.mcsa_scale import ScaleRecorder, analyze_mcsa, measure_cases, summary_rows
from h2aseg.cli import app
from h2aseg.models.mcsa import MCSA


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mcsa_cohort")
    write_small_cohort(root, n=3)
    return root


def _scale_inter_attention(model: nn.Module, factor: float = 100.0) -> None:
    """Multiply the combining conv of every inter-window attention by ``factor`` (its term grows with it)."""
    for m in model.modules():
        if isinstance(m, MCSA):
            for direction in (m.inter_window_attention.sa_ct, m.inter_window_attention.sa_pet):
                with torch.no_grad():
                    direction.out.weight.mul_(factor)
                    direction.out.bias.mul_(factor)


def _means(paths: list[Path]) -> dict[tuple[str, str], float]:
    with open(next(p for p in paths if p.suffix == ".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        out.setdefault((r["level"], r["term"]), []).append(float(r["ratio"]))
    return {k: sum(v) / len(v) for k, v in out.items()}


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_probe_does_not_change_the_output(tmp_path: Path, variant: str) -> None:
    loaded = load_model(write_checkpoint(tmp_path / "m.pt", RELEASED if variant == "released" else ()))
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        before = loaded.model(x)
        with ScaleRecorder(loaded.model, "m.pt") as rec:
            during = loaded.model(x)
            sums = rec.take()
        after = loaded.model(x)
    for a, b, c in zip(before, during, after, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    levels = (2, 3, 4, 5) if variant == "paper" else (2, 3)  # released: global BDSA at 4-5, not MCSA
    assert sorted(sums) == [f"encoder.sa{k}" for k in levels]
    assert all(
        not hasattr(m, "probe") or m.probe is None for m in loaded.model.modules() if isinstance(m, MCSA)
    )


def test_a_larger_attention_term_gives_a_larger_ratio(cohort: Path, tmp_path: Path) -> None:
    plain = write_checkpoint(tmp_path / "plain.pt", ["model.variant=paper"])
    grown = write_checkpoint(tmp_path / "grown.pt", ["model.variant=paper"], mutate=_scale_inter_attention)
    a = _means(analyze_mcsa(plain, cohort, tmp_path / "a", part="all", limit=2))
    b = _means(analyze_mcsa(grown, cohort, tmp_path / "b", part="all", limit=2))
    assert set(a) == {(lv, t) for lv in "2345" for t in ("inter_ct", "inter_pet", "intra_ct", "intra_pet")}
    assert all(math.isfinite(v) and v > 0 for v in a.values())
    for level in "2345":
        for term in ("inter_ct", "inter_pet"):
            assert b[(level, term)] > 20 * a[(level, term)]
    # --init measures a fresh network of the same config: the grown checkpoint's scale is gone
    c = _means(analyze_mcsa(grown, cohort, tmp_path / "c", part="all", limit=2, init=True))
    assert all(c[(lv, "inter_ct")] < b[(lv, "inter_ct")] / 20 for lv in "2345")
    text = (tmp_path / "c" / "mcsa_scale.md").read_text()
    assert "| 2 (8, 16x16x16) |" in text and "fresh initialisation" in text


def test_summary_is_mean_and_std_over_cases(cohort: Path, tmp_path: Path) -> None:
    loaded = load_model(write_checkpoint(tmp_path / "m.pt"))
    cases, where = select_cases(loaded, cohort, "all", 3)
    fewer, says = select_cases(loaded, cohort, "all", len(cases) - 1)
    assert (
        fewer == cases[:-1]
        and says == where + f"; the first {len(fewer)} in case-id order (--cases {len(fewer)})"
    )
    results = measure_cases(loaded, cases)
    rows = {(r["level"], r["term"]): r for r in summary_rows(results)}
    vals = [res.ratios["encoder.sa3"]["intra_pet"] for res in results]
    row = rows[("3", "intra_pet")]
    mean = sum(vals) / len(vals)
    assert row["n_cases"] == 3 and math.isclose(row["mean"], mean, rel_tol=1e-9)
    assert math.isclose(row["std"], (sum((v - mean) ** 2 for v in vals) / 2) ** 0.5, rel_tol=1e-9)


def test_network_without_mcsa_is_refused(cohort: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "nomcsa.pt", ["model.use_mcsa=false"])
    with pytest.raises(AnalysisError, match="no MCSA module"):
        analyze_mcsa(ckpt, cohort, tmp_path / "out", part="all")
    result = CliRunner().invoke(
        app,
        ["analyze", "mcsa", "--checkpoint", str(ckpt), "--data", str(cohort), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code != 0 and "no MCSA module" in result.output and "nomcsa.pt" in result.output


def test_cli_writes_the_table(cohort: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    args = ["analyze", "mcsa", "--checkpoint", str(ckpt), "--data", str(cohort), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--split", "all", "--cases", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    text = (out / "mcsa_scale.md").read_text()
    assert "Inter-window CT" in text and "its trained weights" in text and "Cases:" in text
    rows = [line for line in text.splitlines() if line[:3] in ("| 2", "| 3", "| 4", "| 5")]
    assert len(rows) == 4 and "±" not in rows[0]  # one case: no spread
