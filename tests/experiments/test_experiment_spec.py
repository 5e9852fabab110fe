"""The experiment file: valid files load; every error is one line naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from experiment_fixtures import METHODS, spec_dict, write_spec
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.experiments.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


def _error(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = write_spec(tmp_path / "exp.yaml", doc)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg


def test_tiny_spec_loads_and_builds_run_configs(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "exp.yaml", spec_dict(tmp_path / "data")))
    assert [m.label for m in spec.methods] == ["suv_2.5", "suv_41pct", "full", "base"]
    assert spec.methods[0].training_free and spec.methods[0].title == "SUV >= 2.5"
    cfg = spec.run_config(spec.methods[3], 1, tmp_path / "out")
    assert cfg.train.seed == 1 and cfg.train.epochs == 2 and cfg.data.patch_size == (32, 32, 32)
    assert (cfg.model.use_mcsa, cfg.model.use_tamw) == (False, False)
    assert cfg.data.split_file == str(tmp_path / "out" / "split.json")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "experiments").glob("*.yaml")))
def test_shipped_experiment_files_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPET_ROOT", "/data/autopet")
    spec = load_spec(REPO / "experiments" / name)
    phantom = "cpu" in name or "synth" in name
    assert spec.seeds == ((0, 1) if phantom else (0, 1, 2, 3))  # the paper: mean ± std of 4 seeds
    assert spec.schedule.base == ("cpu-small" if "cpu" in name else "paper")
    if "synth" in name:  # the paper schedule on one GPU: the preset's recipe, nondeterministic kernels
        cfg = spec.method_config(spec.methods[-1])
        epochs = 64 if "long" in name else 12  # study (d): 1,600 steps
        assert (cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.deterministic) == (epochs, 25, False)
    nnunet = [m.nnunet for m in spec.methods if m.nnunet is not None]
    if "synth" in name and name.startswith("table1"):
        assert [n.trainer for n in nnunet] == ["nnUNetTrainer_1epoch"]  # 250 iterations ~ the 300 steps
    if name.startswith("table2"):
        assert sum(m.ablation is not None for m in spec.methods) == 4


def test_unknown_network(tmp_path: Path) -> None:
    doc = spec_dict(tmp_path, methods=[*METHODS, {"label": "x", "network": "no_such_net"}])
    msg = _error(tmp_path, doc)
    assert "methods[4].network" in msg and "unknown network 'no_such_net'" in msg and "h2aseg" in msg


@pytest.mark.parametrize(
    ("schedule", "trainer"), [("cpu-small", "nnUNetTrainer_1epoch"), ("paper", "nnUNetTrainer")]
)
def test_nnunet_settings_default_to_the_schedule(tmp_path: Path, schedule: str, trainer: str) -> None:
    doc = spec_dict(tmp_path, schedule=schedule, methods=[{"label": "nn", "network": "nnunet"}])
    method = load_spec(write_spec(tmp_path / "exp.yaml", doc)).methods[0]
    assert method.title == "nnU-Net" and not method.training_free and method.nnunet is not None
    nn = method.nnunet
    assert (nn.trainer, nn.configuration, nn.plans, nn.dataset_id, nn.device) == (
        trainer, "3d_fullres", "nnUNetPlans", 999, "auto",
    )  # fmt: skip


def test_nnunet_settings_are_read(tmp_path: Path) -> None:
    nn_doc = {
        "dataset_id": 7,
        "trainer": "nnUNetTrainer_5epochs",
        "tta": False,
        "bin": "bin",
        "device": "cpu",
    }
    doc = spec_dict(tmp_path, methods=[{"label": "nn", "network": "nnunet", "nnunet": nn_doc}])
    nn = load_spec(write_spec(tmp_path / "exp.yaml", doc)).methods[0].nnunet
    assert nn is not None and (nn.dataset_id, nn.trainer, nn.tta, nn.device) == (
        7,
        "nnUNetTrainer_5epochs",
        False,
        "cpu",
    )
    assert nn.bin == (tmp_path / "bin").resolve()  # relative to the experiment file


@pytest.mark.parametrize(
    ("method", "field", "words"),
    [
        ({"nnunet": {"dataset_id": 1000}}, "methods[0].nnunet.dataset_id", "1 to 999"),
        ({"nnunet": {"folds": 5}}, "methods[0].nnunet.folds", "unknown field"),
        ({"nnunet": {"trainer": "a b"}}, "methods[0].nnunet.trainer", "not an nnU-Net name"),
        ({"nnunet": {"device": "tpu"}}, "methods[0].nnunet.device", "expected one of"),
        ({"overrides": ["train.lr=1"]}, "methods[0].overrides", "settings under nnunet:"),
        ({"network": "unet3d", "nnunet": {}}, "methods[0].nnunet", "only network 'nnunet'"),
    ],
)
def test_bad_nnunet_settings(tmp_path: Path, method: dict[str, Any], field: str, words: str) -> None:
    msg = _error(tmp_path, spec_dict(tmp_path, methods=[{"label": "nn", "network": "nnunet", **method}]))
    assert f"{field}: " in msg and words in msg


@pytest.mark.parametrize("seeds", [[], [0, 0], [1, "a"], [-1], 3, [True]])
def test_bad_seed_list(tmp_path: Path, seeds: Any) -> None:
    msg = _error(tmp_path, spec_dict(tmp_path, seeds=seeds))
    assert ": seeds: " in msg and "distinct non-negative integers" in msg


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sedes": [0]}, "sedes"),
        ({"dataset": {"root": ".", "layuot": "auto"}}, "dataset.layuot"),
        ({"methods": [{"label": "a", "network": "h2aseg", "overide": []}]}, "methods[0].overide"),
        ({"schedule": {"base": "cpu-small", "extra": 1}}, "schedule.extra"),
    ],
)
def test_unknown_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    msg = _error(tmp_path, spec_dict(tmp_path, **change))
    assert f": {field}: unknown field" in msg


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"schedule": "fast"}, "schedule", "paper, cpu-small"),
        (
            {"methods": [{"label": "a", "network": "h2aseg", "overrides": ["model.nope=1"]}]},
            "methods[0].overrides",
            "unknown config field",
        ),
        (
            {"methods": [{"label": "a", "network": "h2aseg", "overrides": ["train.seed=3"]}]},
            "methods[0].overrides[0]",
            "seeds",
        ),
        ({"methods": [{"label": "a b", "network": "h2aseg"}]}, "methods[0].label", "folder name"),
        ({"methods": [METHODS[2], {**METHODS[2], "label": "again"}]}, "methods[1].title", "used by"),
        (
            {"methods": [{"label": "u", "network": "unet3d", "ablation": {"mcsa": True, "tamw": True}}]},
            "methods[0].ablation",
            "only H2ASeg",
        ),
        (
            {"methods": [{**METHODS[2], "overrides": ["model.use_tamw=false"]}]},
            "methods[0].overrides",
            "contradicts its ablation",
        ),
        ({"overrides": ["data.patch_size=[1,2]"]}, "overrides", "expected 3 values"),
        ({"dataset": {"root": "${NO_SUCH_VARIABLE_H2ASEG}"}}, "dataset.root", "NO_SUCH_VARIABLE_H2ASEG"),
        ({"protocol": "brats"}, "protocol", "paper, autopet, hecktor"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, change: dict[str, Any], field: str, text: str) -> None:
    msg = _error(tmp_path, spec_dict(tmp_path, **change))
    assert f": {field}: " in msg and text in msg


def test_cli_reports_spec_errors_in_one_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "exp.yaml", spec_dict(tmp_path, seeds=[0, 0]))
    result = CliRunner().invoke(app, ["experiment", "--config", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error:" in result.output and "seeds" in result.output and "exp.yaml" in result.output
    bad = CliRunner().invoke(app, ["experiment", "--config", str(path), "--out", "o", "--shard", "2/2"])
    assert bad.exit_code == 2 and "--shard" in bad.output
