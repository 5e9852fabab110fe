"""User errors are one-line ``error:`` messages naming the field; bugs keep their traceback.

The CLI catches the project's error family (:class:`h2aseg.errors.H2ASegError`), never a bare
``ValueError``: that would print a bug (a ``ValueError`` from deep inside PyTorch or numpy) as a one-liner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

import h2aseg.cli
from h2aseg.checkpoint import save_checkpoint
from h2aseg.cli import app
from h2aseg.config import load_config
from h2aseg.data.layouts import discover
from h2aseg.models.factory import build_from_config
from h2aseg.synth import write_cohort

runner = CliRunner()
CLI_DIR = Path(h2aseg.cli.__file__).parent
SMALL_MODEL = ["model.channels=[2,4,4,4,4]", "model.mcsa_levels=[4,5]"]


def _value_error_uses(path: Path) -> list[int]:
    """Lines where ``path`` names ``ValueError`` outside a ``raise`` (an except clause, an error tuple)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    raised = {
        id(node)
        for r in ast.walk(tree)
        if isinstance(r, ast.Raise) and r.exc is not None
        for node in ast.walk(r.exc)
    }
    return sorted(
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and n.id == "ValueError" and id(n) not in raised
    )


def test_no_cli_module_catches_a_bare_value_error() -> None:
    modules = sorted(CLI_DIR.glob("*.py"))
    assert len(modules) > 5
    found = {p.name: lines for p in modules if (lines := _value_error_uses(p))}
    assert not found, f"catch h2aseg.errors.H2ASegError instead of ValueError: {found}"


def test_the_static_check_sees_except_clauses_and_tuples(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text(
        "try:\n    pass\nexcept (OSError, ValueError):\n    pass\nerrors = (ValueError,)\n"
        "raise ValueError('a programming error')\n",
        encoding="utf-8",
    )
    assert _value_error_uses(src) == [3, 5]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors") / "data"
    write_cohort(root, 5, "autopet-nnunet", seed=7, shape=(24, 24, 24), spacing=(10.0, 10.0, 10.0))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("synthetic", SMALL_MODEL)
    path = tmp_path_factory.mktemp("cli_errors_ckpt") / "model.pt"
    save_checkpoint({"config": cfg.to_dict(), "model": build_from_config(cfg.model).state_dict()}, path)
    return path


def _assert_one_line_error(result, *needles: str) -> str:  # type: ignore[no-untyped-def]
    out = result.output
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _train_args(cohort: Path, tmp_path: Path, *extra: str) -> list[str]:
    """``h2aseg train`` on ``cohort`` into ``tmp_path/run`` without progress bars, plus ``extra``."""
    return ["train", "--data", str(cohort), "--out", str(tmp_path / "run"), "--no-progress", *extra]


@pytest.mark.parametrize(
    ("assignments", "needles"),
    [
        (["data.pos_fraction=2"], ["data.pos_fraction", "2"]),
        (["data.crops_per_case=0"], ["data.crops_per_case"]),
        (["data.negative_centres=hot", "data.hot_suv=50"], ["data.hot_suv", "data.pet_window"]),
        (["data.ct_window=[100,-100]"], ["data.ct_window"]),
        (["infer.overlap=1.5"], ["infer.overlap", "1.5"]),
        (["train.device=gpu"], ["train.device", "gpu"]),
        (["data.pos_fraction"], ["data.pos_fraction", "section.key=value"]),
        (["train.epochs=many"], ["train.epochs", "many"]),
    ],
)
def test_train_bad_setting_is_one_line(
    cohort: Path, tmp_path: Path, assignments: list[str], needles: list[str]
) -> None:
    args = _train_args(cohort, tmp_path)
    for a in assignments:
        args += ["--set", a]
    _assert_one_line_error(runner.invoke(app, args), *needles)


def test_train_bad_settings_fail_before_any_case_is_read(tmp_path: Path) -> None:
    """Checked up front: the dataset folder is not even looked at."""
    args = [
        "train",
        "--data",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "infer.overlap=-0.1",
    ]
    _assert_one_line_error(runner.invoke(app, args), "infer.overlap")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_train_bad_network_arguments_name_the_model_section(cohort: Path, tmp_path: Path) -> None:
    args = _train_args(cohort, tmp_path, "--device", "cpu", "--set", "model.channels=[1,2]")
    _assert_one_line_error(runner.invoke(app, args), "model", "h2aseg", "channels", "[1, 2]")


def test_train_unknown_network_names_model_name(cohort: Path, tmp_path: Path) -> None:
    args = _train_args(cohort, tmp_path, "--device", "cpu", "--model", "no_such_net")
    _assert_one_line_error(runner.invoke(app, args), "model.name", "no_such_net")


def test_predict_bad_overlap_is_one_line(cohort: Path, checkpoint: Path, tmp_path: Path) -> None:
    case = discover(cohort, "auto")[0]
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--ct",
        str(case.ct),
        "--pet",
        str(case.pet),
        "--out",
        str(tmp_path / "mask.nii.gz"),
        "--overlap",
        "1.5",
        "--device",
        "cpu",
    ]
    _assert_one_line_error(runner.invoke(app, args), "infer.overlap", "1.5")
    assert not (tmp_path / "mask.nii.gz").exists()


def test_predict_fp16_on_cpu_names_infer_amp(cohort: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(cohort),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--amp",
        "fp16",
        "--no-progress",
    ]
    _assert_one_line_error(runner.invoke(app, args), "infer.amp")


def test_convert_bad_injection_time_is_one_line(tmp_path: Path) -> None:
    args = ["convert", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--injection-time", "25:00:00"]
    _assert_one_line_error(runner.invoke(app, args), "--injection-time", "25:00:00")


def test_evaluate_table_bad_run_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{not json", encoding="utf-8")
    bad_spec = runner.invoke(app, ["evaluate-table", "--run", "no-equals-sign", "--out", str(tmp_path / "t")])
    _assert_one_line_error(bad_spec, "--run", "METHOD=PATH")
    bad_file = runner.invoke(app, ["evaluate-table", "--run", f"m={tmp_path}", "--out", str(tmp_path / "t")])
    _assert_one_line_error(bad_file, "summary.json", "not valid JSON")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A plain ValueError (a bug, not a user error) is not turned into a one-line message."""
    import h2aseg.training.trainer as trainer

    def broken(*_a: object, **_k: object) -> None:
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(trainer, "train", broken)
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, ValueError) and "a bug deep inside" in str(result.exception)
    assert "error: a bug" not in result.output
